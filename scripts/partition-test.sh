#!/usr/bin/env bash
# A network partition of the 3-server NATS cluster (compose.yml + compose.cluster.yml), on the
# engine's private network, under load:
#   1. brings the stack up with the cluster (R3 streams, every tier given all three servers)
#   2. sends HTTP uploads at LOAD_RATE/s; once answers flow, cuts one server off the network
#      (`docker network disconnect`: a partition, not a kill): by default the leader of the
#      requests stream (VICTIM=leader), the server the ingress is connected to (VICTIM=ingress),
#      or the named service (nats, nats-2, nats-3)
#   3. keeps it cut off for HOLD_SECS (the length of the fault), then reconnects it (same DNS
#      alias)
#   4. checks: every request answered 200 within its deadline (lost 0, non-200 0), no duplicate
#      replies (the ingress's ingress_unmatched_replies_total did not move), and, once the server
#      is back, the streams are whole: all three servers report the same stream state (messages,
#      first and last sequence) and every replica is current
#   5. stops the stack: every container exits 0 or 143
# The images must exist (scripts/compose-test.sh builds them). Prints the figures RELIABILITY.md
# quotes. Environment: VICTIM (leader), LOAD_RATE (5), LOAD_SECS (60), HOLD_SECS (30),
# HOST_PROFILE (release), KEEP_UP, INGRESS_PORT, NATS_PORT, NATS_MONITOR_PORT (0: free ones),
# CLOTHESLINE_DATASET.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh
COMPOSE_FILES=compose.cluster.yml

HOST_PROFILE="${HOST_PROFILE:-release}"
profile_dir="$HOST_PROFILE"
[ "$HOST_PROFILE" = dev ] && profile_dir=debug
LOADTEST="${LOADTEST:-target/$profile_dir/clothesline-loadtest}"
LOAD_RATE="${LOAD_RATE:-5}"
LOAD_SECS="${LOAD_SECS:-60}"
HOLD_SECS="${HOLD_SECS:-30}"
VICTIM="${VICTIM:-leader}"
export TAG=dev NATS_IMAGE=clothesline-base/nats:2.12.8 ALLOW_PRIVATE_ADDRESSES=true
# Port 0: Docker picks free host ports (other tests run on this machine); read back after up.
export INGRESS_PORT="${INGRESS_PORT:-0}" NATS_PORT="${NATS_PORT:-0}" NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-0}"
NETWORK="${PROJECT}_default"
WORK="$(mktemp -d -t clothesline-partition.XXXXXX)"

cleanup() {
  if [ -z "${KEEP_UP:-}" ]; then compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The JetStream report of one server (service name), read inside its container.
jsz() { docker exec "$(containers "$1")" wget -q -O - "http://127.0.0.1:8222/jsz?streams=true&consumers=true"; }
metric_sum() { # sum of a metric's samples on the ingress
  curl -fsS "$API/metrics" | awk -v m="$1" 'index($0, m) == 1 && $0 !~ /^#/ {s += $NF} END {print s + 0}'
}
ok_so_far() { curl -fsS "$API/metrics" | awk '/^ingress_requests_total\{.*status="200"/ {s += $2} END {print s + 0}'; }
answered_200() { [ "$(ok_so_far)" -ge "$1" ]; }
# server name (nats-1..3) -> compose service
service_of() { if [ "$1" = nats-1 ]; then echo nats; else echo "$1"; fi; }

# Every server's JetStream report in $WORK/jsz-<service>.json.
jsz_all() { local svc; for svc in nats nats-2 nats-3; do jsz "$svc" >"$WORK/jsz-$svc.json" || return 1; done; }
# The streams are whole: the three servers report the same state of every stream (messages, first
# and last sequence), and each stream's leader (the only one that tracks its followers) sees both
# replicas current. Prints the states.
streams_whole() {
  jsz_all || return 1
  # The states of the first server on one line, then whether the streams are whole.
  local out
  out="$(jq -rs '
    def streams: [.account_details[]?.stream_detail[]?];
    def view: [streams[] | [.name, .state.messages, .state.first_seq, .state.last_seq]] | sort;
    # Where this server leads a stream (it is not among the replicas): both replicas current.
    ([.[] | streams[] | .cluster.leader as $l | .cluster.replicas as $r
      | select($l != null and ([$r[]?.name] | index($l) | not))
      | {key: .name, value: (($r | length) == 2 and all($r[]; .current == true))}]
     | from_entries) as $current
    | map(view) as $v
    | ($v[0] | map("\(.[0]): \(.[1]) messages, seq \(.[2])..\(.[3])") | join("; ")),
      ($v[0] != [] and $v[0] == $v[1] and $v[1] == $v[2]
       and ($v[0] | map(.[0]) | unique) == ($current | keys) and ($current | all))
  ' "$WORK"/jsz-nats.json "$WORK"/jsz-nats-2.json "$WORK"/jsz-nats-3.json)" || return 1
  echo "${out%$'\n'*}"
  [ "${out##*$'\n'}" = true ]
}
# The service whose server holds the ingress's connection (its name starts clothesline-ingress).
ingress_server() {
  local svc
  for svc in nats nats-2 nats-3; do
    docker exec "$(containers "$svc")" wget -q -O - "http://127.0.0.1:8222/connz?limit=1024" \
      | jq -e '[.connections[]? | select(.name // "" | startswith("clothesline-ingress"))] | length > 0' >/dev/null \
      && { echo "$svc"; return 0; }
  done
  return 1
}
stream_leader() {
  jsz nats | jq -er --arg s "$1" '[.account_details[].stream_detail[] | select(.name == $s) | .cluster.leader][0]'
}

dataset_sample "$WORK/images" 2
clog "compose up with the 3-server cluster (${COMPOSE[*]})"
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d --no-build
wait_until 300 "every tier healthy" healthy ingress
API="http://$(published ingress 8080)"
wait_until 60 "R3 streams with current replicas" streams_whole
leader="$(stream_leader CLOTHESLINE_REQUESTS)"
victim="$VICTIM"
[ "$victim" = leader ] && victim="$(service_of "$leader")"
[ "$victim" = ingress ] && victim="$(ingress_server)"
victim_id="$(containers "$victim")"
clog "CLOTHESLINE_REQUESTS leader: $leader; the ingress's server: $(ingress_server || echo unknown); cutting off: $victim"

unmatched_before="$(metric_sum ingress_unmatched_replies_total)"
expected=$((LOAD_RATE * LOAD_SECS))
clog "load: $expected uploads at $LOAD_RATE/s (deadline 60 s)"
"$LOADTEST" run --target classify --upload --ingress "$API" --images "$WORK/images" --rate "$LOAD_RATE" \
  --requests "$expected" --deadline 60s --timeout 70s --json "$WORK/load.json" >"$WORK/load.txt" 2>&1 &
load=$!
wait_until 60 "answers under load" answered_200 $(($(ok_so_far) + 15))
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$victim_id"; }
ip_before="$(ip_of)"
docker network disconnect "$NETWORK" "$victim_id"
cut_at=$SECONDS
ok_at_cut="$(ok_so_far)"
clog "partitioned $victim for ${HOLD_SECS}s"
# The fault lasts HOLD_SECS: a duration, not a wait for something to happen.
sleep "$HOLD_SECS"
ok_during=$(($(ok_so_far) - ok_at_cut))
new_leader="$(stream_leader CLOTHESLINE_REQUESTS 2>/dev/null || echo '?')"
docker network connect --alias "$victim" "$NETWORK" "$victim_id"
held=$((SECONDS - cut_at))
clog "reconnected $victim after ${held}s (address $ip_before, now $(ip_of)); $ok_during answered 200 meanwhile; requests leader then: $new_leader"
wait "$load" || true
answered=ok
jq -r --arg want "$expected" '"  completed \(.completed) of \($want), 200: \(.statuses["200"] // 0), statuses \(.statuses), errors \(.error_codes), latency p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) max \(.latency_ms.max) ms"' \
  "$WORK/load.json" || answered=FAIL
jq -e --argjson want "$expected" '.ok == $want and .completed == $want and (.statuses | keys) == ["200"]' \
  "$WORK/load.json" >/dev/null || answered=FAIL
duplicates=$(($(metric_sum ingress_unmatched_replies_total) - unmatched_before))
clog "duplicate replies (ingress_unmatched_replies_total): $duplicates"
clog "NATS connections of the ingress (log lines): $(docker logs "$(containers ingress)" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -c 'event=connected' || true)"
rejoined=$SECONDS
wait_until 120 "the streams whole on all three servers" streams_whole
clog "streams whole $((SECONDS - rejoined))s after the load ended: $(streams_whole)"

clog "compose stop"
docker network connect --alias "$victim" "$NETWORK" "$victim_id" 2>/dev/null || true
compose stop
check_stopped_cleanly || { clog "FAIL: a container was killed"; exit 1; }
[ -n "${KEEP_UP:-}" ] || compose down -v --remove-orphans
[ "$answered" = ok ] && [ "$duplicates" = 0 ] || { clog "FAIL: partition of $victim for ${held}s: every request 200: $answered, duplicates $duplicates"; exit 1; }
clog "PASS: partition of $victim for ${held}s under $LOAD_RATE req/s: lost 0, non-200 0, duplicates 0"
