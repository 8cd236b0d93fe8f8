#!/usr/bin/env bash
# The ingress under its own scenarios, on local stacks of its own (`clothesline-stack bench
# ingress`, tests/stack/bench/ingress.rs): capacity (closed loop); added latency (/predict over
# HTTP against the NATS service subject, alternating rounds); overload at ten times the capacity
# with deadlines, the ingress's memory sampled, recovery runs after, with the default in-flight
# bound and one sized to the capacity; cancellation at twice the capacity with callers giving up
# after 3 s, the workers honouring cancellations or not. Writes the `ingress` section of
# BENCHMARKS.md (`clothesline-loadtest report ingress`, `section`).
#
# Environment: BENCH_IMAGES (../shared/datasets/clothing-dataset-small/validation), BENCH_KEEP
# (a folder for the raw results), BENCH_BIN (binaries already built; nothing is built then),
# DEVICE (cpu), BENCH_OVERLOAD_SECS (30), BENCH_LATENCY_ROUNDS (4), RUST_LOG (the tiers', warn).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins
exec "${BENCH_BIN:-target/release}/clothesline-stack" bench ingress "$@"
