"""Unit tests of the Python model tools: the preprocessing contract, the metrics, the tiny
export, and the shipped model against its manifest. Run: python -m unittest discover -s model/tests -t .
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import export  # noqa: E402
from metrics import classification_report, confusion_matrix  # noqa: E402
from preprocess import load_image  # noqa: E402


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


class PreprocessTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(0)
        self.rgb = Image.fromarray(rng.integers(0, 256, (90, 60, 3), dtype=np.uint8), "RGB")

    def test_every_mode_becomes_uint8_rgb_of_the_input_size(self):
        for img, fmt in [(self.rgb, "JPEG"), (self.rgb.convert("RGBA"), "PNG"), (self.rgb.convert("L"), "PNG"),
                         (self.rgb.convert("P"), "GIF"), (self.rgb, "BMP"), (self.rgb, "WEBP")]:
            arr = load_image(encoded(img, fmt), 32, 48)
            self.assertEqual((arr.shape, arr.dtype), ((32, 48, 3), np.uint8), fmt)

    def test_exif_orientation_is_applied(self):
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        # A smooth picture (JPEG blocks of noise would differ after rotation anyway).
        y, x = np.mgrid[0:90, 0:60]
        smooth = Image.fromarray(np.stack([x * 4, y * 2, (x + y) * 2], -1).astype(np.uint8), "RGB")
        arr = load_image(encoded(smooth, "JPEG", exif=exif.tobytes(), quality=95), 60, 90).astype(int)
        upright = load_image(encoded(smooth.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95), 60, 90)
        stretched = load_image(encoded(smooth, "JPEG", quality=95), 60, 90)
        self.assertLess(np.abs(arr - upright.astype(int)).mean(), 2.0)
        self.assertGreater(np.abs(arr - stretched.astype(int)).mean(), 20.0)

    def test_resize_is_pil_bilinear_stretch(self):
        want = np.asarray(self.rgb.resize((20, 10), Image.Resampling.BILINEAR, reducing_gap=None))
        np.testing.assert_array_equal(load_image(encoded(self.rgb, "PNG"), 10, 20), want)


class MetricsTest(unittest.TestCase):
    def test_confusion_and_report(self):
        cm = confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], 2)
        np.testing.assert_array_equal(cm, [[1, 1], [0, 2]])
        rep = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
        self.assertAlmostEqual(rep["accuracy"], 0.75)


class ExportTest(unittest.TestCase):
    def test_tiny_model_follows_the_contract(self):
        import torch
        with tempfile.TemporaryDirectory() as d:
            export.export_tiny(d)
            with open(os.path.join(d, "manifest.json")) as f:
                manifest = json.load(f)
            path = os.path.join(d, manifest["file"])
            self.assertEqual(export.sha256_file(path), manifest["sha256"])
            model = torch.jit.load(path)
            out = model(torch.zeros(3, 224, 224, 3, dtype=torch.uint8))
            self.assertEqual(tuple(out.shape), (3, len(manifest["classes"])))

    def test_shipped_model_matches_its_manifest(self):
        with open(os.path.join(HERE, "manifest.json")) as f:
            manifest = json.load(f)
        self.assertEqual(export.sha256_file(os.path.join(HERE, manifest["file"])), manifest["sha256"])
        self.assertEqual(manifest["input"], {"height": 224, "width": 224, "channels": 3, "layout": "NHWC",
                                             "dtype": "uint8"})
        self.assertGreaterEqual(manifest["validation_accuracy"], 0.90)
        self.assertEqual(manifest["classes"], sorted(manifest["classes"]))


if __name__ == "__main__":
    unittest.main()
