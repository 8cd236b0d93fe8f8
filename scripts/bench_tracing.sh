#!/usr/bin/env bash
# The cost of tracing (issue #18): pipeline throughput on this machine with tracing off (no
# OTEL_EXPORTER_OTLP_ENDPOINT) and on at 100% sampling (every span of every request exported over
# OTLP/HTTP to a sink on 127.0.0.1), in one run, alternating off/on BENCH_ROUNDS times on a fresh
# stack each, each a closed loop of /predict with URLs. Prints the Markdown lines for
# BENCHMARKS.md (`clothesline-loadtest report tracing`: machine, each round's successful answers
# per second, CPU per answer by process, the ratio on/off of their means and per round). The
# target is a ratio of at least 0.97; run it on a quiet machine: on a shared one the noise is
# larger than the effect. The sink runs on the same machine (a collector would not):
# its CPU counts against the traced rounds, so the ratio errs on the side of cost.
#
# Environment: BENCH_ROUNDS (2), BENCH_STEP_SECS (30), BENCH_WARMUP_SECS (5), BENCH_CONCURRENCY
# (16), BENCH_IMAGES, BENCH_KEEP (see scripts/lib/stack.sh), DEVICE (cpu).
# On a machine that is not quiet, run more, shorter rounds (e.g. BENCH_ROUNDS=6 BENCH_STEP_SECS=20)
# under `nice -n -15` with `kernel.sched_autogroup_enabled=0` (else nice only ranks processes within
# one session): each round's ratio compares two neighbouring windows, and their median resists a
# burst of other work that the mean of all rounds does not.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# shellcheck source=scripts/lib/stack.sh
source scripts/lib/stack.sh
bench_init tracing
SINK_PID=
trap 'stop_all; [ -z "$SINK_PID" ] || kill "$SINK_PID" 2>/dev/null || true' EXIT
ROUNDS="${BENCH_ROUNDS:-2}"
STEP_SECS="${BENCH_STEP_SECS:-30}"
WARMUP_SECS="${BENCH_WARMUP_SECS:-5}"
CONCURRENCY="${BENCH_CONCURRENCY:-16}"

log "building (release)"
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins

# The OTLP sink: the load generator's noop server, which answers every protobuf export with 200
# and an empty (valid) protobuf response.
SINK_PORT=$(free_port)
"$LOADTEST" serve-noop --addr "127.0.0.1:$SINK_PORT" >"$LOG_DIR/sink.log" 2>&1 &
SINK_PID=$!

proc_cpu() { awk '{printf "%s", ($14 + $15) / 100}' "/proc/$1/stat"; }
answers() { curl -fsS "http://127.0.0.1:$INGRESS_PORT/metrics" | awk '/^ingress_requests_total[{]/ {s += $NF} END {print s + 0}'; }

# round MODE I: a fresh stack with tracing MODE (off/on), one closed loop, its JSON kept.
round() {
  local mode=$1 i=$2
  if [ "$mode" = on ]; then
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_TRACES_SAMPLER=always_on
  else
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_TRACES_SAMPLER
  fi
  stack_start
  local cpu_before answers_before
  cpu_before="$(tier_cpu) $(proc_cpu "$SINK_PID")" answers_before=$(answers)
  "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" --target predict \
    --concurrency "$CONCURRENCY" --duration "${STEP_SECS}s" --warmup "${WARMUP_SECS}s" --timeout 35s \
    --no-progress --label "tracing-$mode-$i" --json "$RESULTS/tracing-$mode-$i.json"
  # CPU seconds of nats, ingress, preprocessor, gpu-worker and the sink, and the answers, over the
  # whole loop (warm-up included): CPU per answer barely moves with other work on the machine.
  echo "$cpu_before $answers_before $(tier_cpu) $(proc_cpu "$SINK_PID") $(answers)" >"$RESULTS/cpu-$mode-$i.txt"
  stack_stop
}

for i in $(seq 1 "$ROUNDS"); do
  round off "$i"
  round on "$i"
done
kill "$SINK_PID" 2>/dev/null || true

{
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
  echo "nproc=$(nproc)"
  echo "loadavg_end=$(cut -d' ' -f1 /proc/loadavg)"
} >"$RESULTS/machine.txt"
"$LOADTEST" report tracing "$RESULTS"
