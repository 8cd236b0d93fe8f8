"""Export a classifier to TorchScript with the clothesline input/output contract.

Contract of the exported module (`forward(x) -> logits`):
  input  x: uint8 tensor [N, 224, 224, 3] (NHWC, RGB, from preprocess.load_image)
  output  : float32 logits [N, 10] in the class order of the manifest
Inside the graph: permute to NCHW, .float(), scale to [0, 1] (/255), then
(x - mean) / std with the EfficientNet-Lite mean/std (127/255, 128/255 per channel,
i.e. (pixel - 127) / 128, the "inception-style" normalization of the TF Lite
checkpoints the weights come from).

The module is traced (eval mode, no_grad), frozen with torch.jit.freeze and saved;
torch.jit.optimize_for_inference is NOT applied (frozen + optimized modules can fail
to reload, pytorch issue 81085). After saving it is reloaded and compared to the
eager model on batches of 1, 4 and 7 (max abs diff < 1e-4).

Usage:
  python model/export.py --tiny --out DIR   # DIR/tiny.pt + DIR/manifest.json, untrained
  python model/export.py --tiny --out DIR --size 160 --version 2   # another input size and version
The trained model is exported by train.py through `export_model` / `write_manifest`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import torch
from torch import nn

CLASSES = ["dress", "hat", "longsleeve", "outwear", "pants",
           "shirt", "shoes", "shorts", "skirt", "t-shirt"]
HEIGHT, WIDTH, CHANNELS = 224, 224, 3
# EfficientNet-Lite (TF lite builder: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255), on the 0..1 scale.
MEAN = [127.0 / 255.0] * 3
STD = [128.0 / 255.0] * 3
CHECK_BATCHES = (1, 4, 7)
CHECK_TOL = 1e-4


class Normalize(nn.Module):
    """float NCHW in 0..255 -> /255 -> (x - mean) / std."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - self.mean) / self.std


class UInt8Classifier(nn.Module):
    """uint8 NHWC [N, H, W, 3] -> logits [N, classes]."""

    def __init__(self, net: nn.Module, mean=MEAN, std=STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        return self.net(self.normalize(x))


class TinyNet(nn.Module):
    """A very small conv net, only for tests of the serving code (untrained)."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=4, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _example(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, HEIGHT, WIDTH, CHANNELS), dtype=torch.uint8, generator=g)


def export_model(wrapper: nn.Module, path: str, log=print) -> dict:
    """Trace + freeze + save `wrapper` (a UInt8Classifier) to `path`, then reload-check it.

    Returns a dict describing what was done (for the report)."""
    wrapper = wrapper.cpu().eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, _example(2, seed=123))
        frozen = torch.jit.freeze(traced)
    torch.jit.save(frozen, path)

    loaded = torch.jit.load(path, map_location="cpu")
    loaded.eval()
    diffs = {}
    with torch.no_grad():
        for b in CHECK_BATCHES:
            x = _example(b, seed=b)
            ref = wrapper(x)
            out = loaded(x)
            if out.shape != (b, len(CLASSES)) or out.dtype != torch.float32:
                raise RuntimeError(f"bad output {tuple(out.shape)} {out.dtype} for batch {b}")
            diffs[b] = float((out - ref).abs().max())
            log(f"[export] reload check batch={b}: max|diff|={diffs[b]:.3g}")
    worst = max(diffs.values())
    if worst >= CHECK_TOL:
        raise RuntimeError(f"reloaded TorchScript differs from eager model: {worst} >= {CHECK_TOL}")
    return {
        "method": "torch.jit.trace (eval, no_grad) + torch.jit.freeze; "
                  "torch.jit.optimize_for_inference not applied (pytorch issue 81085)",
        "reload_check_max_abs_diff": {str(k): v for k, v in diffs.items()},
        "reload_check_tolerance": CHECK_TOL,
        "size_bytes": os.path.getsize(path),
    }


def write_manifest(out_dir: str, model_file: str, name: str, version: str = "1.0.0",
                   validation_accuracy=None, dataset: str = "", trained_at: str | None = None) -> dict:
    path = os.path.join(out_dir, model_file)
    manifest = {
        "name": name,
        "version": version,
        "file": model_file,
        "sha256": sha256_file(path),
        "framework": "torchscript",
        "torch_version": torch.__version__.split("+")[0],
        "input": {"height": HEIGHT, "width": WIDTH, "channels": CHANNELS, "layout": "NHWC", "dtype": "uint8"},
        "preprocessing": {"resize": "bilinear", "geometry": "stretch", "exif_orientation": True, "color": "rgb"},
        "normalization": {"mean": [round(m, 7) for m in MEAN], "std": [round(s, 7) for s in STD],
                          "in_graph": True},
        "output": "logits",
        "classes": list(CLASSES),
        "validation_accuracy": validation_accuracy,
        "dataset": dataset,
        "trained_at": trained_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def export_tiny(out_dir: str, seed: int = 0, size: int = 224, version: str = "0.0.0") -> dict:
    # The input size is a module setting (the example batches and the manifest read it).
    global HEIGHT, WIDTH
    HEIGHT = WIDTH = size
    torch.manual_seed(seed)
    wrapper = UInt8Classifier(TinyNet())
    os.makedirs(out_dir, exist_ok=True)
    export_model(wrapper, os.path.join(out_dir, "tiny.pt"))
    return write_manifest(out_dir, "tiny.pt", name="tiny-test", version=version,
                          validation_accuracy=None, dataset="none (untrained, random init, seed %d)" % seed,
                          trained_at="1970-01-01T00:00:00+00:00")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="export a tiny untrained test model")
    ap.add_argument("--out", default="/tmp/tiny-model", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=HEIGHT, help="input height and width (tiny model)")
    ap.add_argument("--version", default="0.0.0", help="manifest version (tiny model)")
    args = ap.parse_args(argv)
    if not args.tiny:
        ap.error("only --tiny is supported standalone; the trained model is exported by model/train.py")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.time()
    manifest = export_tiny(args.out, args.seed, args.size, args.version)
    print(json.dumps(manifest, indent=2))
    print(f"[export] wrote {args.out}/tiny.pt in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
