#!/usr/bin/env bash
# Runs the whole pipeline locally without Docker, from a fresh Debian 12 machine with only Rust
# and Python 3 + pip: installs what is missing, builds (release), starts nats-server with
# JetStream, provisions the streams, starts gpu-worker (CPU unless CUDA is there), preprocessor
# and ingress, waits until each is ready and prints how to call them. Ctrl-C stops everything.
#
# Environment: INGRESS_PORT (8080), NATS_PORT (4222), NATS_MONITOR_PORT (8222),
# PREPROCESSOR_PORT (9091), GPU_WORKER_PORT (9092), MODEL_MANIFEST (model/manifest.json),
# DEVICE (auto), ALLOW_PRIVATE_ADDRESSES (0: set 1 to classify images served on this machine,
# such as examples/images, which this script serves on 127.0.0.1:EXAMPLES_PORT, 8000),
# NATS_STORE, LOG_DIR (temp dirs), BIN_DIR (binaries already built there: skip the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

INGRESS_PORT="${INGRESS_PORT:-8080}"
NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
PREPROCESSOR_PORT="${PREPROCESSOR_PORT:-9091}"
GPU_WORKER_PORT="${GPU_WORKER_PORT:-9092}"
EXAMPLES_PORT="${EXAMPLES_PORT:-8000}"
export MODEL_MANIFEST="${MODEL_MANIFEST:-model/manifest.json}"
export DEVICE="${DEVICE:-auto}"
NATS_STORE="${NATS_STORE:-$(mktemp -d -t clothesline-nats.XXXXXX)}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t clothesline-logs.XXXXXX)}"
export NATS_URL="nats://127.0.0.1:$NATS_PORT"

log() { printf '\033[1;32m[up]\033[0m %s\n' "$*" >&2; }

if [ -n "${BIN_DIR:-}" ]; then
  BIN="$(cd "$BIN_DIR" && pwd)"
else
  log "building (release)"
  cargo build --release --locked --workspace --bins
  BIN="$PWD/target/release"
fi

pids=()
stop() {
  trap - INT TERM EXIT
  log "stopping"
  # The tiers first, nats-server (the first pid) last: a tier drains, hands work back and flushes
  # through NATS while it stops.
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  kill -TERM "${pids[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

wait_ready() { # name url
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null "$2" 2>/dev/null; then log "$1 ready"; return 0; fi
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { log "a process died; logs in $LOG_DIR"; tail -n 20 "$LOG_DIR"/*.log; exit 1; }
    done
    sleep 0.2
  done
  log "$1 not ready after 120 s; logs in $LOG_DIR"; exit 1
}

NATS_SERVER="$(command -v nats-server || echo /usr/sbin/nats-server)"
"$NATS_SERVER" -c nats/nats-server.conf -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -sd "$NATS_STORE" \
  >"$LOG_DIR/nats.log" 2>&1 &
pids+=($!)
wait_ready nats-server "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true"

"$BIN/clothesline-provision"

preprocessor_flags=()
if [ "${ALLOW_PRIVATE_ADDRESSES:-0}" = 1 ]; then preprocessor_flags+=(--allow-private-addresses); fi

# The sample images, for URL examples that need no internet (loopback: only the preprocessor
# started with ALLOW_PRIVATE_ADDRESSES=1 may fetch them).
python3 -m http.server --bind 127.0.0.1 --directory examples/images "$EXAMPLES_PORT" \
  >"$LOG_DIR/examples.log" 2>&1 &
pids+=($!)

"$BIN/clothesline-gpu-worker" --http-addr "127.0.0.1:$GPU_WORKER_PORT" >"$LOG_DIR/gpu-worker.log" 2>&1 &
pids+=($!)
"$BIN/clothesline-preprocessor" --http-addr "127.0.0.1:$PREPROCESSOR_PORT" "${preprocessor_flags[@]}" \
  >"$LOG_DIR/preprocessor.log" 2>&1 &
pids+=($!)
"$BIN/clothesline-ingress" --http-addr "0.0.0.0:$INGRESS_PORT" >"$LOG_DIR/ingress.log" 2>&1 &
pids+=($!)

wait_ready gpu-worker "http://127.0.0.1:$GPU_WORKER_PORT/readyz"
wait_ready preprocessor "http://127.0.0.1:$PREPROCESSOR_PORT/readyz"
wait_ready ingress "http://127.0.0.1:$INGRESS_PORT/readyz"

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
wait -n "${pids[@]}" || true
log "a process exited; see $LOG_DIR"
