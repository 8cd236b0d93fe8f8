#!/usr/bin/env bash
# Chaos run: a steady open-loop load through the ingress (URLs of the validation images, served by
# the load generator) while, one after the other, the preprocessor, the gpu-worker and
# nats-server are SIGKILLed and started again. Every request must come back answered, a result or
# an explicit error, within its deadline; none may be lost. Afterwards both work queues must be
# empty. Writes the `chaos` section of RELIABILITY.md.
#
# The consumers' ack wait is cut to 5 s (30 s as shipped), so what a killed tier held comes back
# soon; everything else is as shipped. Environment: BENCH_IMAGES
# (../shared/datasets/clothing-dataset-small/validation), CHAOS_RATE (15 requests/s),
# BENCH_KEEP (a folder for the raw results), DEVICE (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

# shellcheck source=scripts/lib/stack.sh
source scripts/lib/stack.sh
bench_init chaos
trap stop_all EXIT
RATE="${CHAOS_RATE:-15}"

log "building (release)"
cargo build --release --locked --workspace --bins

DEFINITIONS="$RESULTS/jetstream"
mkdir -p "$DEFINITIONS"
python3 - "$DEFINITIONS" <<'EOF'
import glob, json, os, sys
for path in glob.glob("nats/jetstream/*.json"):
    d = json.load(open(path))
    if "ack_wait" in d:
        d["ack_wait"] = 5_000_000_000
    json.dump(d, open(os.path.join(sys.argv[1], os.path.basename(path)), "w"), indent=2)
EOF
stack_start

at() { # SECONDS-SINCE-LOAD-START MESSAGE: sleep until then
  local wait=$(($1 - (SECONDS - LOAD_STARTED)))
  [ "$wait" -le 0 ] || sleep "$wait"
  log "$2"
  echo "$((SECONDS - LOAD_STARTED)) $2" >>"$RESULTS/events.txt"
}

log "load: $RATE requests/s for 80 s"
LOAD_STARTED=$SECONDS
"$LOADTEST" run --target predict --ingress "http://127.0.0.1:$INGRESS_PORT" --images "$IMAGES" \
  --rate "$RATE" --duration 80s --timeout 45s --no-progress --label chaos \
  --json "$RESULTS/chaos.json" >"$LOG_DIR/loadtest.txt" 2>&1 &
LOAD_PID=$!

at 15 "SIGKILL preprocessor"; crash "$PREPROCESSOR_PID"
at 18 "start preprocessor"; start_preprocessor
at 35 "SIGKILL gpu-worker"; crash "$WORKER_PID"
at 38 "start gpu-worker"; start_worker
at 55 "SIGKILL nats-server"; crash "$NATS_PID"
at 58 "start nats-server (same store and port)"; start_nats
wait "$LOAD_PID"
cat "$LOG_DIR/loadtest.txt" >&2

log "waiting for both work queues to drain"
for _ in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:$NATS_MONITOR_PORT/jsz?streams=true&consumers=true" >"$RESULTS/jsz.json" \
    && python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
streams = [s for a in d.get("account_details", []) for s in a.get("stream_detail", [])]
ok = streams and all(s["state"]["messages"] == 0 and all(c["num_ack_pending"] == 0 for c in s.get("consumer_detail", [])) for s in streams)
sys.exit(0 if ok else 1)' "$RESULTS/jsz.json"; then
    break
  fi
  sleep 0.5
done
echo "unmatched_replies=$(metric "$INGRESS_PORT" ingress_unmatched_replies_total)" >"$RESULTS/ingress.txt"
echo "cancelled_pre=$(metric "$PREPROCESSOR_PORT" 'preprocessor_requests_total{outcome="cancelled"}')" >>"$RESULTS/ingress.txt"
echo "date=$(date -u +%Y-%m-%dT%H:%MZ) nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" \
  >"$RESULTS/machine.txt"
stack_stop

python3 - "$RESULTS" >"$RESULTS/section.md" <<'EOF'
import json, os, sys
r = sys.argv[1]
run = json.load(open(os.path.join(r, "chaos.json")))
jsz = json.load(open(os.path.join(r, "jsz.json")))
ingress = dict(l.strip().split("=", 1) for l in open(os.path.join(r, "ingress.txt")) if "=" in l)
machine = open(os.path.join(r, "machine.txt")).read().strip()
events = [l.strip().split(" ", 1) for l in open(os.path.join(r, "events.txt"))]
answered = sum(v for k, v in run["statuses"].items() if k.isdigit())
unanswered = run["completed"] - answered
streams = [s for a in jsz.get("account_details", []) for s in a.get("stream_detail", [])]
left = sum(s["state"]["messages"] for s in streams)
lat = run["latency_ms"]
print("## Chaos run (`scripts/chaos.sh`)\n")
print(f"{machine}; all processes on this machine; ack wait cut to 5 s. Open loop at "
      f"{run['rate']:.0f} requests/s for {run['window_s']:.0f} s through `/predict` (URLs), while:\n")
for t, what in events:
    print(f"- at {t} s: {what}")
print()
print("| sent | answered | by status | error codes | lost (no answer) | duplicate replies at the ingress | left in the streams | max latency |")
print("|---:|---:|---|---|---:|---:|---:|---:|")
codes = ", ".join(f"{k}: {v}" for k, v in sorted(run["error_codes"].items())) or "none"
statuses = ", ".join(f"{k}: {v}" for k, v in sorted(run["statuses"].items()))
print(f"| {run['completed']} | {answered} | {statuses} | {codes} | **{unanswered}** | "
      f"{float(ingress['unmatched_replies']):.0f} | {left} | {lat['max'] / 1000:.1f} s |")
print()
print("*Duplicate replies at the ingress* counts replies that found no waiting caller "
      "(`ingress_unmatched_replies_total`): a second answer to the same request, or a late one "
      "for a caller already answered 504; an HTTP caller never sees either, it gets exactly one "
      "response.")
EOF
cat "$RESULTS/section.md"
python3 scripts/bench_section.py chaos "$RESULTS/section.md" RELIABILITY.md
log "done in $SECONDS s; raw results in $RESULTS"
