//! Image bytes -> tensor: every served format, alpha, grayscale, animation, EXIF orientation,
//! and the refusals (bombs, truncation, garbage).
#![allow(clippy::unwrap_used)]

mod common;

use clothesline_preprocessor::imaging::{decode_rgb8, resize_rgb8};
use clothesline_preprocessor::{ImageSpec, preprocess_image, preprocess_image_timed};
use common::*;
use image::codecs::gif::GifEncoder;
use image::{
    DynamicImage, Frame, GrayImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage,
};
use protocol::ErrorCode;

const LEN: usize = 224 * 224 * 3;

fn spec() -> ImageSpec {
    ImageSpec::new(224, 224)
}

fn code(bytes: &[u8], spec: &ImageSpec) -> ErrorCode {
    preprocess_image(bytes, spec)
        .expect_err("must be refused")
        .code
}

/// Every pixel of `data` is within `tolerance` of `rgb`.
fn assert_uniform(data: &[u8], rgb: [u8; 3], tolerance: u8) {
    assert_eq!(data.len(), LEN);
    for (i, p) in data.chunks_exact(3).enumerate() {
        let off = p.iter().zip(rgb).map(|(a, b)| a.abs_diff(b)).max().unwrap();
        assert!(off <= tolerance, "pixel {i} is {p:?}, expected {rgb:?}");
    }
}

#[test]
fn every_served_format_gives_a_full_tensor() {
    let img = DynamicImage::ImageRgb8(gradient(300, 170));
    let reference = resize_rgb8(gradient(300, 170), 224, 224).unwrap();
    for (format, tolerance) in [
        (ImageFormat::Png, 0),
        (ImageFormat::Bmp, 0),
        (ImageFormat::WebP, 0), // lossless
        (ImageFormat::Jpeg, 12),
    ] {
        let bytes = encode(&img, format);
        let out = preprocess_image_timed(&bytes, &spec()).unwrap();
        assert_eq!(out.format, format);
        assert_eq!(out.source_size, (300, 170));
        assert_eq!(out.data.len(), LEN, "{format:?}");
        let diff = max_diff(&out.data, &reference);
        assert!(diff <= tolerance, "{format:?} differs by {diff}");
    }
}

#[test]
fn alpha_is_dropped_not_composited() {
    // PIL's convert("RGB") keeps the colour of fully transparent pixels.
    let rgba = RgbaImage::from_fn(50, 40, |x, _| Rgba([200, 100, 50, (x * 5) as u8]));
    let png = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
    assert_uniform(&preprocess_image(&png, &spec()).unwrap(), [200, 100, 50], 0);
}

#[test]
fn grayscale_and_16_bit_become_rgb8() {
    let gray = GrayImage::from_pixel(31, 77, Luma([77]));
    let png = encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Png);
    assert_uniform(&preprocess_image(&png, &spec()).unwrap(), [77, 77, 77], 0);

    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(20, 20, Rgb([65535, 32896, 0]));
    let png = encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png);
    assert_uniform(&preprocess_image(&png, &spec()).unwrap(), [255, 128, 0], 1);
}

#[test]
fn gif_gives_its_first_frame() {
    let frame = |c: [u8; 4]| Frame::new(RgbaImage::from_pixel(40, 30, Rgba(c)));
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        encoder
            .encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])])
            .unwrap();
    }
    let out = preprocess_image_timed(&gif, &spec()).unwrap();
    assert_eq!(out.format, ImageFormat::Gif);
    assert_uniform(&out.data, [255, 0, 0], 0);
}

#[test]
fn exif_orientation_6_rotates_clockwise() {
    // Left half red, right half blue; rotated 90 degrees clockwise: top red, bottom blue.
    let plain = encode(&DynamicImage::ImageRgb8(halves(64, 32)), ImageFormat::Jpeg);
    let tagged = with_exif_orientation(&plain, 6);
    let (rgb, _) = decode_rgb8(&tagged, &spec()).unwrap();
    assert_eq!(rgb.dimensions(), (32, 64));

    let out = preprocess_image(&tagged, &spec()).unwrap();
    let px = |x: usize, y: usize| &out[(y * 224 + x) * 3..(y * 224 + x) * 3 + 3];
    assert!(
        px(10, 10)[0] > 200 && px(10, 10)[2] < 60,
        "top-left {:?}",
        px(10, 10)
    );
    assert!(
        px(10, 210)[2] > 200 && px(10, 210)[0] < 60,
        "bottom-left {:?}",
        px(10, 210)
    );

    // Exactly the unrotated decode, rotated, then resized.
    let (unrotated, _) = decode_rgb8(&plain, &spec()).unwrap();
    let expected = resize_rgb8(image::imageops::rotate90(&unrotated), 224, 224).unwrap();
    assert_eq!(out, expected);

    // Off when the manifest says so.
    let no_exif = ImageSpec {
        exif_orientation: false,
        ..spec()
    };
    let (rgb, _) = decode_rgb8(&tagged, &no_exif).unwrap();
    assert_eq!(rgb.dimensions(), (64, 32));
}

#[test]
fn huge_declared_size_is_refused_before_decoding() {
    let bomb = png_header_only(100_000, 100_000);
    let c = code(&bomb, &spec());
    assert!(
        matches!(c, ErrorCode::CorruptImage | ErrorCode::TooLarge),
        "{c:?}"
    );
    let err = preprocess_image(&bomb, &spec()).unwrap_err();
    assert!(err.message.contains("100000x100000"), "{}", err.message);

    // The limit is configurable.
    let png = encode(
        &DynamicImage::ImageRgb8(gradient(300, 300)),
        ImageFormat::Png,
    );
    assert_eq!(
        code(&png, &spec().with_max_pixels(10_000)),
        ErrorCode::CorruptImage
    );
}

#[test]
fn truncated_images_are_corrupt() {
    let jpeg = encode(
        &DynamicImage::ImageRgb8(gradient(120, 90)),
        ImageFormat::Jpeg,
    );
    for cut in [jpeg.len() / 2, jpeg.len() - 2, 400] {
        assert_eq!(
            code(&jpeg[..cut], &spec()),
            ErrorCode::CorruptImage,
            "cut {cut}"
        );
    }
    let png = encode(
        &DynamicImage::ImageRgb8(gradient(120, 90)),
        ImageFormat::Png,
    );
    assert_eq!(
        code(&png[..png.len() / 2], &spec()),
        ErrorCode::CorruptImage
    );
    let gif = encode(
        &DynamicImage::ImageRgb8(gradient(120, 90)),
        ImageFormat::Gif,
    );
    assert_eq!(
        code(&gif[..gif.len() / 2], &spec()),
        ErrorCode::CorruptImage
    );
}

#[test]
fn garbage_is_not_an_image_and_other_formats_are_unsupported() {
    assert_eq!(code(&noise(4096, 42), &spec()), ErrorCode::NotAnImage);
    assert_eq!(code(b"{\"url\": \"x\"}", &spec()), ErrorCode::NotAnImage);
    assert_eq!(
        code(b"II*\0\x08\0\0\0rest", &spec()),
        ErrorCode::UnsupportedFormat
    );
    assert_eq!(
        code(b"\0\0\0\x1cftypavif\0\0\0\0", &spec()),
        ErrorCode::UnsupportedFormat
    );
    // Right magic, broken inside.
    let mut png = encode(&DynamicImage::ImageRgb8(gradient(20, 20)), ImageFormat::Png);
    png[20] ^= 0xff; // inside IHDR: its CRC no longer matches
    assert_eq!(code(&png, &spec()), ErrorCode::CorruptImage);
}

#[test]
fn output_has_the_spec_size_whatever_the_input_shape() {
    let spec = ImageSpec::new(7, 5);
    for (w, h) in [(1, 1), (1, 500), (500, 1), (7, 5), (3000, 2)] {
        let img = RgbImage::from_pixel(w, h, Rgb([9, 99, 199]));
        let png = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let out = preprocess_image(&png, &spec).unwrap();
        assert_eq!(out.len(), spec.output_len(), "{w}x{h}");
        assert!(out.chunks_exact(3).all(|p| p == [9, 99, 199]), "{w}x{h}");
    }
}

#[test]
fn large_jpegs_decode_dct_scaled_as_pillow_drafts_them() {
    // Pillow's draft: s = the largest of 8, 4, 2, 1 with W // w >= s and H // h >= s; the image
    // decodes at ceil(W / s) x ceil(H / s).
    let jpeg = encode(
        &DynamicImage::ImageRgb8(gradient(1001, 501)),
        ImageFormat::Jpeg,
    );
    let size = |bytes: &[u8], w, h| {
        let out = preprocess_image_timed(bytes, &ImageSpec::new(w, h)).unwrap();
        assert_eq!(out.data.len(), (w * h * 3) as usize);
        out.source_size
    };
    assert_eq!(size(&jpeg, 224, 224), (501, 251)); // min(4, 2) -> 1/2
    assert_eq!(size(&jpeg, 100, 100), (251, 126)); // min(10, 5) -> 1/4
    assert_eq!(size(&jpeg, 100, 50), (126, 63)); // min(10, 10) -> 1/8
    assert_eq!(size(&jpeg, 501, 224), (1001, 501)); // min(1, 2) -> none

    // Orientation 6: the draft is taken in the stored orientation, so a 60x220 output asks for
    // 220x60 of the stored 1001x501 image: min(4, 8) -> 1/4 (upright 60x220 would be 1/2).
    let tagged = with_exif_orientation(&jpeg, 6);
    assert_eq!(size(&tagged, 60, 220), (126, 251));
    assert_eq!(size(&jpeg, 60, 220), (501, 251));
}
