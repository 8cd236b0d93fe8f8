#!/usr/bin/env bash
# The pipeline's figures, side by side, in one run on this machine (`clothesline-stack bench
# pipeline`, tests/stack/bench/pipeline.rs): the in-process model ceiling (gpu-worker's
# model_bench) before and after, the preprocessing ceiling (preprocess_bench), the load
# generator's own CPU at 1000 req/s, and the pipeline end to end on a local stack of its own
# (/predict with URLs, open loop at increasing rates until saturation, then closed loop;
# /v1/classify with uploads; the same over NATS); then the `pipeline` section of BENCHMARKS.md
# and benchmarks/pipeline.svg (`clothesline-loadtest report pipeline`, `section`).
#
# Environment: BENCH_IMAGES (../shared/datasets/clothing-dataset-small/validation),
# BENCH_RATES ("10 20 30 40 50 60 80"), BENCH_STEP_SECS (12), BENCH_WARMUP_SECS (3),
# BENCH_CONCURRENCY (16), BENCH_NATS (1: 0 skips NATS), BENCH_KEEP (a folder for the raw results;
# default a temp folder), BENCH_BIN (binaries already built, e.g. target/debug for a dry run;
# nothing is built then), DEVICE (cpu), RUST_LOG (the tiers', warn).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins
exec "${BENCH_BIN:-target/release}/clothesline-stack" bench pipeline "$@"
