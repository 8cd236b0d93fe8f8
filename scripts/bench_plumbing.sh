#!/usr/bin/env bash
# The pipeline's own cost, with the model taken out (issue #15), and the pipeline against a
# one-process Flask monolith (`clothesline-stack bench plumbing`, tests/stack/bench/plumbing.rs):
# the null model (scripts/null_model.py) on a local stack, closed loops with URLs and uploads,
# CPU per answer by process and the preprocessor's decode + resize time; perf's top frames of the
# preprocessor and nats-server (benchmarks/plumbing/); where one request's time goes at
# concurrency 1; the shipped model through the pipeline (and with `--dispatch-when-idle false`)
# against the monolith (scripts/monolith: Flask + gunicorn in a venv of its own beside the torch
# venv). Writes the `plumbing` section of BENCHMARKS.md (`clothesline-loadtest report plumbing`).
# Every measured process runs at nice -10 when this runs as root (the machine is shared).
#
# Environment: BENCH_IMAGES (the validation split of CLOTHESLINE_DATASET, else of ../shared/...),
# BENCH_STEP_SECS (20), BENCH_WARMUP_SECS (3), BENCH_CONCURRENCY (32: the null-model loops),
# BENCH_HOPS (200 requests), BENCH_BIN_BEFORE (a folder of older release binaries: step 1 then
# runs them too, alternating, "before" and "after" in one run), BENCH_SKIP_MODEL (1: skip the
# shipped model and the monolith), BENCH_KEEP (a folder for the raw results), BENCH_BIN
# (binaries already built, e.g. a dry run on debug ones; nothing is built then), DEVICE (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh >/dev/null
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins
exec "${BENCH_BIN:-target/release}/clothesline-stack" bench plumbing "$@"
