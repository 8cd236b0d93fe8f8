"""The one-process Flask monolith the plumbing benchmark compares the pipeline with.

`POST /predict {"url": ...}` -> the same flat `{class: score}` map of raw logits as the ingress's
`/predict`: download the image (requests), decode and resize it with PIL exactly as the model was
trained (model/preprocess.py), run the same TorchScript model in process (one intra-op thread per
worker process), all in the request's thread. Errors answer `{"error": {"code", "message"}}`.

Run by scripts/bench_plumbing.sh under gunicorn:
    MODEL_MANIFEST=model/manifest.json gunicorn -w 2 --threads 2 -b 127.0.0.1:PORT app:app
"""

from __future__ import annotations

import json
import os
import sys

import requests
import torch
from flask import Flask, jsonify, request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "model"))
from preprocess import load_image  # noqa: E402  (the model's own preprocessing)

MANIFEST = os.environ.get("MODEL_MANIFEST", os.path.join(ROOT, "model", "manifest.json"))
DOWNLOAD_TIMEOUT_S = 10.0
MAX_DOWNLOAD_BYTES = 8 << 20

with open(MANIFEST) as f:
    manifest = json.load(f)
torch.set_num_threads(1)
model = torch.jit.load(os.path.join(os.path.dirname(MANIFEST), manifest["file"]), map_location="cpu")
model.eval()
classes = manifest["classes"]
height, width = manifest["input"]["height"], manifest["input"]["width"]
http = requests.Session()
app = Flask(__name__)


def error(status: int, code: str, message: str):
    return jsonify({"error": {"code": code, "message": message}}), status


@app.post("/predict")
def predict():
    body = request.get_json(silent=True)
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str):
        return error(400, "invalid_request", 'expected a JSON body {"url": ...}')
    try:
        r = http.get(url, timeout=DOWNLOAD_TIMEOUT_S)
    except requests.RequestException as e:
        return error(502, "download_failed", str(e))
    if r.status_code != 200:
        return error(502, "download_failed", f"the image URL answered {r.status_code}")
    if len(r.content) > MAX_DOWNLOAD_BYTES:
        return error(413, "image_too_large", "the image is over 8 MiB")
    try:
        pixels = load_image(r.content, height, width)
    except Exception as e:  # PIL raises many kinds on bad input
        return error(422, "corrupt_image", str(e))
    with torch.inference_mode():
        logits = model(torch.from_numpy(pixels).unsqueeze(0))[0].tolist()
    return jsonify(dict(zip(classes, logits)))


@app.get("/healthz")
def healthz():
    return "ok"
