#!/usr/bin/env bash
# Builds the container images, one per tier, from the repository root (BuildKit, multi-stage,
# dependencies cached in their own layers):
#   scripts/build-images.sh                   # all four, tagged clothesline/<tier>:dev
#   TAG=0.1.0 scripts/build-images.sh ingress # only some
# Each image is also one plain command: docker build -f docker/<tier>.Dockerfile -t clothesline/<tier> .
# Environment: TAG (dev), REPO_PREFIX (clothesline), PLATFORM (linux/amd64), DOCKER_BUILD_ARGS
# (extra arguments for every build, e.g. "--pull" or "--build-arg TORCH_VERSION=2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${TAG:-dev}"
REPO_PREFIX="${REPO_PREFIX:-clothesline}"
PLATFORM="${PLATFORM:-linux/amd64}"
ALL_TIERS=(provision ingress preprocessor gpu-worker)
if [ "$#" -gt 0 ]; then tiers=("$@"); else tiers=("${ALL_TIERS[@]}"); fi

log() { printf '\033[1;34m[images]\033[0m %s\n' "$*" >&2; }

for tier in "${tiers[@]}"; do
  dockerfile="docker/$tier.Dockerfile"
  [ -f "$dockerfile" ] || { log "no $dockerfile (tiers: ${ALL_TIERS[*]})"; exit 2; }
  image="$REPO_PREFIX/$tier:$TAG"
  log "building $image"
  # shellcheck disable=SC2086 # DOCKER_BUILD_ARGS is a list of words on purpose
  DOCKER_BUILDKIT=1 docker build --platform "$PLATFORM" -f "$dockerfile" -t "$image" ${DOCKER_BUILD_ARGS:-} .
done
log "built ${tiers[*]} as $REPO_PREFIX/<tier>:$TAG"
