"""Image preprocessing contract shared by training, evaluation, export and the Rust server.

`load_image(path_or_bytes, height=224, width=224)` returns a uint8 numpy array [H, W, 3]:

1. open with PIL; a JPEG (not CMYK) at least 2, 4 or 8 times the target size in both
   dimensions is decoded at 1/2, 1/4 or 1/8 of its size (`img.draft`, libjpeg's DCT scaling,
   the target taken in the stored orientation); apply the EXIF orientation
   (`ImageOps.exif_transpose`);
2. animated images (GIF, APNG, WebP...): the first frame; then `img.convert("RGB")`
   (alpha dropped, grayscale / CMYK / palette converted by PIL);
3. resize to exactly (width, height), ignoring the aspect ratio (stretch, like Keras
   `load_img`), with `Image.Resampling.BILINEAR` (PIL's antialiased convolution
   bilinear, `reducing_gap=None`);
4. `np.asarray(img, dtype=np.uint8)` -> shape [H, W, 3], RGB order.

The model (see export.py) takes this array batched as uint8 NHWC; scaling and
normalization happen inside the TorchScript graph.

CLI (used by a Rust test to compare tensors):

    python model/preprocess.py --out DIR IMAGE...

writes `DIR/<basename>.rgb` for each IMAGE, where <basename> is the file name with
its extension (`shirts/a.jpg` -> `DIR/a.jpg.rgb`): the raw H*W*3 bytes, row-major,
RGB interleaved, no header.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Union

import numpy as np
from PIL import Image, ImageOps

DEFAULT_HEIGHT = 224
DEFAULT_WIDTH = 224
ORIENTATION = 0x0112  # EXIF tag

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


def _open(source: Source) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


def load_image(source: Source, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """Decode `source` (a path or the encoded bytes) into a uint8 [height, width, 3] RGB array."""
    with _open(source) as img:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # first frame of an animation
        if img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is that many times the
            # target (DCT scaling; the Rust preprocessor picks the same factor). The draft acts on
            # the stored image, before the EXIF rotation: orientations 5-8 swap the target.
            swapped = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
            img.draft("RGB", (height, width) if swapped else (width, height))
        img = ImageOps.exif_transpose(img)  # returns a new (loaded) image
    img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), resample=Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    if not arr.flags.writeable:  # same values; a writable array is friendlier to torch.from_numpy
        arr = arr.copy()
    assert arr.shape == (height, width, 3), arr.shape
    return arr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the preprocessed raw RGB bytes of images.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("images", nargs="+", help="image files")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        arr = load_image(path, args.height, args.width)
        dest = os.path.join(args.out, os.path.basename(path) + ".rgb")
        with open(dest, "wb") as f:
            f.write(np.ascontiguousarray(arr).tobytes())
        print(f"{path} -> {dest} ({arr.shape[0]}x{arr.shape[1]}x3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
