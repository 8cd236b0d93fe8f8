#!/usr/bin/env bash
# The pipeline's figures, side by side, in one run on this machine:
#   1. the in-process model ceiling (gpu-worker's model_bench, images/s at batch sizes 1-8),
#      before and after the pipeline runs (the ratio uses their mean: the machine is shared);
#   2. the preprocessing ceiling per core (preprocessor's preprocess_bench, when it exists);
#   3. the load generator's own CPU at 1000 req/s against its noop server;
#   4. the pipeline end to end over HTTP (/predict with URLs, open loop at increasing rates until
#      saturation, then closed loop; /v1/classify with uploads, closed loop) and over NATS
#      (the ingress's service subject, when it answers), on a local stack started here on its own
#      ports with the images served by the load generator on 127.0.0.1;
# then writes the `pipeline` section of BENCHMARKS.md (tables, machine, load average, the ratio
# pipeline throughput at saturation / in-process ceiling) and benchmarks/pipeline.svg, with
# `clothesline-loadtest report pipeline` and `section`.
#
# Environment: BENCH_IMAGES (../shared/datasets/clothing-dataset-small/validation),
# BENCH_RATES ("10 20 30 40 50 60 80"), BENCH_STEP_SECS (12), BENCH_WARMUP_SECS (3),
# BENCH_CONCURRENCY (16), BENCH_NATS (1: 0 skips NATS), BENCH_KEEP (a folder for the raw results;
# default a temp folder), DEVICE (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

# shellcheck source=scripts/lib/stack.sh
source scripts/lib/stack.sh
bench_init bench
trap stop_all EXIT
RATES="${BENCH_RATES:-10 20 30 40 50 60 80}"
STEP_SECS="${BENCH_STEP_SECS:-12}"
WARMUP_SECS="${BENCH_WARMUP_SECS:-3}"
CONCURRENCY="${BENCH_CONCURRENCY:-16}"
DEVICE="${DEVICE:-cpu}"
mkdir -p benchmarks

started=$(date +%s)
{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
  echo "mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')"
  echo "device=$DEVICE"
} >"$RESULTS/machine.txt"

log "building (release)"
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins

# model_bench OUT: the model's images/s in process at the batch sizes the CPU worker uses (max 4)
# and one above; plain flags if the example no longer takes these.
model_bench() {
  cargo run --release --locked -q -p clothesline-gpu-worker --example model_bench -- --device "$DEVICE" \
    --batch-sizes 1,2,4,8 --runs 10 >"$1" 2>"$1.err" \
    || cargo run --release --locked -q -p clothesline-gpu-worker --example model_bench -- --device "$DEVICE" >"$1"
  cat "$1"
}

log "1/4 in-process model ceiling (gpu-worker model_bench; again after the pipeline runs)"
model_bench "$RESULTS/model_bench.txt"

log "2/4 preprocessing ceiling (preprocessor preprocess_bench)"
if [ -f preprocessor/examples/preprocess_bench.rs ]; then
  # --no-write: its own section of BENCHMARKS.md is its own run's to write.
  { cargo run --release --locked -q -p clothesline-preprocessor --example preprocess_bench -- --rounds 3 --no-write \
      || cargo run --release --locked -q -p clothesline-preprocessor --example preprocess_bench; } \
    >"$RESULTS/preprocess_bench.txt" 2>"$LOG_DIR/preprocess_bench.err" \
    || echo "preprocess_bench failed; see $LOG_DIR/preprocess_bench.err" >"$RESULTS/preprocess_bench.txt"
  cat "$RESULTS/preprocess_bench.txt"
else
  echo "skipped: preprocessor/examples/preprocess_bench.rs does not exist yet" | tee "$RESULTS/preprocess_bench.txt"
fi

log "3/4 load generator CPU at 1000 req/s against its noop server"
NOOP_PORT=$(free_port)
"$LOADTEST" serve-noop --addr "127.0.0.1:$NOOP_PORT" >"$LOG_DIR/noop.log" 2>&1 &
pids+=($!)
# The default (a 5 ms tick at this rate), then a wake-up for each request (--tick 1ms).
for tick in default 1ms; do
  tick_flag=(); [ "$tick" = default ] || tick_flag=(--tick "$tick")
  "$LOADTEST" run --target predict --ingress "http://127.0.0.1:$NOOP_PORT" --images "$IMAGES" \
    --rate 1000 --duration 10s --warmup 1s "${tick_flag[@]}" --no-progress --label "noop-1000-tick-$tick" \
    --json "$RESULTS/noop-tick-$tick.json"
done
stop_all

log "4/4 the pipeline end to end: starting the stack on its own ports"
stack_start

# run NAME ARGS...: one load test, its JSON in $RESULTS/NAME.json.
run() {
  local name=$1; shift
  log "  $name: $*"
  "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --nats-url "$NATS_URL" --images "$IMAGES" \
    --warmup "${WARMUP_SECS}s" --timeout 35s --label "$name" --json "$RESULTS/$name.json" "$@"
}

# sweep PREFIX ARGS...: open loop at each rate until two steps in a row are saturated (fewer
# successful answers per second than 90% of the offered rate, or over 1% errors).
sweep() {
  local prefix=$1; shift
  local saturated=0
  for rate in $RATES; do
    run "$prefix-open-$rate" "$@" --rate "$rate" --duration "${STEP_SECS}s"
    if jq -e '.ok_throughput_rps < 0.9 * .rate or .errors > 0.01 * ([.completed, 1] | max)' \
      "$RESULTS/$prefix-open-$rate.json" >/dev/null; then
      saturated=$((saturated + 1))
      [ "$saturated" -ge 2 ] && break
    else
      saturated=0
    fi
  done
}

log "HTTP /predict (URLs), open loop"
sweep http-predict --target predict
log "HTTP /predict (URLs), closed loop"
before=$(tier_cpu)
run http-predict-closed --target predict --concurrency "$CONCURRENCY" --duration "${STEP_SECS}s"
after=$(tier_cpu)
echo "nats ingress preprocessor gpu-worker" >"$RESULTS/tier_cpu.txt"
echo "$before" >>"$RESULTS/tier_cpu.txt"
echo "$after" >>"$RESULTS/tier_cpu.txt"
log "HTTP /v1/classify (uploads), closed loop"
run http-classify-upload-closed --target classify --upload --concurrency "$CONCURRENCY" --duration "${STEP_SECS}s"

if [ "${BENCH_NATS:-1}" = 1 ]; then
  log "NATS service subject: probing"
  "$LOADTEST" run --target nats --nats-url "$NATS_URL" --images "$IMAGES" --requests 1 --timeout 10s \
    --no-progress --json "$RESULTS/nats-probe.json" >/dev/null || true
  if [ -f "$RESULTS/nats-probe.json" ] && [ "$(jq .ok "$RESULTS/nats-probe.json")" = 1 ]; then
    log "NATS (URLs), open loop"
    sweep nats --target nats
    log "NATS (URLs), closed loop"
    run nats-closed --target nats --concurrency "$CONCURRENCY" --duration "${STEP_SECS}s"
  else
    log "the ingress does not answer on the NATS service subject; skipping NATS"
  fi
fi

stack_stop
log "in-process model ceiling again, to bracket the pipeline runs"
model_bench "$RESULTS/model_bench_after.txt"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"
echo "duration_s=$(($(date +%s) - started))" >>"$RESULTS/machine.txt"

log "writing benchmarks/pipeline.svg and the pipeline section of BENCHMARKS.md"
"$LOADTEST" report pipeline "$RESULTS" --chart benchmarks/pipeline.svg --out "$RESULTS/section.md"
"$LOADTEST" section pipeline "$RESULTS/section.md"
log "done in $(($(date +%s) - started)) s; raw results in $RESULTS"
