#!/usr/bin/env python3
"""Turn the raw results of scripts/bench.sh into a PNG plot and a markdown section.

    plot_bench.py RESULTS_DIR --png benchmarks/pipeline.png --markdown section.md

RESULTS_DIR holds machine.txt, model_bench.txt, preprocess_bench.txt, tier_cpu.txt and one
clothesline-loadtest JSON report per run (its `label` names the run: `http-predict-open-40`,
`http-predict-closed`, `nats-open-20`, ...). The plot shows latency percentiles against achieved
throughput, with the in-process model ceiling; the markdown has the tables, the machine and the
ratio pipeline throughput at saturation / in-process ceiling. Needs matplotlib (scripts/deps.sh
installs it in the torch venv).
"""

import argparse
import glob
import json
import os
import re

PERCENTILES = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")]
TARGET_RATIO = 0.85


def read_kv(path):
    out = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                out[k] = v
    return out


def read_text(path, default=""):
    return open(path).read() if os.path.exists(path) else default


def markdown_tables(text):
    """The markdown table lines of a benchmark's output, and the other non-empty lines."""
    table = [l for l in text.splitlines() if l.strip().startswith("|")]
    other = [l for l in text.splitlines() if l.strip() and not l.strip().startswith("|")]
    return table, other


def table_column(table, name_pattern):
    """The values of the first column whose header matches, as floats, with the batch column."""
    if len(table) < 3:
        return []
    header = [c.strip() for c in table[0].strip().strip("|").split("|")]
    col = next((i for i, h in enumerate(header) if re.search(name_pattern, h, re.I)), None)
    batch = next((i for i, h in enumerate(header) if re.search(r"batch", h, re.I)), 0)
    if col is None:
        return []
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        try:
            rows.append((cells[batch], float(cells[col].replace(",", ""))))
        except (ValueError, IndexError):
            pass
    return rows


def load_runs(results):
    runs = []
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        r = json.load(open(path))
        if isinstance(r, dict) and r.get("label") and "latency_ms" in r:
            runs.append(r)
    return runs


def family(label):
    """`http-predict-open-40` -> `http-predict`; `nats-closed` -> `nats`."""
    return re.sub(r"-(open-[0-9.]+|closed)$", "", label)


def fmt_ms(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def plot(runs, ceiling, png):
    """Left: achieved vs offered rate (where it saturates). Right: latency percentiles vs achieved
    throughput (the hockey stick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [2, 3]})
    colors = {"p50": "tab:blue", "p90": "tab:green", "p99": "tab:orange", "p999": "tab:red"}
    styles = {"http-predict": "-", "nats": "--"}
    top_rate = 0.0
    for fam, style in styles.items():
        steps = sorted(
            (r for r in runs if family(r["label"]) == fam and r["mode"] == "open"),
            key=lambda r: r["rate"],
        )
        if not steps:
            continue
        xs = [r["ok_throughput_rps"] for r in steps]
        top_rate = max(top_rate, max(r["rate"] for r in steps))
        left.plot([r["rate"] for r in steps], xs, style, marker="o", color="black", label=f"{fam} open loop")
        for key, name in PERCENTILES:
            ys = [max(r["latency_ms"][key], 0.1) for r in steps]
            right.plot(xs, ys, style, marker="o", ms=4, color=colors[key], label=f"{fam} {name}")
        for r, x in zip(steps, xs):
            right.annotate(f"{r['rate']:g}/s", (x, max(r["latency_ms"]["p999"], 0.1)),
                           textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7, color="gray")
    for r in runs:
        if r["mode"] == "closed":
            what = f"{family(r['label'])} closed loop, {r['concurrency']} in flight"
            right.plot([r["ok_throughput_rps"]], [max(r["latency_ms"]["p99"], 0.1)], marker="*", ms=12,
                       linestyle="none", label=f"{what}: p99")
            left.axhline(r["ok_throughput_rps"], linestyle="-.", linewidth=1, color="tab:purple" if "nats" in what else "tab:brown",
                         label=what)
    left.plot([0, top_rate], [0, top_rate], color="lightgray", linewidth=1, label="achieved = offered")
    for ax in (left, right):
        if ceiling:
            ax_line = ax.axhline if ax is left else ax.axvline
            ax_line(ceiling, color="black", linestyle=":", label=f"in-process model ceiling {ceiling:.0f}/s")
            ax_line(ceiling * TARGET_RATIO, color="gray", linestyle=":", label=f"{TARGET_RATIO:.0%} of the ceiling")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    left.set_xlabel("offered rate (requests/s, open loop)")
    left.set_ylabel("achieved throughput (successful answers/s)")
    left.set_title("throughput vs offered load")
    right.set_yscale("log")
    right.set_xlabel("achieved throughput (successful answers/s)")
    right.set_ylabel("latency (ms, from the intended send time)")
    right.set_title("latency percentiles vs throughput")
    fig.suptitle("clothesline end to end on one machine")
    fig.tight_layout()
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png, dpi=100)


def run_rows(runs):
    order = {"http-predict": 0, "http-classify-upload": 1, "nats": 2}
    def key(r):
        return (order.get(family(r["label"]), 9), r["mode"] != "open", r.get("rate") or 0)
    rows = []
    for r in sorted(runs, key=key):
        if r["label"].startswith("noop"):
            continue
        offered = f"{r['rate']:g}/s" if r["mode"] == "open" else f"{r['concurrency']} in flight"
        lat = r["latency_ms"]
        acc = r.get("accuracy")
        acc_s = f"{acc['accuracy']:.1%} ({acc['correct']}/{acc['scored']})" if acc and acc["scored"] else "-"
        # Error codes of error answers, and failures that have no answer (timeout, ...).
        why = dict(r["error_codes"])
        why.update({k: v for k, v in r["statuses"].items() if not k[0].isdigit() and k not in ("nats_ok", "nats_error")})
        errors = f"{r['errors']}" + (f" ({', '.join(f'{k} {v}' for k, v in why.items())})" if why else "")
        cpu = r.get("loadgen_cpu")
        cpu_s = f"{cpu['percent_of_one_core']:.1f}%" if cpu else "-"
        rows.append(
            f"| {family(r['label'])} ({r['source']}) | {offered} | {r['ok_throughput_rps']:.1f} | {errors} | "
            f"{fmt_ms(lat['p50'])} | {fmt_ms(lat['p90'])} | {fmt_ms(lat['p99'])} | {fmt_ms(lat['p999'])} | "
            f"{fmt_ms(lat['max'])} | {acc_s} | {cpu_s} |"
        )
    return rows


def tier_cpu_lines(results, runs):
    """Where the CPU went during the HTTP closed-loop run, by process."""
    lines = read_text(os.path.join(results, "tier_cpu.txt")).split("\n")
    closed = next((r for r in runs if r["label"] == "http-predict-closed"), None)
    if len(lines) < 3 or not closed or not closed.get("loadgen_cpu"):
        return []
    names = lines[0].split()
    before = [float(x) for x in lines[1].split()]
    after = [float(x) for x in lines[2].split()]
    loadgen = closed["loadgen_cpu"]
    wall = loadgen["wall_s"]
    used = [(name, a - b) for name, b, a in zip(names, before, after)]
    used.append(("load generator + image server", loadgen["user_s"] + loadgen["system_s"]))
    total = sum(u for _, u in used)
    answers = max(closed.get("answered_all") or closed["completed"], 1)
    parts = "; ".join(f"{name} {u:.1f} s ({u / wall:.0%} of a core, {u / answers * 1e3:.1f} ms per answer)"
                      for name, u in used)
    cores = os.cpu_count() or 1
    return [
        f"CPU by process during the HTTP closed-loop run ({wall:.1f} s wall and {answers} answers, warm-up "
        f"included): {parts}. "
        f"Together {total:.1f} of the {wall * cores:.0f} core-seconds of this {cores}-core machine; "
        "the rest went to idle time and to other work on the shared machine."
    ]


def markdown(results, runs, ceilings, ceiling):
    """`ceilings`: (batch size, images/s) of the best row of each model_bench run; `ceiling`: their
    mean."""
    m = read_kv(os.path.join(results, "machine.txt"))
    model_text = read_text(os.path.join(results, "model_bench.txt"))
    model_table, model_other = markdown_tables(model_text)
    pre_text = read_text(os.path.join(results, "preprocess_bench.txt"), "not run")
    pre_table, pre_other = markdown_tables(pre_text)
    bracket = " and ".join(f"{v:.1f} (batch {b})" for b, v in ceilings)

    http = [r for r in runs if family(r["label"]) in ("http-predict", "http-classify-upload")]
    nats = [r for r in runs if family(r["label"]) == "nats"]
    best_http = max(http, key=lambda r: r["ok_throughput_rps"], default=None)
    best_nats = max(nats, key=lambda r: r["ok_throughput_rps"], default=None)
    noops = sorted((r for r in runs if r["label"].startswith("noop")), key=lambda r: not r["label"].endswith("default"))

    out = ["## Pipeline end to end (`scripts/bench.sh`)", ""]
    out.append(
        f"Machine: {m.get('nproc', '?')} cores ({m.get('cpu', '?')}), {m.get('mem', '?')}, model on "
        f"{m.get('device', 'cpu')}; {m.get('date', '?')}, commit {m.get('commit', '?')}. Shared and busy: "
        f"load average {m.get('loadavg_start', '?')} at the start, {m.get('loadavg_end', '?')} at the end "
        f"(1, 5, 15 min). nats-server, the three tiers, the load generator and its image server all run "
        f"on this machine; the tiers run with their default options (`--allow-private-addresses` aside). "
        f"The whole run took {m.get('duration_s', '?')} s."
    )
    out.append("")
    if best_http and ceiling:
        ratio = best_http["ok_throughput_rps"] / ceiling
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        spread = max(v for _, v in ceilings) / max(min(v for _, v in ceilings), 1e-9)
        if spread > 1.25:
            verdict = (f"**not conclusive**: the in-process ceiling moved {spread:.1f}x between the two "
                       f"measurements, so other work on the shared machine changed during the run; as measured it "
                       f"{verdict}")
        out.append(
            f"**Pipeline throughput at saturation / in-process ceiling = "
            f"{best_http['ok_throughput_rps']:.1f} / {ceiling:.1f} = {ratio:.1%}** over HTTP "
            f"(best run: `{best_http['label']}`; ceiling: the mean of model_bench's best images/s "
            f"before and after the pipeline runs, {bracket}); {verdict} the {TARGET_RATIO:.0%} target."
        )
        if best_nats:
            out.append(
                f"Over NATS: {best_nats['ok_throughput_rps']:.1f} / {ceiling:.1f} = "
                f"{best_nats['ok_throughput_rps'] / ceiling:.1%} (`{best_nats['label']}`)."
            )
        out.append("")

    out += ["### In-process model ceiling (`gpu-worker` example `model_bench`)", ""]
    out += [f"{l}  " for l in model_other[:2]] + [""] + model_table + [""]
    if len(ceilings) > 1:
        out += [f"After the pipeline runs, the best was {ceilings[1][1]:.1f} images/s (batch {ceilings[1][0]}).", ""]

    out += ["### Preprocessing ceiling (`preprocessor` example `preprocess_bench`)", ""]
    if pre_table:
        out += [f"{l}  " for l in pre_other[:3]] + [""] + pre_table + [""]
        per_core = re.search(r"\*\*([0-9.]+)/s\*\*", "\n".join(pre_table))
        if per_core and ceiling:
            rate = float(per_core.group(1))
            out += [f"At the model's ceiling ({ceiling:.0f} images/s) preprocessing the validation JPEGs needs "
                    f"{ceiling / rate:.2f} of a core ({rate:.0f} images/s per core).", ""]
    else:
        out += ["```", pre_text.strip()[-1500:], "```", ""]

    out += ["### Load generator cost", ""]
    if noops:
        out.append(
            "`clothesline-loadtest` at 1000 req/s (open loop, `/predict` JSON bodies) against its own "
            "`serve-noop` server in another process; CPU is the load generator's user + system time over "
            "the whole run (warm-up included) from `/proc/self/stat`; target under 10% of one core:"
        )
        out += ["", "| scheduler tick | answers/s | CPU, % of one core | p50 ms | p99 ms | p99.9 ms |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in noops:
            cpu = r.get("loadgen_cpu") or {}
            tick = f"{r.get('tick_ms', 0):g} ms" if r.get("tick_ms") else "none"
            what = f"{tick} (default)" if r["label"].endswith("default") else f"{tick} (`--tick`)"
            out.append(
                f"| {what} | {r['ok_throughput_rps']:.0f} | **{cpu.get('percent_of_one_core', float('nan')):.1f}%** | "
                f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {r['latency_ms']['p999']:.2f} |"
            )
        out += ["", "A wake-up of the scheduler costs more CPU than the request it sends, so above 200 req/s the "
                "default tick sends the requests due within 5 ms together; each is then up to one tick late, "
                "which its latency (counted from its intended send time) includes. Pipeline runs (at most "
                "100 req/s here) have no tick: each request goes out at its own time.", ""]

    out += ["### Pipeline runs", ""]
    out.append(
        "Open loop: requests sent at a fixed rate whatever the answers do, latency from each request's "
        "intended send time (queueing shows). Closed loop: a fixed number in flight. Each run counts "
        "answers after a warm-up; images are the validation split, served by the load generator on "
        "127.0.0.1 (URLs) or sent as the request body (uploads), so the accuracy column is an end-to-end "
        "check. Latencies in ms."
    )
    out.append("")
    out.append("| target | offered | ok/s | errors | p50 | p90 | p99 | p99.9 | max | accuracy | loadgen CPU |")
    out.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    out += run_rows(runs)
    out.append("")
    if not nats:
        out.append("NATS: not measured (the ingress did not answer on its service subject in this run).")
        out.append("")
    out += tier_cpu_lines(results, runs)
    out += ["", "![latency percentiles vs throughput](benchmarks/pipeline.png)", ""]
    out.append("Reproduce: `scripts/bench.sh` (about 8-10 minutes; see its header for the knobs).")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--png", default="benchmarks/pipeline.png")
    ap.add_argument("--markdown", required=True)
    args = ap.parse_args()
    runs = load_runs(args.results)
    ceilings = []
    for name in ("model_bench.txt", "model_bench_after.txt"):
        table, _ = markdown_tables(read_text(os.path.join(args.results, name)))
        rows = table_column(table, r"images/s|img/s")
        if rows:
            ceilings.append(max(rows, key=lambda r: r[1]))
    ceiling = sum(v for _, v in ceilings) / len(ceilings) if ceilings else 0.0
    plot([r for r in runs if not r["label"].startswith("noop")], ceiling, args.png)
    with open(args.markdown, "w") as f:
        f.write(markdown(args.results, runs, ceilings, ceiling))
    print(f"wrote {args.png} and {args.markdown}")


if __name__ == "__main__":
    main()
