#!/usr/bin/env bash
# The compose stack, tested for real on a Docker engine that reaches no registry:
#   1. builds the base images (scripts/base-images.sh) and the tiers' images from host builds
#      (LOCAL_BASE=1 BUILD=host scripts/build-images.sh; the gpu-worker is the CPU-only image)
#   2. `compose up` (nats with the per-role users, provision, the three tiers) and waits for health
#   3. classifies a sample image by URL, served from another container (busybox httpd on the
#      compose network), and by upload, over HTTP; both must name the same class; then 20 images
#      over NATS (`clothesline.classify` as user `public`): all answered
#   4. under load (HTTP uploads at LOAD_RATE/s), `docker kill`s every preprocessor container,
#      starts them again, and checks that every request got a 200 (the killed ones' messages are
#      redelivered after the consumer's ack_wait of 30 s, well within the 100 s deadline asked)
#   5. `compose stop` and `down`: every container must have exited 0 or 143, none SIGKILLed (137)
#   6. prints the image sizes and the times to healthy and to the first answer
# Takes about 1.5 minutes here once the images exist (SKIP_BUILD=1), plus the builds (see README).
# Environment: SKIP_BUILD (reuse the images), HOST_PROFILE (release; dev builds faster), LOADTEST
# (target/<profile>/clothesline-loadtest),
# KEEP_UP (leave the stack running), INGRESS_PORT, NATS_PORT,
# NATS_MONITOR_PORT (0: free ones), LOAD_RATE (5), LOAD_SECS (30), CLOTHESLINE_DATASET.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh

HOST_PROFILE="${HOST_PROFILE:-release}"
profile_dir="$HOST_PROFILE"
[ "$HOST_PROFILE" = dev ] && profile_dir=debug
LOADTEST="${LOADTEST:-target/$profile_dir/clothesline-loadtest}"
LOAD_RATE="${LOAD_RATE:-5}"
LOAD_SECS="${LOAD_SECS:-30}"
export TAG=dev NATS_IMAGE=clothesline-base/nats:2.12.8 ALLOW_PRIVATE_ADDRESSES=true
# Port 0: Docker picks free host ports (other tests run on this machine); read back after up.
export INGRESS_PORT="${INGRESS_PORT:-0}" NATS_PORT="${NATS_PORT:-0}" NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-0}"
IMAGE_SERVER="$PROJECT-images"
WORK="$(mktemp -d -t clothesline-compose.XXXXXX)"

cleanup() {
  docker rm -f "$IMAGE_SERVER" >/dev/null 2>&1 || true
  if [ -z "${KEEP_UP:-}" ]; then compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${SKIP_BUILD:-}" ]; then
  clog "building the base images and the tiers' images (host builds, profile $HOST_PROFILE)"
  scripts/base-images.sh runtime nats
  HOST_PROFILE="$HOST_PROFILE" LOCAL_BASE=1 BUILD=host EXTRA_TAG=dev \
    scripts/build-images.sh provision ingress preprocessor gpu-worker-cpu
  cargo build --locked --profile "$HOST_PROFILE" --workspace --bin clothesline-loadtest
fi
dataset_sample "$WORK/images" 2
first="$(cd "$WORK/images" && find . -name '*.jpg' | sort | sed -n 1p)"
first="${first#./}"

clog "compose up (${COMPOSE[*]})"
compose down -v --remove-orphans >/dev/null 2>&1 || true
started=$SECONDS
compose up -d --no-build
wait_until 300 "every tier healthy" healthy ingress
API="http://$(published ingress 8080)"
to_healthy=$((SECONDS - started))
clog "healthy after ${to_healthy}s"

# The image server: another container on the compose network, reached by the preprocessor as
# http://images:8000/ (ALLOW_PRIVATE_ADDRESSES=true lets it fetch from private addresses).
docker run -d --name "$IMAGE_SERVER" --network "${PROJECT}_default" --network-alias images \
  --user 65534:65534 -v "$WORK/images:/srv:ro" clothesline-base/runtime:bookworm \
  busybox httpd -f -p 8000 -h /srv >/dev/null

label() { jq -r '.top[0].label' "$1"; }
classify_url() {
  curl -fsS -o "$WORK/url.json" -H 'Content-Type: application/json' \
    -d "{\"url\": \"http://images:8000/$first\"}" "$API/v1/classify"
}
wait_until 120 "the first answer" classify_url
to_first=$((SECONDS - started))
curl -fsS -o "$WORK/upload.json" -H 'Content-Type: image/jpeg' --data-binary "@$WORK/images/$first" "$API/v1/classify"
by_url="$(label "$WORK/url.json")" by_upload="$(label "$WORK/upload.json")"
clog "$first: by URL (from another container) $by_url, by upload $by_upload"
[ "$by_url" = "$by_upload" ] || { clog "FAIL: URL and upload disagree"; exit 1; }

# Every answer ok: statuses has only the success key, and no request is missing.
all_ok() { # report.json expected-count success-key
  jq -r '"  completed \(.completed), ok \(.ok), statuses \(.statuses), errors \(.error_codes), p50 \(.latency_ms.p50) ms, max \(.latency_ms.max) ms"' "$1" &&
    jq -e --argjson want "$2" --arg key "$3" '.ok == $want and .completed == $want and (.statuses | keys) == [$key]' "$1" >/dev/null
}

clog "20 images over NATS (clothesline.classify as public)"
"$LOADTEST" run --target nats --upload --nats-url "nats://$(published nats 4222)" --nats-user public \
  --nats-password "${NATS_PASSWORD_PUBLIC:-dev-public}" --images "$WORK/images" --requests 20 \
  --concurrency 4 --json "$WORK/nats.json" >"$WORK/nats.txt" 2>&1
all_ok "$WORK/nats.json" 20 nats_ok || { clog "FAIL: not every NATS request answered"; exit 1; }

ok_so_far() { # requests the ingress answered with 200
  curl -fsS "$API/metrics" | awk '/^ingress_requests_total\{.*status="200"/ {s += $2} END {print s + 0}'
}
answered_200() { [ "$(ok_so_far)" -ge "$1" ]; }
exited() { [ -z "$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1")" ]; }
expected=$((LOAD_RATE * LOAD_SECS))
clog "load: $expected uploads at $LOAD_RATE/s; docker kill every preprocessor once answers flow"
"$LOADTEST" run --target classify --upload --ingress "$API" --images "$WORK/images" --rate "$LOAD_RATE" \
  --requests "$expected" --deadline 100s --timeout 110s --json "$WORK/kill.json" >"$WORK/kill.txt" 2>&1 &
load=$!
wait_until 60 "answers under load" answered_200 $(($(ok_so_far) + 15))
mapfile -t victims < <(containers preprocessor)
docker kill "${victims[@]}" >/dev/null
wait_until 30 "the preprocessors to die" exited preprocessor
killed_at=$SECONDS
clog "killed ${#victims[@]} preprocessor containers; starting them again"
docker start "${victims[@]}" >/dev/null
wait_until 120 "the preprocessors healthy again" healthy preprocessor
clog "preprocessors healthy again $((SECONDS - killed_at))s after the kill"
wait "$load" || true
all_ok "$WORK/kill.json" "$expected" 200 || { clog "FAIL: a request was lost or failed"; cat "$WORK/kill.txt"; exit 1; }

clog "compose stop: every container must stop within its grace period"
docker rm -f "$IMAGE_SERVER" >/dev/null
stop_started=$SECONDS
compose stop
clog "stopped in $((SECONDS - stop_started))s"
check_stopped_cleanly || { clog "FAIL: a container was killed"; exit 1; }
[ -n "${KEEP_UP:-}" ] || compose down -v --remove-orphans

clog "image sizes:"
for image in clothesline/provision clothesline/ingress clothesline/preprocessor clothesline/gpu-worker-cpu \
  clothesline/gpu-worker "$NATS_IMAGE" clothesline-base/runtime:bookworm; do
  docker image ls --format '  {{.Repository}}:{{.Tag}} {{.Size}}' "$image" | grep -E ':(dev|[0-9.]+|bookworm) ' || true
done
clog "time to healthy: ${to_healthy}s; to the first answer: ${to_first}s (from compose up)"
clog "PASS"
