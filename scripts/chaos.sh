#!/usr/bin/env bash
# Chaos run (`clothesline-stack chaos`, tests/stack/chaos.rs): a steady open-loop load of
# `/predict` with URLs of the validation images while, one after the other, the preprocessor, the
# gpu-worker and nats-server are SIGKILLed and started again; with `--cluster`, on a 3-node NATS
# cluster (streams at 3 replicas), the leaders of both streams and of the gpu-worker's consumer
# are SIGKILLed in turn and started again, then every node is restarted in lame-duck mode. Every
# request must be answered, once; the work queues must drain. Writes the `chaos` (or
# `chaos-cluster`) section of RELIABILITY.md. The consumers' ack wait is cut to 5 s.
# Environment: BENCH_IMAGES (../shared/datasets/clothing-dataset-small/validation), CHAOS_RATE
# (15 requests/s), CHAOS_REQUESTS (cluster: at least 2000), DEVICE (cpu). Extra arguments go to
# `clothesline-stack chaos` (e.g. --cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
cargo build --release --locked --workspace --bins
results=$(mktemp -d -t clothesline-chaos.XXXXXX)
section=chaos
[[ " $* " != *" --cluster "* ]] || section=chaos-cluster
status=0
target/release/clothesline-stack chaos --bin-dir target/release --log-dir "$results/logs" \
  --images "${BENCH_IMAGES:-../shared/datasets/clothing-dataset-small/validation}" \
  --rate "${CHAOS_RATE:-15}" --requests "${CHAOS_REQUESTS:-2000}" --section "$results/section.md" "$@" || status=$?
[ ! -s "$results/section.md" ] || target/release/clothesline-loadtest section "$section" "$results/section.md" RELIABILITY.md
echo "logs in $results/logs" >&2
exit "$status"
