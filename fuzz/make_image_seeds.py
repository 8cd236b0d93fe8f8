#!/usr/bin/env python3
"""Writes the image_decode seed corpus under corpus/image_decode/: small images in every served
format and layout (JPEG via libjpeg-turbo and, for CMYK, the image crate; PNG, GIF, WebP, BMP),
an EXIF-rotated JPEG and PNG, one JPEG large enough for DCT scaling, and a few refusals.

Needs Pillow (the venv from scripts/deps.sh has it). Source pixels: a 32x32 thumbnail of one
validation image of clothing-dataset-small when present, else a synthetic gradient.
Run from fuzz/: `python3 make_image_seeds.py`.
"""
import io
import pathlib

from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "corpus" / "image_decode"
DATASET = pathlib.Path("/work/shared/datasets/clothing-dataset-small/validation/shirt")


def source(size=(32, 32)):
    files = sorted(DATASET.glob("*.jpg")) if DATASET.is_dir() else []
    if files:
        with Image.open(files[0]) as im:
            return im.convert("RGB").resize(size, Image.BILINEAR)
    im = Image.new("RGB", size)
    im.putdata([(x * 8 % 256, y * 8 % 256, (x + y) * 4 % 256) for y in range(size[1]) for x in range(size[0])])
    return im


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def save(name, im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    (OUT / name).write_bytes(buf.getvalue())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rgb = source()
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)

    # JPEG: baseline 4:2:0, 4:4:4, progressive, grayscale, CMYK, EXIF orientation 6, DCT-scaled
    # (flat colour, so they stay small).
    save("baseline.jpg", rgb, "JPEG", quality=75)
    save("444.jpg", rgb, "JPEG", quality=90, subsampling=0)
    save("progressive.jpg", rgb, "JPEG", quality=60, progressive=True)
    save("gray.jpg", rgb.convert("L"), "JPEG", quality=70)
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG", quality=70)
    save("exif_rotate90.jpg", rgb.resize((32, 16)), "JPEG", quality=70, exif=exif_orientation(6))
    save("draft_scale_2.jpg", Image.new("RGB", (460, 448), (200, 40, 30)), "JPEG", quality=20)
    save("draft_scale_4.jpg", Image.new("RGB", (900, 896), (30, 90, 200)), "JPEG", quality=5)
    # PNG: RGB, RGBA, palette with transparency, grayscale 16-bit, 1-bit, EXIF orientation 3.
    save("rgb.png", rgb, "PNG")
    save("rgba.png", rgba, "PNG")
    save("palette_trns.png", pal, "PNG", transparency=0)
    save("gray16.png", rgb.convert("L").convert("I;16"), "PNG")
    save("bilevel.png", rgb.convert("1"), "PNG")
    save("exif_rotate180.png", rgb, "PNG", exif=exif_orientation(3))
    # GIF: still, and 2 frames with a transparent index.
    save("still.gif", pal, "GIF")
    frame2 = rgb.rotate(90).convert("P", palette=Image.ADAPTIVE, colors=16)
    save("animated.gif", pal, "GIF", save_all=True, append_images=[frame2], duration=50, loop=0, transparency=0)
    # WebP: lossy, lossless, with alpha, animated.
    save("lossy.webp", rgb, "WEBP", quality=50)
    save("lossless.webp", rgb, "WEBP", lossless=True)
    save("alpha.webp", rgba, "WEBP", quality=50)
    save("animated.webp", rgb, "WEBP", save_all=True, append_images=[rgb.rotate(90)], duration=50, quality=30)
    # BMP: 24-bit, 8-bit palette, 1-bit, 32-bit RGBA.
    save("rgb24.bmp", rgb, "BMP")
    save("palette8.bmp", pal, "BMP")
    save("bilevel.bmp", rgb.convert("1"), "BMP")
    save("rgba32.bmp", rgba, "BMP")
    # Refusals: a served format declaring too many pixels (header only), TIFF, not an image.
    big = io.BytesIO()
    Image.new("L", (3000, 3000)).save(big, "PNG")
    (OUT / "too_many_pixels.png").write_bytes(big.getvalue()[:64])
    save("tiny.tiff", rgb.resize((4, 4)), "TIFF")
    (OUT / "not_an_image.html").write_bytes(b"<html><body>404</body></html>")


if __name__ == "__main__":
    main()
