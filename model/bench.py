"""CPU inference benchmark of the exported TorchScript model (uint8 NHWC in, logits out).

For each batch size: a few warm-up runs, then --runs timed runs of one forward pass on a
fixed random uint8 batch; reports the median latency and images/s. The results are printed
and, with --report (default model/report.json), stored there under "cpu_benchmark".

  python model/bench.py [--model model/clothes.pt] [--threads 2] [--batch-sizes 1 4 8 16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bench(model, batch: int, runs: int, warmup: int, h: int = 224, w: int = 224) -> dict:
    x = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(batch))
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"batch": batch, "runs": runs, "median_ms": round(1000 * med, 1), "min_ms": round(1000 * min(times), 1),
            "max_ms": round(1000 * max(times), 1), "images_per_s": round(batch / med, 1),
            "images_per_s_at_min": round(batch / min(times), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(HERE, "clothes.pt"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--report", default=os.path.join(HERE, "report.json"), help="'' to skip writing")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = torch.jit.load(args.model, map_location="cpu").eval()
    load_before = os.getloadavg()
    results = []
    for b in args.batch_sizes:
        r = bench(model, b, args.runs, args.warmup)
        results.append(r)
        print(f"batch {b:>3}: median {r['median_ms']:8.1f} ms  ({r['min_ms']}-{r['max_ms']})  "
              f"{r['images_per_s']:7.1f} images/s (best run {r['images_per_s_at_min']})", flush=True)
    out = {
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "interop_threads": torch.get_num_interop_threads(),
        "method": f"median of {args.runs} timed forward passes after {args.warmup} warm-up runs, "
                  "random uint8 NHWC input, torch.no_grad, TorchScript (frozen) on CPU; "
                  "images_per_s_at_min = from the fastest run (less sensitive to CPU contention)",
        "results": results,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.report:
        rep = {}
        if os.path.exists(args.report):
            with open(args.report) as f:
                rep = json.load(f)
        rep["cpu_benchmark"] = out
        with open(args.report, "w") as f:
            json.dump(rep, f, indent=2)
            f.write("\n")
        print(f"wrote cpu_benchmark to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
