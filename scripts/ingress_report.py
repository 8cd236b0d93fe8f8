#!/usr/bin/env python3
"""The `ingress` section of BENCHMARKS.md, from the raw results of scripts/bench_ingress.sh.

    python3 scripts/ingress_report.py RESULTS_DIR > section.md
"""

import glob
import json
import os
import statistics
import sys


def load(results, name):
    with open(os.path.join(results, name + ".json")) as f:
        return json.load(f)


def kv(results, name):
    out = {}
    with open(os.path.join(results, name + ".txt")) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                out[k] = v
    return out


def numbers(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(x) for x in f.read().split() if x.strip().isdigit()]


def statuses(d):
    return ", ".join(f"{k}: {v}" for k, v in sorted(d["statuses"].items()))


def latency_section(results):
    rows, diffs = [], []
    rounds = sorted(glob.glob(os.path.join(results, "latency-http-*.json")))
    for path in rounds:
        r = path.rsplit("-", 1)[1].split(".")[0]
        http, nats = load(results, f"latency-http-{r}"), load(results, f"latency-nats-{r}")
        h, n = http["latency_ms"], nats["latency_ms"]
        diffs.append(h["p50"] - n["p50"])
        rows.append(
            f"| {r} | {http['ok']} | {h['p50']:.2f} | {h['p99']:.1f} | {nats['ok']} | "
            f"{n['p50']:.2f} | {n['p99']:.1f} | {h['p50'] - n['p50']:+.2f} |"
        )
    lines = [
        "### Added latency of the HTTP front over a NATS request",
        "",
        "Open loop at 5 requests/s (low load), `/predict` with a URL against a core-NATS request "
        "on the service subject `clothesline.classify` with the same JSON, in alternating rounds "
        "of 20 s. Both paths end in the same ingress process, JetStream stream and workers: the "
        "difference of the medians is what the HTTP side (axum, the flat map) adds. Latencies in ms.",
        "",
        "| round | HTTP answers | HTTP p50 | HTTP p99 | NATS answers | NATS p50 | NATS p99 | HTTP - NATS p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    if diffs:
        med = statistics.median(diffs)
        verdict = "under" if med < 1.0 else "NOT under"
        lines.append(
            f"**Median over the rounds of the p50 difference: {med:+.2f} ms** ({verdict} the 1 ms "
            "target). The p50 itself moves by more than that from round to round on this shared "
            "machine (inference is 20-30 ms of it), so single rounds can come out negative."
        )
    return lines


def overload_section(results, name, title, capacity):
    o = load(results, name)
    rss_before = numbers(os.path.join(results, f"{name}-rss-before.txt"))
    rss = numbers(os.path.join(results, f"{name}-rss.txt"))
    rss_after = numbers(os.path.join(results, f"{name}-rss-after.txt"))
    lat = o["latency_ms"]
    lines = [
        f"#### {title}",
        "",
        f"Offered {o['rate']:.0f} requests/s (ten times the capacity of {capacity:.1f}/s) for "
        f"{o['window_s']:.0f} s, open loop, each request asking a 5 s deadline "
        f"(`X-Request-Timeout-Ms: 5000`; the load generator waits up to 15 s).",
        "",
        f"- sent and answered: {o['completed']} (answers by status: {statuses(o)})",
        f"- latency over all answers: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, "
        f"max {lat['max']:.0f} ms",
        f"- not answered by the ingress within 15 s: {o['statuses'].get('timeout', 0)}",
    ]
    if rss:
        lines.append(
            f"- ingress resident memory: {rss_before[0] / 1024:.1f} MiB before, at most "
            f"{max(rss) / 1024:.1f} MiB during ({len(rss)} samples, every 0.5 s), "
            f"{rss_after[0] / 1024:.1f} MiB after" if rss_before and rss_after else ""
        )
    lines += [
        "",
        "Right after: 5 s runs at 10 requests/s, one after the other:",
        "",
        "| run | starts after the overload | answers | statuses | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for i in range(1, 7):
        path = os.path.join(results, f"{name}-recovery-{i}.json")
        if not os.path.exists(path):
            break
        r = load(results, f"{name}-recovery-{i}")
        rl = r["latency_ms"]
        lines.append(
            f"| {i} | ~{5 * (i - 1)} s | {r['completed']} | {statuses(r)} | {rl['p50']:.0f} | "
            f"{rl['p99']:.0f} | {rl['max']:.0f} |"
        )
    lines.append("")
    return lines


def cancel_section(results, capacity):
    rows = []
    data = {}
    for honor in ("true", "false"):
        if not os.path.exists(os.path.join(results, f"cancel-{honor}.json")):
            continue
        run, c = load(results, f"cancel-{honor}"), kv(results, f"cancel-{honor}")
        data[honor] = (run, c)
        ok = run["ok"]
        items = float(c["worker_items"])
        wasted = max(0.0, items - ok)
        rows.append(
            f"| {honor} | {run['completed']} | {ok} | {run['statuses'].get('timeout', 0)} | "
            f"{items:.0f} | {wasted:.0f} | {float(c['worker_cancelled']):.0f} | "
            f"{float(c['pre_cancelled']):.0f} | {float(c['cpu_worker']):.1f} | {float(c['cpu_pre']):.1f} |"
        )
    lines = [
        "### What cancellation saves",
        "",
        f"Twice the capacity ({2 * capacity:.0f} requests/s) for 30 s, open loop, callers giving "
        "up after 3 s (the load generator drops the connection; the ingress publishes the id on "
        "`clothesline.cancel`); the request deadline stays at the ingress's default (30 s). The "
        "tiers' counters and CPU seconds are read once both consumers are drained. *Inferences "
        "for nobody*: images the gpu-worker ran whose caller had already given up (inferences "
        "minus answers the callers got).",
        "",
        "| workers honour cancellations | requests | answered in time | gave up | inferences run | "
        "inferences for nobody | tensors skipped (gpu-worker) | requests skipped (preprocessor) | "
        "gpu-worker CPU s | preprocessor CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    if "true" in data and "false" in data:
        on, off = data["true"], data["false"]
        w_on = max(0.0, float(on[1]["worker_items"]) - on[0]["ok"])
        w_off = max(0.0, float(off[1]["worker_items"]) - off[0]["ok"])
        cpu_on, cpu_off = float(on[1]["cpu_worker"]), float(off[1]["cpu_worker"])
        lines.append(
            f"With cancellations honoured the gpu-worker ran {w_on:.0f} images for callers who "
            f"had gone, against {w_off:.0f} without; its CPU time for the run fell from "
            f"{cpu_off:.1f} s to {cpu_on:.1f} s ({(1 - cpu_on / cpu_off) * 100 if cpu_off else 0:.0f}% "
            f"less), and callers got {on[0]['ok']} answers in time against {off[0]['ok']}. "
            "The preprocessor keeps up at this rate, so requests wait in the tensors stream and "
            "the gpu-worker is where the skipping happens. Answers in time do not grow: with "
            "first-in first-out queues and one patience for every caller, each request waits about "
            "as long as its caller is willing to; what cancellation buys is the CPU (or GPU) "
            "otherwise spent on answers nobody reads, and a backlog that drains at once."
        )
    return lines


def main():
    results = sys.argv[1]
    machine = kv(results, "machine")
    capacity = load(results, "capacity")["ok_throughput_rps"]
    out = [
        "## Ingress: added latency, overload, cancellation (`scripts/bench_ingress.sh`)",
        "",
        f"Machine: {machine.get('nproc')} cores ({machine.get('cpu')}), model on cpu; "
        f"{machine.get('date')}, commit {machine.get('commit')}; load average "
        f"{machine.get('loadavg_start')} at the start, {machine.get('loadavg_end')} at the end. "
        "nats-server, the three tiers (defaults, `--allow-private-addresses` aside) and the load "
        f"generator all on this machine; the run took {machine.get('duration_s')} s.",
        "",
        f"Capacity (closed loop, 16 in flight, 15 s): **{capacity:.1f} answers/s**.",
        "",
    ]
    out += latency_section(results)
    out += ["", "### Ten times the capacity", ""]
    out += overload_section(
        results, "overload-default", "Default in-flight bound (`--max-inflight 1024`)", capacity
    )
    sized = os.path.join(results, "inflight-sized.txt")
    if os.path.exists(sized):
        n = open(sized).read().strip()
        out += overload_section(
            results,
            "overload-sized",
            f"In-flight bound sized to about 3 s of work (`--max-inflight {n}`)",
            capacity,
        )
    default = load(results, "overload-default")
    admitted = sum(v for k, v in default["statuses"].items() if k in ("200", "504"))
    admitted_rate = admitted / max(default["window_s"], 1.0)
    out += [
        "Every request was answered within its deadline (200, 429 or 504; none left waiting), the "
        "ingress's memory stayed bounded, and latency was normal in the first run after the load "
        "stopped: the requests still queued had expired, and their cancellations let the workers "
        "skip them. Goodput is the weak point: with 1024 requests in flight (minutes of work for "
        "this machine) most of the work goes to requests that expire before they are answered, "
        "so far fewer succeed than with a bound sized to the capacity. On this machine that work "
        f"(about {admitted_rate:.0f} requests/s admitted, downloaded, decoded and stored as "
        "tensors) also takes a core from "
        "the gpu-worker, whose spinning OpenMP threads then slow down several times (section "
        "gpu-worker-cpu-sharing). Size `--max-inflight` to the replicas behind an ingress "
        "(about capacity x acceptable queueing time).",
        "",
    ]
    out += cancel_section(results, capacity)
    out += ["", "Reproduce: `scripts/bench_ingress.sh` (about 10 minutes)."]
    print("\n".join(line for line in out if line is not None))


if __name__ == "__main__":
    main()
