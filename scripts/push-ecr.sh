#!/usr/bin/env bash
# Tags the images built by scripts/build-images.sh and pushes them to Amazon ECR under an immutable
# tag, the git sha, creating the repositories (clothesline/<tier>, scan on push, tags immutable)
# when missing; then writes the registry and that tag into the eks overlay's kustomize `images:`,
# so `kubectl apply -k k8s/overlays/eks` rolls out exactly what was pushed. A tag is never pushed
# twice (ECR refuses), so nodes pulling with IfNotPresent never run an older build under it.
# Needs the AWS CLI v2, logged in.
#   AWS_REGION=eu-west-1 scripts/push-ecr.sh
# Environment: AWS_REGION (required), AWS_ACCOUNT_ID (default: the caller's account), TAG (the
# pushed tag: the short git sha of HEAD; refused for a tree with uncommitted changes), SOURCE_TAG
# (the local tag, as scripts/build-images.sh tags: TAG), REPO_PREFIX (clothesline),
# OVERLAY (k8s/overlays/eks/kustomization.yaml). Prints the registry.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${AWS_REGION:?set AWS_REGION, e.g. AWS_REGION=eu-west-1}"
AWS_ACCOUNT_ID="${AWS_ACCOUNT_ID:-$(aws sts get-caller-identity --query Account --output text)}"
if [ -z "${TAG:-}" ]; then
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "uncommitted changes: commit first, the pushed tag names a commit (or set TAG)" >&2
    exit 2
  fi
  TAG="$(git rev-parse --short HEAD)"
fi
SOURCE_TAG="${SOURCE_TAG:-$TAG}"
REPO_PREFIX="${REPO_PREFIX:-clothesline}"
OVERLAY="${OVERLAY:-k8s/overlays/eks/kustomization.yaml}"
REGISTRY="$AWS_ACCOUNT_ID.dkr.ecr.$AWS_REGION.amazonaws.com"
TIERS=(provision ingress preprocessor gpu-worker)

log() { printf '\033[1;34m[ecr]\033[0m %s\n' "$*" >&2; }

aws ecr get-login-password --region "$AWS_REGION" |
  docker login --username AWS --password-stdin "$REGISTRY"

for tier in "${TIERS[@]}"; do
  repo="$REPO_PREFIX/$tier"
  if ! aws ecr describe-repositories --region "$AWS_REGION" --repository-names "$repo" >/dev/null 2>&1; then
    log "creating repository $repo"
    aws ecr create-repository --region "$AWS_REGION" --repository-name "$repo" \
      --image-scanning-configuration scanOnPush=true --image-tag-mutability IMMUTABLE >/dev/null
  fi
  docker tag "$repo:$SOURCE_TAG" "$REGISTRY/$repo:$TAG"
  log "pushing $REGISTRY/$repo:$TAG"
  docker push "$REGISTRY/$repo:$TAG"
done
log "pushed ${#TIERS[@]} images with tag $TAG to $REGISTRY"

# The overlay's images: entries (newName <registry>/clothesline/<tier>, newTag "<sha>").
sed -i -E \
  -e "s#(newName: )[^ ]+/($REPO_PREFIX/[a-z-]+)\$#\1$REGISTRY/\2#" \
  -e "s#(newTag: ).*#\1\"$TAG\"#" \
  "$OVERLAY"
log "$OVERLAY now deploys $REGISTRY/$REPO_PREFIX/<tier>:$TAG"
echo "$REGISTRY"
