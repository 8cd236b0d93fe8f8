#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with only Rust and Python 3 + pip:
# installs what is missing (scripts/deps.sh), builds every binary, runs unit and integration
# tests (real nats-server, real libtorch, real HTTP on 127.0.0.1), and the Python model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== build (all binaries; the integration tests run them as processes)"
cargo build --locked --workspace --bins

echo "== Python model tests"
"$TORCH_VENV/bin/python" -m unittest discover -s model/tests -t . -v 2>&1 | tail -n 25

echo "== cargo test (unit + integration)"
cargo test --locked --workspace -- --test-threads "${TEST_THREADS:-2}"
