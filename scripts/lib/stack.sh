# shellcheck shell=bash
# The set-up shared by the benchmark scripts, and the local stack they run, on free ports: nats-server (its store in a temp folder),
# provisioning, one gpu-worker, one preprocessor (allowed to fetch from 127.0.0.1) and one ingress,
# each waited for on its readiness endpoint. Sourced by scripts/bench.sh and
# scripts/bench_ingress.sh and scripts/chaos.sh.
#
#   bench_init TAG         RESULTS (BENCH_KEEP, else a new temp folder; reports of an earlier run
#                          removed), LOG_DIR (its logs/), IMAGES (BENCH_IMAGES, else the validation
#                          split), BIN (the release binaries), LOADTEST; `log` lines carry TAG
#   log MESSAGE            a timestamped line on stderr
#   json_field FILE EXPR   EXPR evaluated on FILE's JSON as `d`
#   stack_start            start it; extra options per tier in the arrays WORKER_ARGS,
#                          PREPROCESSOR_ARGS and INGRESS_ARGS, JetStream definitions from
#                          DEFINITIONS (default: built in); sets NATS_URL, INGRESS_PORT,
#                          PREPROCESSOR_PORT, GPU_WORKER_PORT and the *_PID variables
#   start_nats, start_worker, start_preprocessor, start_ingress
#                          (re)start one process on its ports (after a kill, say); returns
#                          once it is ready
#   stack_stop             stop every process started here (SIGTERM, then wait) and the store
#   crash PID              SIGKILL one of them
#   tier_cpu               CPU seconds so far of nats-server, ingress, preprocessor, gpu-worker
#   metric PORT SAMPLE     a sample's value on a tier's /metrics (0 when absent)
#   rss_kib PID            resident memory of a process, in KiB

pids=()

# The variables bench_init sets are used by the scripts that source this file.
# shellcheck disable=SC2034
bench_init() {
  BENCH_TAG=$1
  IMAGES="${BENCH_IMAGES:-../shared/datasets/clothing-dataset-small/validation}"
  RESULTS="${BENCH_KEEP:-$(mktemp -d -t "clothesline-$1.XXXXXX")}"
  mkdir -p "$RESULTS"
  # A kept folder from an earlier run must not mix in its reports.
  rm -f "$RESULTS"/*.json "$RESULTS"/*.txt
  LOG_DIR="$RESULTS/logs"
  mkdir -p "$LOG_DIR"
  BIN=target/release
  LOADTEST="$BIN/clothesline-loadtest"
  SECONDS=0
}

log() { printf '\033[1;35m[%s +%ds]\033[0m %s\n' "${BENCH_TAG:-bench}" "$SECONDS" "$*" >&2; }

json_field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$@"; }

declare -p WORKER_ARGS >/dev/null 2>&1 || WORKER_ARGS=()
declare -p PREPROCESSOR_ARGS >/dev/null 2>&1 || PREPROCESSOR_ARGS=()
declare -p INGRESS_ARGS >/dev/null 2>&1 || INGRESS_ARGS=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The tiers first, nats-server last (as a deployment drains): with everything SIGTERMed at once a
# gpu-worker has hung past its grace period (issue #14), which would stall a benchmark.
stop_all() {
  local pid
  for pid in "${pids[@]}"; do [ "$pid" = "${NATS_PID:-}" ] || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do [ "$pid" = "${NATS_PID:-}" ] || wait "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# crash PID: SIGKILL, as a crash would; the process leaves the list `wait_ready` watches.
crash() {
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}

wait_ready() { # name url
  for _ in $(seq 1 900); do
    if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { log "a process died; logs in $LOG_DIR"; tail -n 20 "$LOG_DIR"/*.log; exit 1; }
    done
    sleep 0.2
  done
  log "$1 not ready after 180 s; logs in $LOG_DIR"; exit 1
}

start_nats() {
  local nats_server
  nats_server="$(command -v nats-server || echo /usr/sbin/nats-server)"
  "$nats_server" -c "$NATS_STORE/nats.conf" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
    -sd "$NATS_STORE" >>"$LOG_DIR/nats.log" 2>&1 &
  pids+=($!); NATS_PID=$!
  wait_ready nats-server "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true"
}

launch_worker() {
  "$BIN/clothesline-gpu-worker" --device "${DEVICE:-cpu}" --http-addr "127.0.0.1:$GPU_WORKER_PORT" \
    "${WORKER_ARGS[@]}" >>"$LOG_DIR/gpu-worker.log" 2>&1 &
  pids+=($!); WORKER_PID=$!
}
ready_worker() { wait_ready gpu-worker "http://127.0.0.1:$GPU_WORKER_PORT/readyz"; }
start_worker() { launch_worker; ready_worker; }

launch_preprocessor() {
  "$BIN/clothesline-preprocessor" --http-addr "127.0.0.1:$PREPROCESSOR_PORT" --allow-private-addresses \
    "${PREPROCESSOR_ARGS[@]}" >>"$LOG_DIR/preprocessor.log" 2>&1 &
  pids+=($!); PREPROCESSOR_PID=$!
}
ready_preprocessor() { wait_ready preprocessor "http://127.0.0.1:$PREPROCESSOR_PORT/readyz"; }
start_preprocessor() { launch_preprocessor; ready_preprocessor; }

launch_ingress() {
  "$BIN/clothesline-ingress" --http-addr "127.0.0.1:$INGRESS_PORT" "${INGRESS_ARGS[@]}" \
    >>"$LOG_DIR/ingress.log" 2>&1 &
  pids+=($!); INGRESS_PID=$!
}
ready_ingress() { wait_ready ingress "http://127.0.0.1:$INGRESS_PORT/readyz"; }
start_ingress() { launch_ingress; ready_ingress; }

stack_start() {
  NATS_PORT=$(free_port); NATS_MONITOR_PORT=$(free_port)
  INGRESS_PORT=$(free_port); PREPROCESSOR_PORT=$(free_port); GPU_WORKER_PORT=$(free_port)
  export NATS_URL="nats://127.0.0.1:$NATS_PORT" RUST_LOG="${RUST_LOG:-warn}"
  NATS_STORE=$(mktemp -d -t clothesline-bench-nats.XXXXXX)
  # A one-line config, as the test harness does: max_payload (uploads need 8 MB) has no flag.
  echo "max_payload: 8MB" >"$NATS_STORE/nats.conf"
  start_nats
  local definitions=()
  [ -z "${DEFINITIONS:-}" ] || definitions=(--definitions "$DEFINITIONS")
  "$BIN/clothesline-provision" "${definitions[@]}" >"$LOG_DIR/provision.log" 2>&1
  # The three tiers start side by side (the worker loads its model meanwhile).
  launch_worker; launch_preprocessor; launch_ingress
  ready_worker; ready_preprocessor; ready_ingress
  log "stack ready"
}

stack_stop() {
  stop_all
  rm -rf "$NATS_STORE"
}

tier_cpu() {
  for pid in "$NATS_PID" "$INGRESS_PID" "$PREPROCESSOR_PID" "$WORKER_PID"; do
    awk '{printf "%s ", ($14 + $15) / 100}' "/proc/$pid/stat"
  done
  echo
}

metric() { # port sample
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s {print $2; found=1} END {if (!found) print 0}'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
