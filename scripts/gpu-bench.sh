#!/usr/bin/env bash
# The gpu-worker benchmark on an NVIDIA GPU, in one go, from a fresh Debian/Ubuntu machine with a
# GPU driver (root or sudo, internet for what is missing):
#   1. checks the GPU (nvidia-smi: name, driver, CUDA version);
#   2. installs what is missing: a C++ compiler, Rust (rustup, minimal profile) when `cargo` is
#      not there, the pinned nats-server and the torch==2.13.0 venv (scripts/deps.sh; PyPI's
#      Linux wheel carries CUDA), and checks that this torch has CUDA;
#   3. builds the worker and `worker_bench` in release with libtorch_cuda really linked (checked
#      with ldd);
#   4. runs `worker_bench --device cuda` in fp32, then with `--half`: in-process images/s at
#      batch 1, 8, 32, 128, 256 and the worker draining a pre-filled stream at its defaults;
#   5. writes both into BENCHMARKS.md (section gpu-worker-cuda) and, when $OUT is set, copies
#      the reports, logs and BENCHMARKS.md there.
#
# Environment: OUT (where results go besides BENCHMARKS.md), GPU_BENCH_DEVICE (cuda),
# GPU_BENCH_ARGS (more worker_bench options, e.g. "--rounds 5 --worker-arg=--max-batch=128"),
# GPU_BENCH_BUILD_ONLY=1 (stop after step 3: installing and building take most of the time on a
# fresh machine, so a tool with a per-command time limit can build in one call, run in the next).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;35m[gpu-bench]\033[0m %s\n' "$*" >&2; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

DEVICE="${GPU_BENCH_DEVICE:-cuda}"
RESULTS="${OUT:-target/gpu-bench}"
mkdir -p "$RESULTS"

# 1. The GPU.
if ! command -v nvidia-smi >/dev/null 2>&1; then
  say "nvidia-smi not found: this machine has no NVIDIA driver; nothing to benchmark"
  exit 1
fi
GPU="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
CUDA_VERSION="$(nvidia-smi | grep -o 'CUDA Version: *[0-9.]*' | head -n 1 | sed 's/.*: *//')"
say "GPU: $GPU; driver's CUDA version: ${CUDA_VERSION:-unknown}"
nvidia-smi | tee "$RESULTS/nvidia-smi.txt" >&2

# 2. Tools. A C++ compiler builds torch-sys's wrapper; curl fetches rustup.
missing=()
command -v c++ >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  say "installing Rust (rustup, minimal profile)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --profile minimal --default-toolchain none >/dev/null
  . "$HOME/.cargo/env"
fi
# The toolchain rust-toolchain.toml pins (recent rustup no longer installs it on first use).
TOOLCHAIN="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
if command -v rustup >/dev/null 2>&1 && ! grep -q "^$TOOLCHAIN" <<<"$(rustup toolchain list)"; then
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi

# torch==2.13.0: PyPI's Linux wheel is built for CUDA 13, which needs a driver that reports CUDA
# 13 or later. With an older driver, the wheel for CUDA 12.8 (or 12.6) comes from PyTorch's own
# index, in a venv of its own (TORCH_INDEX_URL chooses another index).
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
DRIVER_CUDA_MAJOR="${CUDA_VERSION%%.*}"
DRIVER_CUDA_MINOR="$(echo "$CUDA_VERSION" | cut -d. -f2)"
if [ -z "${TORCH_INDEX_URL:-}" ] && [ -n "$DRIVER_CUDA_MAJOR" ] && [ "$DRIVER_CUDA_MAJOR" -lt 13 ]; then
  if [ "$DRIVER_CUDA_MAJOR" -eq 12 ] && [ "${DRIVER_CUDA_MINOR:-0}" -ge 8 ]; then
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
  else
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
  fi
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  export TORCH_VENV="${TORCH_VENV:-${CLOTHESLINE_CACHE:-$HOME/.cache/clothesline}/venv-torch-$TORCH_VERSION-${TORCH_INDEX_URL##*/}}"
  if ! "$TORCH_VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    say "installing torch==$TORCH_VERSION from $TORCH_INDEX_URL into $TORCH_VENV (driver's CUDA $CUDA_VERSION)"
    mkdir -p "$(dirname "$TORCH_VENV")"
    python3 -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install -q --upgrade pip
    "$TORCH_VENV/bin/pip" install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  fi
fi

# nats-server (the pinned release, as everywhere) and the rest of the venv (exports TORCH_VENV,
# TORCH_LIB, LIBTORCH_USE_PYTORCH, ...);
# `torch==2.13.0` there is satisfied by the local build above (2.13.0+cu128).
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
if [ ! -e "$TORCH_LIB/libtorch_cuda.so" ]; then
  say "the torch in $TORCH_VENV is CPU-only; installing the CUDA wheel in a venv of its own"
  export TORCH_VENV="${TORCH_VENV}-cuda"
  # shellcheck source=scripts/deps.sh
  source scripts/deps.sh
  [ -e "$TORCH_LIB/libtorch_cuda.so" ] || { say "no libtorch_cuda.so in $TORCH_LIB"; exit 1; }
fi
TORCH_INFO="$("$TORCH_VENV/bin/python" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, torch sees a GPU: {torch.cuda.is_available()}")')"
say "$TORCH_INFO"
if ! "$TORCH_VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "this torch cannot use the GPU (driver's CUDA ${CUDA_VERSION:-unknown} too old for it?); set TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cu126"
  exit 1
fi

# 3. Build, CUDA linked (gpu-worker/build.rs adds libtorch_cuda with --no-as-needed).
say "building clothesline-gpu-worker and worker_bench (release)"
cargo build --release --locked -p clothesline-gpu-worker --bin clothesline-gpu-worker --example worker_bench
BENCH=target/release/examples/worker_bench
if ! ldd "$BENCH" | grep -q 'libtorch_cuda'; then
  say "$BENCH is not linked with libtorch_cuda: it would run on the CPU"
  exit 1
fi

if [ "${GPU_BENCH_BUILD_ONLY:-0}" = 1 ]; then
  say "built; GPU_BENCH_BUILD_ONLY=1, so no benchmark now"
  exit 0
fi

# 4. The two runs; each prints a markdown report (stdout) and progress (stderr).
# shellcheck disable=SC2206
EXTRA=(${GPU_BENCH_ARGS:-})
run() {
  local name="$1"
  shift
  say "worker_bench --device $DEVICE $* (${name})"
  "$BENCH" --device "$DEVICE" --manifest model/manifest.json --out "$RESULTS/$name.md" "$@" "${EXTRA[@]}" \
    2> >(tee "$RESULTS/$name.log" >&2)
}
run fp32
run fp16 --half

# 5. BENCHMARKS.md, and a copy of everything in $OUT.
{
  echo "## gpu-worker on CUDA"
  echo
  echo "Written by \`scripts/gpu-bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): GPU $GPU, driver's CUDA version ${CUDA_VERSION:-unknown}; $TORCH_INFO; $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)."
  echo
  cat "$RESULTS/fp32.md"
  echo
  cat "$RESULTS/fp16.md"
} >"$RESULTS/section.md"
cargo run --release --locked -q -p clothesline-loadtest -- section gpu-worker-cuda "$RESULTS/section.md" --append
cp BENCHMARKS.md "$RESULTS/BENCHMARKS.md"
say "done: $RESULTS/section.md, BENCHMARKS.md section gpu-worker-cuda"
