#!/usr/bin/env bash
# The cost of tracing (issue #18): pipeline throughput on this machine with tracing off (no
# OTEL_EXPORTER_OTLP_ENDPOINT) and on at 100% sampling (every span of every request exported over
# OTLP/HTTP to a sink on 127.0.0.1), in one run, alternating off/on BENCH_ROUNDS times on a fresh
# stack each, each a closed loop of /predict with URLs. Prints the Markdown lines for
# BENCHMARKS.md (machine, each round's successful answers per second, the ratio on/off of their
# means). The target is a ratio of at least 0.97; run it on a quiet machine: on a shared one the
# noise is larger than the effect. The sink runs on the same machine (a collector would not):
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
cargo build --release --locked --workspace --bins

# The OTLP sink: answers every export with 200 and an empty (valid) protobuf response.
SINK_PORT=$(free_port)
"$BIN/clothesline-stack" sink --addr "127.0.0.1:$SINK_PORT" >"$LOG_DIR/sink.log" 2>&1 &
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

python3 - "$RESULTS" "$ROUNDS" <<'PY'
import json, subprocess, sys
results, rounds = sys.argv[1], int(sys.argv[2])
rps = {m: [json.load(open(f"{results}/tracing-{m}-{i}.json"))["ok_throughput_rps"] for i in range(1, rounds + 1)] for m in ("off", "on")}
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -n1"], capture_output=True, text=True).stdout.strip()
mean = {m: sum(v) / len(v) for m, v in rps.items()}
print(f"Tracing cost, scripts/bench_tracing.sh, {cpu}, {subprocess.getoutput('nproc')} cores, load average {open('/proc/loadavg').read().split()[0]} at the end:")
print()
print("| tracing | successful answers/s per round | mean |")
print("| --- | --- | --- |")
for m, label in (("off", "off (no endpoint)"), ("on", "on, 100% sampled, OTLP/HTTP")):
    print(f"| {label} | {', '.join(f'{r:.1f}' for r in rps[m])} | {mean[m]:.1f} |")
def cpu_ms(mode, i):
    v = [float(x) for x in open(f"{results}/cpu-{mode}-{i}.txt").read().split()]
    before, after = v[:6], v[6:]
    n = after[5] - before[5]
    return [(a - b) * 1000 / n for a, b in zip(after[:5], before[:5])]
cpu = {m: [cpu_ms(m, i) for i in range(1, rounds + 1)] for m in ("off", "on")}
print()
print("CPU ms per answer over each loop, mean of the rounds (the sink's counted apart: a collector would run elsewhere):")
print()
print("| tracing | nats-server | ingress | preprocessor | gpu-worker | tiers + nats | OTLP sink |")
print("| --- | --- | --- | --- | --- | --- | --- |")
tot = {}
for m in ("off", "on"):
    cols = [sum(r[k] for r in cpu[m]) / rounds for k in range(5)]
    tot[m] = sum(cols[:4])
    print(f"| {m} | " + " | ".join(f"{c:.2f}" for c in cols[:4]) + f" | {tot[m]:.2f} | {cols[4]:.2f} |")
print()
print(f"CPU per answer on/off (tiers + nats): {tot['on'] / tot['off']:.3f}; on a CPU-bound machine throughput "
      f"scales as its inverse: {tot['off'] / tot['on']:.3f}")
pairs = sorted(on / off for off, on in zip(rps["off"], rps["on"]))
median = pairs[len(pairs) // 2] if len(pairs) % 2 else (pairs[len(pairs) // 2 - 1] + pairs[len(pairs) // 2]) / 2
print()
print(f"Ratio on/off: {mean['on'] / mean['off']:.3f} of the means; per round (on / the off just before it), "
      f"sorted: {', '.join(f'{r:.3f}' for r in pairs)}, median {median:.3f} (target: at least 0.97)")
PY
