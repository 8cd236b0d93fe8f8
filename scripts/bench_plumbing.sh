#!/usr/bin/env bash
# The pipeline's own cost, with the model taken out (issue #15), and the pipeline against a
# one-process Flask monolith, in one run on this machine:
#   1. the null model (scripts/null_model.py: the shipped model's contract, classes and input,
#      almost no compute) on a local stack (scripts/lib/stack.sh); closed loops of `/predict`
#      with URLs and of `/v1/classify` with uploads: images/s, and the CPU each process
#      (nats-server, ingress, preprocessor, gpu-worker) spent per answer, from /proc/PID/stat
#      (utime + stime) before and after the run, beside the preprocessor's own decode + resize
#      time per image (its /metrics histograms) over the same run;
#   2. `perf` top frames of the preprocessor and of nats-server under that load (URLs), written to
#      benchmarks/plumbing/ (a run of its own, so perf's cost is not in the figures of 1);
#   3. where the time of one request goes at concurrency 1 (`clothesline-loadtest run --timings`:
#      the medians of each tier's `timings`, the rest is the ingress, the NATS hops and HTTP);
#   4. the shipped model: the pipeline (and the pipeline with `--dispatch-when-idle false`, the
#      batcher as it was) against the monolith (scripts/monolith: Flask + gunicorn, PIL, the same
#      TorchScript in process; Flask and gunicorn from PyPI into a venv of its own beside the
#      torch venv), `/predict` with URLs at concurrency 1 (p50) and 16 (throughput, p99);
# then writes the `plumbing` section of BENCHMARKS.md (`clothesline-loadtest report plumbing`).
#
# Every measured process runs at nice -10 when this runs as root (the machine is shared).
# Environment: BENCH_IMAGES (the validation split of CLOTHESLINE_DATASET, else of ../shared/...), BENCH_STEP_SECS (20), BENCH_WARMUP_SECS (3),
# BENCH_CONCURRENCY (32: the null-model loops), BENCH_HOPS (200 requests), BENCH_BIN_BEFORE (a
# folder of older release binaries: step 1 then runs them too, alternating, "before" and "after"
# in one run; its one try so far stopped on its second fresh stack with "a process died", perhaps
# a port handed out twice, which the stack launcher no longer does), BENCH_SKIP_MODEL (1: skip step 4), BENCH_KEEP (a folder for the raw results),
# BENCH_BIN (binaries to use instead of building target/release; e.g. a dry run on debug ones).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh >/dev/null

# shellcheck source=scripts/lib/stack.sh
source scripts/lib/stack.sh
bench_init plumbing
STEP_SECS="${BENCH_STEP_SECS:-20}"
WARMUP_SECS="${BENCH_WARMUP_SECS:-3}"
CONCURRENCY="${BENCH_CONCURRENCY:-32}"
HOPS="${BENCH_HOPS:-200}"
BIN="${BENCH_BIN:-$BIN}"
if [ -z "${BENCH_IMAGES:-}" ] && [ -n "${CLOTHESLINE_DATASET:-}" ]; then
  IMAGES="$CLOTHESLINE_DATASET/validation"
fi
IMAGES=$(realpath "$IMAGES")
LOADTEST="$BIN/clothesline-loadtest"
PY="$TORCH_VENV/bin/python"
AFTER_BIN="$BIN"
STACK="$AFTER_BIN/clothesline-stack" # the launcher of this tree, whichever binaries it starts
OUT=benchmarks/plumbing
mkdir -p "$OUT"
MONOLITH_PID=""
cleanup() {
  stop_all
  [ -z "$MONOLITH_PID" ] || kill -TERM "$MONOLITH_PID" 2>/dev/null || true
}
trap cleanup EXIT

# The measured processes get nice -10 when we may give it (root); a no-op otherwise.
boost() { [ "$(id -u)" = 0 ] && renice -n -10 -p "$@" >/dev/null 2>&1 || true; }

{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')"
  echo "nats=$("$(command -v nats-server)" --version)"
  echo "before_bin=${BENCH_BIN_BEFORE:-}"
} >"$RESULTS/machine.txt"

if [ -z "${BENCH_BIN:-}" ]; then
  log "building (release)"
  cargo build --release --locked --workspace --bins
fi

log "null model"
NULL_DIR="$RESULTS/null-model"
"$PY" scripts/null_model.py "$NULL_DIR" >/dev/null

# metric_pair PORT NAME: a histogram's _sum and _count on a tier's /metrics.
metric_pair() { echo "$(metric "$1" "$2_sum") $(metric "$1" "$2_count")"; }

# stack_with MANIFEST BIN_DIR: a fresh stack serving MANIFEST's model from BIN_DIR's binaries.
stack_with() {
  export MODEL_MANIFEST="$1"
  BIN="$2"
  stack_start
  boost "$NATS_PID" "$INGRESS_PID" "$PREPROCESSOR_PID" "$GPU_WORKER_PID"
}

# cpu_state WHEN: the processes' CPU seconds so far (the stack's four, or the monolith's processes
# together) and the preprocessor's decode and resize sums and counts.
cpu_state() {
  if [ -n "$MONOLITH_PID" ]; then
    local total=0 pid
    for pid in $MONOLITH_PID $(pgrep -P "$MONOLITH_PID"); do
      total=$(awk -v t="$total" '{print t + ($14 + $15) / 100}' "/proc/$pid/stat")
    done
    echo "$1 $total"
    return
  fi
  echo "$1 $(tier_cpu)"
  echo "decode_$1 $(metric_pair "$PREPROCESSOR_PORT" preprocessor_decode_seconds)"
  echo "resize_$1 $(metric_pair "$PREPROCESSOR_PORT" preprocessor_resize_seconds)"
}

# cpu_run NAME LOADTEST_ARGS...: one loadtest run against $INGRESS_PORT; `cpu_state` before and
# after it goes to $RESULTS/NAME.cpu.
cpu_run() {
  local name=$1; shift
  cpu_state before >"$RESULTS/$name.cpu"
  nice -n -10 "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" \
    --warmup 0s --duration "${STEP_SECS}s" --no-progress --label "$name" \
    --json "$RESULTS/$name.json" "$@" >"$LOG_DIR/$name.txt" 2>&1
  cpu_state after >>"$RESULTS/$name.cpu"
  local j="$RESULTS/$name.json"
  log "$name: $(jq -r '"\(.ok_throughput_rps * 10 | round / 10) ok/s, p50 \(.latency_ms.p50) ms, errors \(.errors)"' "$j")"
}

# null_round TAG BIN_DIR: step 1 (and 2, 3 for the binaries of this tree) on a fresh stack.
null_round() {
  local tag=$1 bin=$2
  stack_with "$NULL_DIR/manifest.json" "$bin"
  nice -n -10 "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" \
    --concurrency "$CONCURRENCY" --duration "${WARMUP_SECS}s" --no-progress >/dev/null 2>&1
  cpu_run "null-$tag-url" --target predict --concurrency "$CONCURRENCY"
  cpu_run "null-$tag-upload" --target classify --upload --concurrency "$CONCURRENCY"
  if [ "$tag" = after ]; then
    profile
    hops "null"
  fi
  stack_stop
}

# perf_top DATA SORT LIMIT: perf report's flat profile as compact text.
perf_top() {
  perf report -i "$1" --stdio --no-children --sort "$2" --percent-limit "$3" -g none 2>/dev/null \
    | grep -v -e '^$' -e '^# *$' -e '^# \.' -e 'header-only' -e 'Tip:' -e 'Event count' -e 'Lost Samples' \
    | sed -e 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//' -e 's/[[:space:]]*IPC[[:space:]]*\[IPC Coverage\][[:space:]]*$//' \
    | cut -c1-150
}

# profile: perf's top frames of the preprocessor and nats-server under the URL load.
profile() {
  if ! command -v perf >/dev/null; then
    log "perf not installed (apt-get install linux-perf): no profiles"
    return
  fi
  local secs=$((STEP_SECS / 2))
  nice -n -10 "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" \
    --concurrency "$CONCURRENCY" --duration "$((secs + 4))s" --no-progress >/dev/null 2>&1 &
  local load=$!
  sleep 2 # the load reaches its steady state before the profiles start
  perf record -F 999 -g -o "$RESULTS/perf-preprocessor.data" -p "$PREPROCESSOR_PID" -- sleep "$secs" \
    >/dev/null 2>&1 &
  local p1=$!
  perf record -F 999 -g -o "$RESULTS/perf-nats.data" -p "$NATS_PID" -- sleep "$secs" >/dev/null 2>&1
  wait "$p1" || true
  wait "$load" || true
  for who in preprocessor nats; do
    {
      echo "# perf top frames: $who under the null-model URL load, $CONCURRENCY in flight"
      echo "# $(sed -n 's/^cpu=//p' "$RESULTS/machine.txt"), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
      echo "# perf record -F 999 -g -p PID for ${secs} s; perf report --no-children, by object, then by symbol"
      perf_top "$RESULTS/perf-$who.data" dso 0.5
      echo
      perf_top "$RESULTS/perf-$who.data" dso,symbol 0.7 | head -n 45
    } >"$OUT/perf-$who.txt"
  done
  log "profiles in $OUT/"
}

# hops TAG: where the time of one request goes, at concurrency 1 (`POST /v1/classify` with URLs;
# the medians of the answers' `timings` in hops-TAG.json).
hops() {
  nice -n -10 "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" \
    --target classify --concurrency 1 --requests "$HOPS" --timings --no-progress --label "hops-$1" \
    --json "$RESULTS/hops-$1.json" >"$LOG_DIR/hops-$1.txt" 2>&1
}

# latency_runs TAG: `/predict` with URLs at concurrency 1, then 16, against $INGRESS_PORT.
latency_runs() {
  cpu_run "model-$1-c1" --target predict --concurrency 1
  cpu_run "model-$1-c16" --target predict --concurrency 16
}

start_monolith() {
  local venv="$HOME/.cache/clothesline/venv-monolith"
  if [ ! -x "$venv/bin/gunicorn" ] || ! cmp -s scripts/monolith/requirements.txt "$venv/requirements.txt"; then
    log "installing the monolith's Flask and gunicorn into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r scripts/monolith/requirements.txt
    cp scripts/monolith/requirements.txt "$venv/requirements.txt"
  fi
  # torch, numpy, Pillow and requests: the torch venv's (one copy of torch on the machine).
  local site
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    | xargs -I{} sh -c "echo '$site' >'{}/torch-venv.pth'"
  MONOLITH_PORT=$(free_port)
  # One worker process per core, two threads each (torch and PIL release the GIL).
  MODEL_MANIFEST="$PWD/model/manifest.json" nice -n -10 "$venv/bin/gunicorn" \
    --chdir scripts/monolith -w "$(nproc)" --threads 2 -b "127.0.0.1:$MONOLITH_PORT" \
    --log-level warning app:app >"$LOG_DIR/monolith.log" 2>&1 &
  MONOLITH_PID=$!
  wait_http "http://127.0.0.1:$MONOLITH_PORT/healthz" "$MONOLITH_PID"
}

# --- step 1-3: the null model -------------------------------------------------------------------
if [ -n "${BENCH_BIN_BEFORE:-}" ]; then
  for round in 1 2; do
    log "null model, round $round: before ($BENCH_BIN_BEFORE), then after"
    null_round "before$round" "$BENCH_BIN_BEFORE"
    if [ "$round" = 2 ]; then null_round after "$AFTER_BIN"; else null_round "after$round" "$AFTER_BIN"; fi
  done
else
  log "null model"
  null_round after "$AFTER_BIN"
fi

# --- step 4: the shipped model, pipeline against the monolith ------------------------------------
if [ "${BENCH_SKIP_MODEL:-0}" != 1 ]; then
  log "shipped model: the pipeline"
  stack_with "$PWD/model/manifest.json" "$AFTER_BIN"
  latency_runs pipeline
  hops model
  stack_stop
  log "shipped model: the pipeline, batcher always waiting (--dispatch-when-idle false)"
  WORKER_ARGS=(--dispatch-when-idle false)
  stack_with "$PWD/model/manifest.json" "$AFTER_BIN"
  cpu_run "model-waiting-c1" --target predict --concurrency 1
  stack_stop
  WORKER_ARGS=()
  log "shipped model: the Flask monolith"
  start_monolith
  INGRESS_PORT=$MONOLITH_PORT
  latency_runs monolith
  kill -TERM "$MONOLITH_PID"; wait "$MONOLITH_PID" 2>/dev/null || true; MONOLITH_PID=""
fi

echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"
echo "secs=$SECONDS" >>"$RESULTS/machine.txt"
"$LOADTEST" report plumbing "$RESULTS" --out "$RESULTS/section.md"
cat "$RESULTS/section.md"
"$LOADTEST" section plumbing "$RESULTS/section.md"
log "done in ${SECONDS}s; raw results in $RESULTS"
