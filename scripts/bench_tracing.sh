#!/usr/bin/env bash
# The cost of tracing (issue #18), `clothesline-stack bench tracing` (tests/stack/bench/
# tracing.rs): pipeline throughput with tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT) and on at
# 100% sampling (every span exported over OTLP/HTTP to a sink on 127.0.0.1), alternating off/on
# BENCH_ROUNDS times on a fresh stack each, each a closed loop of /predict with URLs. Prints the
# Markdown lines for BENCHMARKS.md (`clothesline-loadtest report tracing`). The target is a ratio
# of at least 0.97; run it on a quiet machine: on a shared one the noise is larger than the
# effect. The sink's CPU counts against the traced rounds, so the ratio errs on the side of cost.
#
# Environment: BENCH_ROUNDS (2), BENCH_STEP_SECS (30), BENCH_WARMUP_SECS (5), BENCH_CONCURRENCY
# (16), BENCH_IMAGES, BENCH_KEEP, BENCH_BIN (as in scripts/bench.sh), DEVICE (cpu).
# On a machine that is not quiet, run more, shorter rounds (e.g. BENCH_ROUNDS=6 BENCH_STEP_SECS=20)
# under `nice -n -15` with `kernel.sched_autogroup_enabled=0` (else nice only ranks processes within
# one session): each round's ratio compares two neighbouring windows, and their median resists a
# burst of other work that the mean of all rounds does not.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --workspace --bins
exec "${BENCH_BIN:-target/release}/clothesline-stack" bench tracing "$@"
