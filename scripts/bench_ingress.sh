#!/usr/bin/env bash
# The ingress under its own scenarios, on a local stack started here (scripts/lib/stack.sh):
#   1. capacity: what the stack serves, closed loop (the reference for "10x");
#   2. added latency: /predict over HTTP against a request to the NATS service subject, open loop
#      at a low rate, alternating rounds, so the two paths see the same machine;
#   3. overload: ten times the capacity, open loop, each caller asking a deadline; every request
#      must be answered within it (200, 429, 503 or 504), the ingress's memory is sampled, and
#      short runs at a low rate right after show how soon latency is normal again; once with
#      the default in-flight bound and once with one sized to the capacity;
#   4. cancellation: twice the capacity with callers that give up after a few seconds, with the
#      workers honouring cancellations and ignoring them (--honor-cancellations false): the work
#      each tier did for callers who were gone, counted from the tiers' metrics once drained.
# Writes the `ingress` section of BENCHMARKS.md (`clothesline-loadtest report ingress`, `section`).
#
# Environment: BENCH_IMAGES (../shared/datasets/clothing-dataset-small/validation), BENCH_KEEP
# (a folder for the raw results), DEVICE (cpu), BENCH_OVERLOAD_SECS (30), BENCH_LATENCY_ROUNDS (4).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

# shellcheck source=scripts/lib/stack.sh
source scripts/lib/stack.sh
bench_init bench-ingress
trap stop_all EXIT
OVERLOAD_SECS="${BENCH_OVERLOAD_SECS:-30}"
ROUNDS="${BENCH_LATENCY_ROUNDS:-4}"

{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')"
} >"$RESULTS/machine.txt"

log "building (release)"
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins

# run NAME ARGS...: one load test, its JSON in $RESULTS/NAME.json.
run() {
  local name=$1; shift
  log "  $name: $*"
  "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --nats-url "$NATS_URL" --images "$IMAGES" \
    --no-progress --label "$name" --json "$RESULTS/$name.json" "$@" >"$LOG_DIR/$name.txt"
  tail -n 6 "$LOG_DIR/$name.txt" >&2
}

# drained: until both work queues are empty (at most 3 minutes).
drained() { "$BIN/clothesline-stack" drained --nats-url "$NATS_URL" || log "the queues did not drain in 3 minutes"; }

# counters NAME: the tiers' work counters and CPU seconds, as KEY=VALUE lines in NAME.txt.
counters() {
  {
    echo "worker_items=$(metric "$GPU_WORKER_PORT" gpu_worker_items_total)"
    echo "worker_cancelled=$(metric "$GPU_WORKER_PORT" gpu_worker_cancelled_total)"
    echo "worker_expired=$(metric "$GPU_WORKER_PORT" gpu_worker_expired_total)"
    echo "pre_ok=$(metric "$PREPROCESSOR_PORT" 'preprocessor_requests_total{outcome="ok"}')"
    echo "pre_cancelled=$(metric "$PREPROCESSOR_PORT" 'preprocessor_requests_total{outcome="cancelled"}')"
    echo "pre_error=$(metric "$PREPROCESSOR_PORT" 'preprocessor_requests_total{outcome="error"}')"
    read -r nats ingress pre worker <<<"$(tier_cpu)"
    echo "cpu_nats=$nats"; echo "cpu_ingress=$ingress"; echo "cpu_pre=$pre"; echo "cpu_worker=$worker"
  } >"$RESULTS/$1.txt"
}

# sample_rss PID FILE: the process's resident KiB every 0.5 s until killed.
sample_rss() {
  while kill -0 "$1" 2>/dev/null; do rss_kib "$1" >>"$2"; sleep 0.5; done
}

# overload NAME: ten times the capacity, then recovery runs at 10/s.
overload() {
  local name=$1 rate
  rate=$(jq -n "10 * $CAPACITY | round")
  rss_kib "$INGRESS_PID" >"$RESULTS/$name-rss-before.txt"
  sample_rss "$INGRESS_PID" "$RESULTS/$name-rss.txt" &
  local sampler=$!
  run "$name" --target predict --rate "$rate" --duration "${OVERLOAD_SECS}s" --deadline 5s --timeout 15s
  for i in 1 2 3 4 5 6; do
    run "$name-recovery-$i" --target predict --rate 10 --duration 5s --deadline 5s --timeout 15s
  done
  kill "$sampler" 2>/dev/null || true
  drained
  rss_kib "$INGRESS_PID" >"$RESULTS/$name-rss-after.txt"
}

log "1/4 capacity and 2/4 added latency (default stack)"
stack_start
run capacity --target predict --concurrency 16 --duration 15s --warmup 3s
CAPACITY=$(jq .ok_throughput_rps "$RESULTS/capacity.json")
log "capacity: $CAPACITY answers/s"
for r in $(seq 1 "$ROUNDS"); do
  run "latency-http-$r" --target predict --rate 5 --duration 20s --warmup 2s
  run "latency-nats-$r" --target nats --rate 5 --duration 20s --warmup 2s
done

log "3/4 overload at ten times the capacity, default in-flight bound"
overload overload-default
stack_stop

log "3/4 overload again, in-flight bound sized to the capacity (3 s of work)"
INFLIGHT=$(jq -n "[8, (3 * $CAPACITY | round)] | max")
echo "$INFLIGHT" >"$RESULTS/inflight-sized.txt"
INGRESS_ARGS=(--max-inflight "$INFLIGHT")
stack_start
overload overload-sized
stack_stop
INGRESS_ARGS=()

for honor in true false; do
  log "4/4 callers giving up after 3 s at twice the capacity, --honor-cancellations $honor"
  WORKER_ARGS=(--honor-cancellations "$honor")
  PREPROCESSOR_ARGS=(--honor-cancellations "$honor")
  stack_start
  rate=$(jq -n "2 * $CAPACITY | round")
  run "cancel-$honor" --target predict --rate "$rate" --duration "${OVERLOAD_SECS}s" --timeout 3s
  drained
  counters "cancel-$honor"
  stack_stop
done

echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"
echo "duration_s=$SECONDS" >>"$RESULTS/machine.txt"
log "writing the ingress section of BENCHMARKS.md"
"$LOADTEST" report ingress "$RESULTS" --out "$RESULTS/section.md"
"$LOADTEST" section ingress "$RESULTS/section.md"
log "done in $SECONDS s; raw results in $RESULTS"
