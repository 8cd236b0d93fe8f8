# shellcheck shell=bash
# The set-up shared by the benchmark scripts: the local stack is `clothesline-stack up` (the
# integration harness's launcher, tests/stack/) on free ports: nats-server, provisioning, one
# gpu-worker, one preprocessor (allowed to fetch from 127.0.0.1), one ingress, each waited for on
# its readiness endpoint. Sourced by the bench*.sh scripts.
#
#   bench_init TAG   RESULTS (BENCH_KEEP, else a new temp folder; reports of an earlier run
#                    removed), LOG_DIR (its logs/), IMAGES (BENCH_IMAGES, else the validation
#                    split), BIN (the release binaries, or BENCH_BIN: binaries already built,
#                    e.g. target/debug for a dry run; the scripts then build nothing), LOADTEST;
#                    `log` lines carry TAG
#   log MESSAGE      a timestamped line on stderr
#   stack_start      start it; extra options per tier in the arrays WORKER_ARGS,
#                    PREPROCESSOR_ARGS and INGRESS_ARGS, JetStream definitions from DEFINITIONS
#                    (default: built in), the model from MODEL_MANIFEST, DEVICE (cpu); sets the
#                    endpoints (tests/stack/endpoints.rs): NATS_URL, NATS_MONITOR_PORT,
#                    INGRESS_PORT, PREPROCESSOR_PORT, GPU_WORKER_PORT, the *_PID
#   stack_stop       SIGTERM to the launcher: it stops the tiers, then nats-server, each within
#                    its grace, and exits
#   stop_all         stack_stop, and SIGTERM to the processes in `pids`
#   free_port        a free TCP port
#   wait_http URL PID  until URL answers 2xx (exit 1 if PID dies first or after 3 minutes)
#   tier_cpu         CPU seconds so far of nats-server, ingress, preprocessor, gpu-worker
#   metric PORT SAMPLE  a sample's value on a tier's /metrics (0 when absent)
#   rss_kib PID      resident memory of a process, in KiB

pids=()
STACK_PID=

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
  BIN="${BENCH_BIN:-target/release}"
  LOADTEST="$BIN/clothesline-loadtest"
  SECONDS=0
}

log() { printf '\033[1;35m[%s +%ds]\033[0m %s\n' "${BENCH_TAG:-bench}" "$SECONDS" "$*" >&2; }

declare -p WORKER_ARGS >/dev/null 2>&1 || WORKER_ARGS=()
declare -p PREPROCESSOR_ARGS >/dev/null 2>&1 || PREPROCESSOR_ARGS=()
declare -p INGRESS_ARGS >/dev/null 2>&1 || INGRESS_ARGS=()

free_port() { "${STACK:-$BIN/clothesline-stack}" ports 1; }

stack_start() {
  local args=(up --bin-dir "$BIN" --endpoints "$RESULTS/stack.env" --log-dir "$LOG_DIR"
    --log-level "${RUST_LOG:-warn}" --allow-private-addresses) a key value
  [ -z "${DEFINITIONS:-}" ] || args+=(--definitions "$DEFINITIONS")
  for a in "${WORKER_ARGS[@]}"; do args+=("--worker-arg=$a"); done
  for a in "${PREPROCESSOR_ARGS[@]}"; do args+=("--preprocessor-arg=$a"); done
  for a in "${INGRESS_ARGS[@]}"; do args+=("--ingress-arg=$a"); done
  # It prints one line, `ready`, once every tier is; end of file if it failed.
  rm -f "$RESULTS/stack.ready" && mkfifo "$RESULTS/stack.ready"
  "${STACK:-$BIN/clothesline-stack}" "${args[@]}" >"$RESULTS/stack.ready" 2>>"$LOG_DIR/stack.log" &
  STACK_PID=$!
  read -r a <"$RESULTS/stack.ready" || a=failed
  rm -f "$RESULTS/stack.ready"
  if [ "$a" != ready ]; then
    log "the stack did not start; logs in $LOG_DIR"; tail -n 20 "$LOG_DIR"/*.log >&2; exit 1
  fi
  while IFS='=' read -r key value; do printf -v "$key" '%s' "$value"; done <"$RESULTS/stack.env"
  export NATS_URL
  log "stack ready"
}

stack_stop() {
  [ -n "$STACK_PID" ] || return 0
  kill -TERM "$STACK_PID" 2>/dev/null || true
  wait "$STACK_PID" 2>/dev/null || log "the stack did not stop cleanly; logs in $LOG_DIR"
  STACK_PID=
}

stop_all() {
  stack_stop
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

wait_http() { # url pid
  for _ in $(seq 1 900); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { log "the process behind $1 died; logs in $LOG_DIR"; exit 1; }
    sleep 0.2
  done
  log "$1 not ready after 180 s"; exit 1
}

tier_cpu() {
  for pid in "$NATS_PID" "$INGRESS_PID" "$PREPROCESSOR_PID" "$GPU_WORKER_PID"; do
    awk '{printf "%s ", ($14 + $15) / 100}' "/proc/$pid/stat"
  done
  echo
}

metric() { # port sample
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s {print $2; found=1} END {if (!found) print 0}'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
