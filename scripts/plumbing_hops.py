#!/usr/bin/env python3
"""Where the time of one request goes at concurrency 1: sends N classifications one after the
other (`POST /v1/classify {"url"}`, the images served by a local HTTP server) and reads each
answer's `timings` (request_queue_ms, download_ms, preprocess_ms, tensor_queue_ms, inference_ms,
total_ms, as the tiers measured them); the rest of the client's wall time is the ingress, the
NATS hops to the preprocessor and back and HTTP. Prints the medians as JSON.

    plumbing_hops.py INGRESS_URL IMAGES_BASE_URL IMAGE_LIST_FILE N OUT_JSON
"""

import json
import statistics
import sys
import time
import urllib.request

FIELDS = ["request_queue_ms", "download_ms", "preprocess_ms", "tensor_queue_ms", "inference_ms",
          "total_ms"]


def main() -> int:
    ingress, base, listing, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    images = [line.strip() for line in open(listing) if line.strip()]
    samples = {f: [] for f in FIELDS + ["client_ms", "unaccounted_ms"]}
    errors = 0
    for i in range(n):
        body = json.dumps({"url": f"{base}/{images[i % len(images)]}"}).encode()
        req = urllib.request.Request(f"{ingress}/v1/classify", body,
                                     {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.load(r)
        except Exception as e:  # counted, and the run goes on
            print(f"request {i}: {e}", file=sys.stderr)
            errors += 1
            continue
        client_ms = (time.perf_counter() - t0) * 1e3
        t = answer.get("timings", {})
        for f in FIELDS:
            if isinstance(t.get(f), (int, float)):
                samples[f].append(float(t[f]))
        samples["client_ms"].append(client_ms)
        inside = sum(float(t.get(f) or 0) for f in FIELDS if f != "total_ms")
        samples["unaccounted_ms"].append(client_ms - inside)
    result = {"requests": n, "errors": errors,
              "p50": {f: round(statistics.median(v), 3) for f, v in samples.items() if v}}
    json.dump(result, open(out, "w"), indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
