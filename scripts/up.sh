#!/usr/bin/env bash
# Runs the whole pipeline locally without Docker, from a fresh Debian 12 machine with only Rust
# and Python 3 + pip: installs what is missing, builds (release), and runs `clothesline-stack up`
# (tests/stack/: nats-server with JetStream, the streams provisioned, gpu-worker (CPU unless
# CUDA is there), preprocessor and ingress, each waited for until ready, and the sample images
# served); prints how to call them. Ctrl-C stops everything.
#
# Environment: INGRESS_PORT (8080), NATS_PORT (4222), NATS_MONITOR_PORT (8222),
# PREPROCESSOR_PORT (9091), GPU_WORKER_PORT (9092), MODEL_MANIFEST (model/manifest.json),
# DEVICE (auto), ALLOW_PRIVATE_ADDRESSES (0: set 1 to classify images served on this machine,
# such as examples/images, which this script serves on 127.0.0.1:EXAMPLES_PORT, 8000),
# LOG_DIR (a temp dir), BIN_DIR (binaries already built there: skip the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

log() { printf '\033[1;32m[up]\033[0m %s\n' "$*" >&2; }

if [ -n "${BIN_DIR:-}" ]; then
  BIN="$(cd "$BIN_DIR" && pwd)"
else
  log "building (release)"
  cargo build --release --locked --workspace --bins
  BIN="$PWD/target/release"
fi
EXAMPLES_PORT="${EXAMPLES_PORT:-8000}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t clothesline-logs.XXXXXX)}"
ENDPOINTS="$LOG_DIR/endpoints.env"
args=(up --bin-dir "$BIN" --endpoints "$ENDPOINTS" --log-dir "$LOG_DIR" --device "${DEVICE:-auto}"
  --ingress-host 0.0.0.0 --ingress-port "${INGRESS_PORT:-8080}" --nats-port "${NATS_PORT:-4222}"
  --nats-monitor-port "${NATS_MONITOR_PORT:-8222}" --preprocessor-port "${PREPROCESSOR_PORT:-9091}"
  --worker-port "${GPU_WORKER_PORT:-9092}" --serve examples/images --serve-addr "127.0.0.1:$EXAMPLES_PORT")
if [ "${ALLOW_PRIVATE_ADDRESSES:-0}" = 1 ]; then args+=(--allow-private-addresses); fi

# The launcher prints one line, `ready`, once every tier is (end of file if it failed); Ctrl-C
# or SIGTERM here reaches it, and it stops the tiers, then nats-server.
rm -f "$LOG_DIR/ready" && mkfifo "$LOG_DIR/ready"
"$BIN/clothesline-stack" "${args[@]}" >"$LOG_DIR/ready" &
STACK_PID=$!
trap 'kill -TERM "$STACK_PID" 2>/dev/null || true; wait "$STACK_PID"; exit' INT TERM
read -r ready <"$LOG_DIR/ready" || ready=failed
rm -f "$LOG_DIR/ready"
if [ "$ready" != ready ]; then log "it did not start; logs in $LOG_DIR"; tail -n 20 "$LOG_DIR"/*.log; exit 1; fi
while IFS='=' read -r key value; do printf -v "$key" '%s' "$value"; done <"$ENDPOINTS"

IMAGES="$PWD/examples/images"
if [ "${ALLOW_PRIVATE_ADDRESSES:-0}" = 1 ]; then
  predict_note="a URL (examples/images is served on 127.0.0.1:$EXAMPLES_PORT):"
else
  predict_note="a URL (this one works once started with ALLOW_PRIVATE_ADDRESSES=1; a public image URL works as is):"
fi
cat <<MSG

clothesline is up (logs: $LOG_DIR, NATS store: $NATS_STORE)

  # upload an image:
  curl -X POST localhost:$INGRESS_PORT/v1/classify -H 'Content-Type: image/jpeg' --data-binary @$IMAGES/pants.jpg

  # $predict_note
  curl -X POST localhost:$INGRESS_PORT/predict -d '{"url": "http://127.0.0.1:$EXAMPLES_PORT/shoes.jpg"}'

  # the command-line client, many images at once:
  $BIN/clothesline classify --url http://localhost:$INGRESS_PORT $IMAGES/*.jpg

  try it in a browser: http://localhost:$INGRESS_PORT/
  metrics: localhost:$INGRESS_PORT/metrics, :$PREPROCESSOR_PORT/metrics, :$GPU_WORKER_PORT/metrics
  NATS monitoring: http://localhost:$NATS_MONITOR_PORT

Ctrl-C stops everything.
MSG
wait "$STACK_PID" || { log "it stopped (a tier exited?); logs in $LOG_DIR"; exit 1; }
