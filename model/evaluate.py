"""Evaluate the clothes classifier on a folder laid out as <class>/<image>.

Two modes:
  --offline                 load the exported TorchScript model through its manifest
                            (default model/manifest.json), preprocess with
                            preprocess.load_image, batches of 16;
  --pipeline http://H:P     serve the folder with a local http.server thread
                            (127.0.0.1, free port), POST {"url": "http://127.0.0.1:PORT/<class>/<file>"}
                            to <base>/predict, which answers a flat JSON map {class: score};
                            prediction = argmax; a few concurrent requests; failed requests
                            are counted separately (as errors, not as predictions).

Prints a per-class precision/recall table and the confusion matrix; --json OUT writes them.
Only the standard library is used for HTTP (urllib, http.server).

Examples:
  python model/evaluate.py ../shared/datasets/clothing-dataset-small/validation --offline
  python model/evaluate.py ../shared/datasets/clothing-dataset-small/validation \
      --pipeline http://127.0.0.1:8080 --concurrency 4 --json /tmp/pipeline.json
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from metrics import classification_report, format_report, list_images  # noqa: E402

DEFAULT_CLASSES = ["dress", "hat", "longsleeve", "outwear", "pants",
                   "shirt", "shoes", "shorts", "skirt", "t-shirt"]


def evaluate_offline(items, manifest_path: str, batch_size: int = 16):
    import numpy as np
    import torch
    from preprocess import load_image

    with open(manifest_path) as f:
        manifest = json.load(f)
    model_path = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), manifest["file"])
    model = torch.jit.load(model_path, map_location="cpu").eval()
    h, w = manifest["input"]["height"], manifest["input"]["width"]
    preds, errors = [], []
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            batch = items[s:s + batch_size]
            arrs, ok = [], []
            for path, _ in batch:
                try:
                    arrs.append(load_image(path, h, w))
                    ok.append(path)
                except Exception as e:  # unreadable image: an error, not a prediction
                    errors.append({"file": path, "error": repr(e)})
            if not arrs:
                continue
            logits = model(torch.from_numpy(np.stack(arrs)))
            preds.extend(zip(ok, logits.argmax(1).tolist()))
    return dict(preds), errors, {"model": model_path, "sha256_manifest": manifest.get("sha256"),
                                 "seconds": round(time.time() - t0, 2)}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass


def serve_folder(folder: str):
    handler = functools.partial(_QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def predict_http(endpoint: str, image_url: str, timeout: float):
    body = json.dumps({"url": image_url}).encode()
    req = urllib.request.Request(endpoint, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    scores = json.loads(raw)
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"expected a non-empty JSON object of scores, got {raw[:200]!r}")
    best = max(scores.items(), key=lambda kv: float(kv[1]))[0]
    return best, time.time() - t


def evaluate_pipeline(items, folder: str, base: str, classes, concurrency: int, timeout: float):
    server = serve_folder(folder)
    port = server.server_address[1]
    endpoint = base.rstrip("/") + "/predict"
    index = {c: i for i, c in enumerate(classes)}
    preds, errors, latencies = {}, [], []
    t0 = time.time()

    def one(path):
        rel = os.path.relpath(path, folder).split(os.sep)
        url = f"http://127.0.0.1:{port}/" + "/".join(urllib.parse.quote(p) for p in rel)
        try:
            label, dt = predict_http(endpoint, url, timeout)
            return path, label, dt, None
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace")
            return path, None, None, f"HTTP {e.code}: {detail}"
        except Exception as e:
            return path, None, None, repr(e)

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for path, label, dt, err in pool.map(one, [p for p, _ in items]):
                if err is not None:
                    errors.append({"file": path, "error": err})
                elif label not in index:
                    errors.append({"file": path, "error": f"unknown class in answer: {label!r}"})
                else:
                    preds[path] = index[label]
                    latencies.append(dt)
    finally:
        server.shutdown()
        server.server_close()
    wall = time.time() - t0
    lat = sorted(latencies)
    info = {"endpoint": endpoint, "concurrency": concurrency, "seconds": round(wall, 2),
            "requests_per_s": round(len(items) / wall, 2) if wall else None}
    if lat:
        info["latency_ms"] = {"median": round(1000 * statistics.median(lat), 1),
                              "p95": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
                              "max": round(1000 * lat[-1], 1)}
    return preds, errors, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate the clothes classifier on <class>/<image> folders.")
    ap.add_argument("folder", help="folder with one sub-folder per class")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--offline", action="store_true", help="run the exported TorchScript model locally")
    mode.add_argument("--pipeline", metavar="BASE_URL", help="POST to BASE_URL/predict (e.g. http://127.0.0.1:8080)")
    ap.add_argument("--manifest", default=os.path.join(HERE, "manifest.json"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    ap.add_argument("--limit-per-class", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (offline)")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args(argv)

    classes = DEFAULT_CLASSES
    if os.path.exists(args.manifest):
        with open(args.manifest) as f:
            classes = json.load(f)["classes"]
    folder = os.path.abspath(args.folder)
    items = list_images(folder, classes, args.limit_per_class, strict=False)

    if args.offline:
        import torch
        torch.set_num_threads(args.threads)
        preds, errors, info = evaluate_offline(items, args.manifest, args.batch_size)
        info["mode"] = "offline"
    else:
        preds, errors, info = evaluate_pipeline(items, folder, args.pipeline, classes,
                                                args.concurrency, args.timeout)
        info["mode"] = "pipeline"

    answered = [(t, preds[p]) for p, t in items if p in preds]
    rep = classification_report([t for t, _ in answered], [q for _, q in answered], classes)
    rep.update(info)
    rep["images"] = len(items)
    rep["errors"] = len(errors)
    rep["accuracy_counting_errors_as_wrong"] = round(rep["correct"] / len(items), 4) if items else 0.0
    rep["error_details"] = errors[:50]
    rep["misclassified"] = [{"file": os.path.relpath(p, folder), "true": classes[t], "pred": classes[preds[p]]}
                            for p, t in items if p in preds and preds[p] != t]

    print(format_report(rep))
    print(f"mode: {info['mode']}  images: {len(items)}  answered: {len(answered)}  errors: {len(errors)}  "
          f"time: {info['seconds']}s" + (f"  latency: {info['latency_ms']}" if "latency_ms" in info else ""))
    for e in errors[:10]:
        print(f"error: {e['file']}: {e['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
            f.write("\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
