#!/usr/bin/env bash
# Tags the images built by scripts/build-images.sh and pushes them to Amazon ECR, creating the
# repositories (clothesline/<tier>, scan on push) when missing. Needs the AWS CLI v2, logged in.
#   AWS_REGION=eu-west-1 scripts/push-ecr.sh
# Environment: AWS_REGION (required), AWS_ACCOUNT_ID (default: the caller's account), SOURCE_TAG
# (the local tag, dev), TAG (the pushed tag: the workspace version from Cargo.toml),
# REPO_PREFIX (clothesline). Prints the registry so k8s/README.md's next step can use it.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${AWS_REGION:?set AWS_REGION, e.g. AWS_REGION=eu-west-1}"
AWS_ACCOUNT_ID="${AWS_ACCOUNT_ID:-$(aws sts get-caller-identity --query Account --output text)}"
SOURCE_TAG="${SOURCE_TAG:-dev}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
REPO_PREFIX="${REPO_PREFIX:-clothesline}"
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
      --image-scanning-configuration scanOnPush=true >/dev/null
  fi
  docker tag "$repo:$SOURCE_TAG" "$REGISTRY/$repo:$TAG"
  log "pushing $REGISTRY/$repo:$TAG"
  docker push "$REGISTRY/$repo:$TAG"
done
log "pushed ${#TIERS[@]} images with tag $TAG to $REGISTRY"
echo "$REGISTRY"
