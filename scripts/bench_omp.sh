#!/usr/bin/env bash
# The model on CPU when its cores are shared: gpu-worker's model_bench (in process, images/s at
# batch 1 and 4) with libtorch's OpenMP threads spinning (libgomp's default) or sleeping
# (OMP_WAIT_POLICY=PASSIVE), one replica at 2 threads and at 1,
# on an idle machine and with one core kept busy by another process (a shell loop). Writes the
# `gpu-worker-cpu-sharing` section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

cargo build --release --locked -q -p clothesline-gpu-worker --example model_bench
BENCH=target/release/examples/model_bench
OUT=$(mktemp -d -t clothesline-omp.XXXXXX)

# bench LABEL POLICY THREADS: images/s at batch 1 and 4, as "b1 b4".
bench() {
  local env=()
  [ "$2" = default ] || env=(OMP_WAIT_POLICY="$2")
  env "${env[@]}" "$BENCH" --device cpu --engines 1 --threads "$3" --batch-sizes 1,4 --runs 10 --warmup 2 \
    >"$OUT/$1.txt" 2>&1
  awk -F'|' '/^\| *[14] \|/ {gsub(/ /, "", $6); printf "%s ", $6}' "$OUT/$1.txt"
}

rows=()
for load in idle busy; do
  busy_pid=
  if [ "$load" = busy ]; then
    (while :; do :; done) &
    busy_pid=$!
  fi
  for cfg in "default 2" "PASSIVE 2" "default 1" "PASSIVE 1"; do
    read -r policy threads <<<"$cfg"
    read -r b1 b4 <<<"$(bench "$load-$policy-$threads" "$policy" "$threads")"
    rows+=("| $load | $policy | $threads | $b1 | $b4 |")
    echo "${rows[-1]}"
  done
  [ -z "$busy_pid" ] || { kill "$busy_pid"; wait "$busy_pid" 2>/dev/null || true; }
done

{
  echo "## gpu-worker on a shared CPU: OpenMP wait policy and threads (\`scripts/bench_omp.sh\`)"
  echo
  echo "$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -n1)), $(date -u +%Y-%m-%dT%H:%MZ); model_bench in process, 10 timed runs per batch size; *busy*: another process keeps one core busy (a shell loop), as the other tiers, nats-server or a CPU limit do in production."
  echo
  echo "| cores | OMP_WAIT_POLICY | intra-op threads | images/s at batch 1 | images/s at batch 4 |"
  echo "|---|---|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "libgomp's default lets idle threads spin between the model's parallel regions; when one of them loses its core to another process, every region waits for it (here 9-18 images/s instead of 53-58). \`OMP_WAIT_POLICY=PASSIVE\` avoids the collapse but costs a lot on an idle machine (30-40 instead of 53-58); one intra-op thread is nearly as fast as two when idle at batch 1 and degrades least when the core is shared. On CPU the gpu-worker now runs one single-threaded engine per core by default (section gpu-worker-engines), which sidesteps this; it logs the policy in effect, and where one engine uses several threads (\`--engines 1\`) on shared cores (other tiers on the same CPU, a CPU limit in Kubernetes), run it with \`OMP_WAIT_POLICY=PASSIVE\`."
} >"$OUT/section.md"
cat "$OUT/section.md"
cargo run --release --locked -q -p clothesline-loadtest -- section gpu-worker-cpu-sharing "$OUT/section.md"
