"""Export the null model: the shipped model's contract with almost no compute, so that a
benchmark of the stack measures the pipeline and not the model.

Same input (uint8 NHWC [N, 224, 224, 3]), same output (float32 logits [N, 10]) and the same
classes and preprocessing as model/manifest.json, exported and reload-checked by model/export.py;
inside, only the per-channel mean of the normalized pixels and a 3 -> 10 linear layer (about
150 K additions an image, against hundreds of millions of multiply-adds in the real model).

Usage: python scripts/null_model.py OUT_DIR   (writes OUT_DIR/null.pt and OUT_DIR/manifest.json)
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
import export  # noqa: E402  (model/export.py: the contract, the export and the manifest)


class NullNet(nn.Module):
    """Normalized NCHW floats -> the mean of each channel -> a linear layer to the classes."""

    def __init__(self, num_classes: int = len(export.CLASSES)):
        super().__init__()
        self.fc = nn.Linear(export.CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[0]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    export.export_model(export.UInt8Classifier(NullNet()), os.path.join(out, "null.pt"),
                        log=lambda *_: None)
    export.write_manifest(out, "null.pt", name="null-model", version="0.0.0",
                          dataset="none (no compute: the pipeline benchmark's stand-in)",
                          trained_at="1970-01-01T00:00:00+00:00")
    print(os.path.join(out, "manifest.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
