#!/usr/bin/env python3
"""The `plumbing` section of BENCHMARKS.md from the raw results of scripts/bench_plumbing.sh.

    plumbing_report.py RESULTS_DIR > section.md
"""

import glob
import json
import os
import sys

PROCS = ["nats-server", "ingress", "preprocessor", "gpu-worker"]


def load(results, name):
    path = os.path.join(results, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


def cpu(results, name):
    """{'before': [...], 'after': [...], 'decode_before': [sum, count], ...} of NAME.cpu."""
    out = {}
    for line in open(os.path.join(results, name + ".cpu")):
        key, *vals = line.split()
        out[key] = [float(v) for v in vals]
    return out


def per_answer(results, name):
    """(report, CPU ms per answer by process, decode ms, resize ms) of one run."""
    r = load(results, name)
    c = cpu(results, name)
    n = max(r["answered_all"], 1)
    ms = [(a - b) * 1e3 / n for a, b in zip(c["after"], c["before"])]
    def hist(kind):
        if kind + "_after" not in c:
            return None
        (s1, n1), (s0, n0) = c[kind + "_after"], c[kind + "_before"]
        return (s1 - s0) * 1e3 / (n1 - n0) if n1 > n0 else None
    return r, ms, hist("decode"), hist("resize")


def main() -> int:
    results = sys.argv[1]
    machine = dict(line.strip().split("=", 1) for line in open(os.path.join(results, "machine.txt"))
                   if "=" in line)
    out = []
    w = out.append
    w("## Pipeline plumbing: its own CPU per image, and low-load latency (`scripts/bench_plumbing.sh`)\n")
    w(f"Machine: {machine['cpu']}, {machine['nproc']} cores (`nproc`), shared with other engineers' "
      f"builds and tests; {machine['date']}, commit {machine['commit']}, {machine['nats']}. Load average "
      f"{machine['loadavg_start']} at the start, {machine.get('loadavg_end', '?')} at the end; the run "
      f"took {machine.get('secs', '?')} s. nats-server, the three tiers (release builds, defaults, "
      "`--allow-private-addresses` aside), the load generator and its image server all run on this "
      "machine, the measured processes at nice -10.\n")

    nulls = sorted((os.path.basename(p)[:-5] for p in glob.glob(os.path.join(results, "null-*.json"))),
                   key=lambda n: (n.endswith("-upload"), n))
    if nulls:
        w("### Null model: what the pipeline itself costs\n")
        w("The gpu-worker serves `scripts/null_model.py`'s model: the shipped model's contract, input "
          "and classes, but only a per-channel mean and a 3 -> 10 linear layer inside, so the CPU "
          "below is the pipeline's. Closed loop of "
          f"{load(results, nulls[0])['concurrency']} requests in flight; CPU from /proc/PID/stat (user + "
          "system) before and after each run, divided by its answers; *decode + resize* is the "
          "preprocessor's own measure of that work per image (its /metrics histograms) over the same run. "
          "*before*/*after* rows (when present) are older and newer binaries, alternating, on fresh "
          "stacks.\n")
        w("| run | answers/s | errors | p50 ms | p99 ms | " + " | ".join(f"{p} ms/answer" for p in PROCS)
          + " | **total ms/answer** | decode + resize ms |")
        w("|---|---:|---:|---:|---:|" + "---:|" * len(PROCS) + "---:|---:|")
        for name in nulls:
            r, ms, dec, res = per_answer(results, name)
            dr = f"{dec:.3f} + {res:.3f}" if dec is not None and res is not None else "-"
            w(f"| {name[5:]} | {r['ok_throughput_rps']:.0f} | {r['errors']} | {r['latency_ms']['p50']:.1f} | "
              f"{r['latency_ms']['p99']:.1f} | " + " | ".join(f"{m:.3f}" for m in ms)
              + f" | **{sum(ms):.3f}** | {dr} |")
        w("")
        w("Profiles of the preprocessor and of nats-server under the URL load (top frames, text): "
          "[benchmarks/plumbing/perf-preprocessor.txt](benchmarks/plumbing/perf-preprocessor.txt), "
          "[benchmarks/plumbing/perf-nats.txt](benchmarks/plumbing/perf-nats.txt).\n")

    for tag, what in (("null", "the null model"), ("model", "the shipped model")):
        h = load(results, "hops-" + tag)
        if not h:
            continue
        p = h["p50"]
        w(f"### Where one request's time goes at concurrency 1 ({what})\n")
        w(f"{h['requests']} `POST /v1/classify` with URLs one after the other ({h['errors']} errors); "
          "medians of each answer's `timings` (each tier's own measure) and of the client's wall time; "
          "*the rest* is the client's time minus the tiers' figures: HTTP, the ingress, the publish to "
          "the requests stream, the tensor's publish and the reply's way back.\n")
        cols = [("client_ms", "client"), ("total_ms", "ingress total"),
                ("request_queue_ms", "requests stream"), ("download_ms", "download"),
                ("preprocess_ms", "decode + resize"), ("tensor_queue_ms", "tensors stream + batch wait"),
                ("inference_ms", "inference"), ("unaccounted_ms", "the rest")]
        w("| " + " | ".join(c for _, c in cols) + " |")
        w("|" + "---:|" * len(cols))
        w("| " + " | ".join(f"{p[k]:.2f}" if k in p else "-" for k, _ in cols) + " |\n")

    runs = [("pipeline", "pipeline"), ("waiting", "pipeline, `--dispatch-when-idle false` (the batcher before)"),
            ("monolith", "Flask monolith (gunicorn, `nproc` workers x 2 threads)")]
    if load(results, "model-pipeline-c1"):
        w("### The shipped model: pipeline against a Flask monolith\n")
        w("`/predict` with URLs, closed loop, on the shipped model; the monolith is `scripts/monolith` "
          "(Flask + gunicorn, PIL via `model/preprocess.py`, the same TorchScript in process, one torch "
          "thread per worker). CPU is all of its processes (the stack's four, or gunicorn's master and "
          "workers) per answer.\n")
        w("| server | c1 p50 ms | c1 p99 ms | c16 answers/s | c16 p50 ms | c16 p99 ms | c16 CPU ms/answer |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for tag, label in runs:
            c1, c16 = load(results, f"model-{tag}-c1"), load(results, f"model-{tag}-c16")
            if not c1:
                continue
            cells = [f"{c1['latency_ms']['p50']:.1f}", f"{c1['latency_ms']['p99']:.1f}"]
            if c16:
                _, ms, _, _ = per_answer(results, f"model-{tag}-c16")
                cells += [f"{c16['ok_throughput_rps']:.1f}", f"{c16['latency_ms']['p50']:.1f}",
                          f"{c16['latency_ms']['p99']:.1f}", f"{sum(ms):.1f}"]
            else:
                cells += ["-"] * 4
            w(f"| {label} | " + " | ".join(cells) + " |")
        w("")
        p1, m1 = load(results, "model-pipeline-c1"), load(results, "model-monolith-c1")
        p16, m16 = load(results, "model-pipeline-c16"), load(results, "model-monolith-c16")
        wt = load(results, "model-waiting-c1")
        if wt:
            w(f"Batcher at concurrency 1: p50 {wt['latency_ms']['p50']:.1f} ms waiting for a fuller batch, "
              f"{p1['latency_ms']['p50']:.1f} ms dispatching at once when nothing more is pending.\n")
        if m1 and m16:
            ok1 = p1['latency_ms']['p50'] <= m1['latency_ms']['p50']
            ratio = p16['ok_throughput_rps'] / max(m16['ok_throughput_rps'], 1e-9)
            ok16 = ratio >= 1.1 and p16['latency_ms']['p99'] < m16['latency_ms']['p99']
            w(f"Targets: concurrency-1 p50 at most the monolith's: {p1['latency_ms']['p50']:.1f} against "
              f"{m1['latency_ms']['p50']:.1f} ms, **{'met' if ok1 else 'missed'}**; concurrency 16 at least "
              f"1.1x its throughput with a lower p99: {ratio:.2f}x, p99 {p16['latency_ms']['p99']:.0f} against "
              f"{m16['latency_ms']['p99']:.0f} ms, **{'met' if ok16 else 'missed'}**.\n")
    w("Reproduce: `scripts/bench_plumbing.sh` (about 6 minutes; see its header for the knobs).")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
