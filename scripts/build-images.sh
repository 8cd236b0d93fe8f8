#!/usr/bin/env bash
# Builds the container images, one per tier, from the repository root:
#   scripts/build-images.sh                            # every image, tagged clothesline/<tier>:<git sha> and :dev
#   TAG=0.1.0 scripts/build-images.sh ingress          # only some
#   LOCAL_BASE=1 BUILD=host scripts/build-images.sh    # no registry (what was tested here)
# Each image is also one plain command: docker build -f docker/<tier>.Dockerfile -t clothesline/<tier> .
# Two ways to get the binaries:
#   BUILD=docker (default)  compile inside `docker build` (multi-stage, cargo-chef); needs the Rust
#                           image and crates.io (and PyPI for the gpu-worker's torch)
#   BUILD=host              `cargo build --locked --profile $HOST_PROFILE` here (with the torch of
#                           scripts/deps.sh), staged in target/prebuilt/ and copied by the
#                           Dockerfiles' `prebuilt` stage: for engines that reach no registry
# LOCAL_BASE=1 starts from the images of scripts/base-images.sh instead of the public ones.
# Environment: TAG (the short git sha: immutable; k8s deploys these), EXTRA_TAG (dev, the tag
# compose.yml uses; empty for none), REPO_PREFIX (clothesline), PLATFORM (linux/amd64),
# HOST_PROFILE (release), BASE_PREFIX (clothesline-base), DOCKER_BUILD_ARGS (extra arguments for
# every build, e.g. "--pull" or "--build-arg TORCH_VERSION=2.13.0"). BuildKit is used when the
# docker CLI has buildx, the legacy builder otherwise (it builds every stage before --target, so the
# `prebuilt` stages come first and need no Rust image).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BUILD:-docker}" = host ]; then
  # shellcheck source=scripts/deps.sh
  source scripts/deps.sh
  # deps.sh puts nats-server's venv first on PATH; torch-sys asks `python3` where torch is.
  export PATH="$TORCH_VENV/bin:$PATH"
fi

TAG="${TAG:-$(git rev-parse --short HEAD)}"
EXTRA_TAG="${EXTRA_TAG-dev}"
REPO_PREFIX="${REPO_PREFIX:-clothesline}"
PLATFORM="${PLATFORM:-linux/amd64}"
BUILD="${BUILD:-docker}"
HOST_PROFILE="${HOST_PROFILE:-release}"
BASE_PREFIX="${BASE_PREFIX:-clothesline-base}"
ALL_TIERS=(provision ingress preprocessor gpu-worker gpu-worker-cpu)
if [ "$#" -gt 0 ]; then tiers=("$@"); else tiers=("${ALL_TIERS[@]}"); fi

log() { printf '\033[1;34m[images]\033[0m %s\n' "$*" >&2; }

# tier -> the binary it ships.
binary_of() { if [ "$1" = gpu-worker-cpu ]; then echo clothesline-gpu-worker; else echo "clothesline-$1"; fi; }

common=(--platform "$PLATFORM")
if docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=1
else
  export DOCKER_BUILDKIT=0
  log "no buildx: the legacy builder"
fi
if [ -n "${LOCAL_BASE:-}" ]; then
  runtime="$BASE_PREFIX/runtime:bookworm"
  docker image inspect "$runtime" >/dev/null 2>&1 || { log "no $runtime: run scripts/base-images.sh"; exit 2; }
  common+=(--build-arg "RUNTIME_IMAGE=$runtime" --build-arg "BUSYBOX_IMAGE=$runtime")
fi

case "$BUILD" in
  docker) ;;
  host)
    site_packages="$(dirname "$TORCH_LIB")/.."
    profile_dir="$HOST_PROFILE"
    [ "$HOST_PROFILE" = dev ] && profile_dir=debug
    # --workspace with --bin filters: the workspace's feature set, so the build reuses what
    # `cargo build --workspace` (scripts/test.sh) already compiled; `-p <crate>` alone would unify
    # features differently and rebuild the dependencies.
    bins=()
    for tier in "${tiers[@]}"; do bins+=(--bin "$(binary_of "$tier")"); done
    # The provision image also carries clothesline-model (docker/provision.Dockerfile).
    [[ " ${tiers[*]} " == *" provision "* ]] && bins+=(--bin clothesline-model)
    log "cargo build --locked --profile $HOST_PROFILE --workspace ${bins[*]}"
    cargo build --locked --profile "$HOST_PROFILE" --workspace "${bins[@]}"
    common+=(--target prebuilt)
    ;;
  *) log "BUILD is docker or host, not $BUILD"; exit 2 ;;
esac

# Fills target/prebuilt/ with exactly what the Dockerfile's `prebuilt` stage copies (the legacy
# builder sends the whole context): binaries from target/<profile>/, libtorch and the CUDA
# libraries from the torch wheel of scripts/deps.sh (hard links: no extra disk).
stage_prebuilt() {
  local dockerfile="$1" tier="$2"
  rm -rf target/prebuilt
  local sources
  sources="$(sed -n '/ AS prebuilt$/,/^FROM /p' "$dockerfile" | grep '^COPY ' | tr ' ' '\n' | grep '^target/prebuilt/' || true)"
  for path in $sources; do
    local rel="${path#target/prebuilt/}" from
    case "$rel" in
      clothesline-*) from="target/$profile_dir/$rel" ;;
      torch | torch/* | nvidia | nvidia/*) from="$site_packages/$rel" ;;
      *) log "$dockerfile: no source for $path"; exit 2 ;;
    esac
    mkdir -p "$(dirname "$path")"
    if [ -d "$from" ] || [ "${rel#clothesline-}" = "$rel" ]; then
      cp -al "$from" "$path" 2>/dev/null || cp -a "$from" "$path"
    else
      cp "$from" "$path"
    fi
  done
  # The CPU variant's binary must not ask for libtorch_cuda.so (docker/gpu-worker-cpu.Dockerfile).
  if [ "$tier" = gpu-worker-cpu ]; then
    patchelf --remove-needed libtorch_cuda.so target/prebuilt/clothesline-gpu-worker
  fi
}

for tier in "${tiers[@]}"; do
  dockerfile="docker/$tier.Dockerfile"
  [ -f "$dockerfile" ] || { log "no $dockerfile (tiers: ${ALL_TIERS[*]})"; exit 2; }
  image="$REPO_PREFIX/$tier:$TAG"
  tags=(-t "$image")
  [ -n "$EXTRA_TAG" ] && tags+=(-t "$REPO_PREFIX/$tier:$EXTRA_TAG")
  [ "$BUILD" = host ] && stage_prebuilt "$dockerfile" "$tier"
  log "building $image ($BUILD)"
  # shellcheck disable=SC2086 # DOCKER_BUILD_ARGS is a list of words on purpose
  docker build "${common[@]}" -f "$dockerfile" "${tags[@]}" ${DOCKER_BUILD_ARGS:-} .
done
rm -rf target/prebuilt
log "built ${tiers[*]} as $REPO_PREFIX/<tier>:$TAG${EXTRA_TAG:+ and :$EXTRA_TAG}"
for tier in "${tiers[@]}"; do
  docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$REPO_PREFIX/$tier:$TAG" >&2
done
