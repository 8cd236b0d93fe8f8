"""Makes examples/images/: one small JPEG per class from the CC0 clothing-dataset-small
validation split, the first (by name) that the shipped model classifies right after the resize.

    $TORCH_VENV/bin/python examples/make_images.py [DATASET]

DATASET defaults to ../shared/datasets/clothing-dataset-small. Each image is scaled to at most
MAX_SIDE pixels on its longer side and saved as JPEG under MAX_BYTES.
"""

import io
import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image

MAX_SIDE = 320
MAX_BYTES = 40_000
ROOT = pathlib.Path(__file__).resolve().parent.parent


def small_jpeg(path: pathlib.Path) -> bytes:
    img = Image.open(path).convert("RGB")
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    for quality in (85, 75, 65, 55):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_BYTES:
            return buf.getvalue()
    raise ValueError(f"{path}: over {MAX_BYTES} bytes at quality 55")


def predict(model, manifest, jpeg: bytes) -> str:
    inp = manifest["input"]
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    img = img.resize((inp["width"], inp["height"]), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0)
    with torch.no_grad():
        logits = model(x)[0]
    return manifest["classes"][int(logits.argmax())]


def main() -> None:
    default = ROOT.parent / "shared/datasets/clothing-dataset-small"
    dataset = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default
    manifest = json.loads((ROOT / "model/manifest.json").read_text())
    model = torch.jit.load(str(ROOT / "model" / manifest["file"]), map_location="cpu").eval()
    out = ROOT / "examples/images"
    out.mkdir(parents=True, exist_ok=True)
    for label in manifest["classes"]:
        for path in sorted((dataset / "validation" / label).iterdir()):
            jpeg = small_jpeg(path)
            if predict(model, manifest, jpeg) == label:
                (out / f"{label}.jpg").write_bytes(jpeg)
                print(f"{label}.jpg  {len(jpeg):6d} bytes  from validation/{label}/{path.name}")
                break
        else:
            raise SystemExit(f"no image of {label} is classified right")


if __name__ == "__main__":
    main()
