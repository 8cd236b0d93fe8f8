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
python3 - "$SINK_PORT" >"$LOG_DIR/sink.log" 2>&1 <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
SINK_PID=$!

# round MODE I: a fresh stack with tracing MODE (off/on), one closed loop, its JSON kept.
round() {
  local mode=$1 i=$2
  if [ "$mode" = on ]; then
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_TRACES_SAMPLER=always_on
  else
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_TRACES_SAMPLER
  fi
  stack_start
  "$LOADTEST" run --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" --target predict \
    --concurrency "$CONCURRENCY" --duration "${STEP_SECS}s" --warmup "${WARMUP_SECS}s" --timeout 35s \
    --no-progress --label "tracing-$mode-$i" --json "$RESULTS/tracing-$mode-$i.json"
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
print()
print(f"Ratio on/off: {mean['on'] / mean['off']:.3f} (target: at least 0.97)")
PY
