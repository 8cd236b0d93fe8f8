//! Decoding to RGB8 (JPEG with libjpeg-turbo, see [`super::turbo`]; the rest with the `image`
//! crate), bounded: the header's pixel count is checked before any pixel is decoded, a JPEG's
//! scans are counted (a progressive decode costs about `scans x pixels`: a 190 KB scan bomb of
//! 694 scans took 10 s) and refused over the limits, and the `image` decoders run under
//! `image::Limits`.
//!
//! JPEGs at least 2, 4 or 8 times the output size decode DCT-scaled (1/2, 1/4, 1/8), as
//! Pillow's `draft` does, into a per-thread buffer that the resize reads in place.
//!
//! Matches PIL's `exif_transpose` + first frame + `convert("RGB")`: alpha is dropped (not
//! composited), grayscale is replicated, palettes are expanded (a GIF's transparent index keeps
//! its palette colour), 16-bit samples are scaled to 8 bits. A JPEG's orientation comes from its
//! first EXIF segment, the one Pillow reads.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use protocol::{Error, ErrorCode};

use super::resize::{resize_rgb8, resize_rgbx, rgbx_to_rgb};
use super::{ImageSpec, jpeg, sniff, turbo};

/// Bytes the decoder may allocate per pixel of the limit: RGBA with 16-bit samples.
const ALLOC_BYTES_PER_PIXEL: u64 = 8;
/// Allowance on top of the pixel buffers (palettes, scratch buffers, metadata).
const ALLOC_SLACK: u64 = 64 << 20;

/// A decoded image whose orientation is not applied yet.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The format it was decoded as.
    pub format: ImageFormat,
    /// The orientation still to apply (`NoTransforms` when the spec turns it off).
    pub orientation: Orientation,
    pixels: Pixels<'a>,
}

#[derive(Debug)]
enum Pixels<'a> {
    /// A JPEG in the decoder's per-thread buffer.
    Borrowed(turbo::Pixels<'a>),
    Owned(RgbImage),
}

impl Decoded<'_> {
    /// Width and height after orientation.
    pub fn size(&self) -> (u32, u32) {
        let (w, h) = match &self.pixels {
            Pixels::Borrowed(p) => (p.width, p.height),
            Pixels::Owned(img) => img.dimensions(),
        };
        if swaps_axes(self.orientation) {
            (h, w)
        } else {
            (w, h)
        }
    }

    /// The oriented image.
    pub fn into_rgb8(self) -> RgbImage {
        let img = match self.pixels {
            Pixels::Borrowed(p) => RgbImage::from_raw(p.width, p.height, rgbx_to_rgb(p.data)),
            Pixels::Owned(img) => Some(img),
        };
        let mut img = DynamicImage::ImageRgb8(img.unwrap_or_default());
        // Orienting after the conversion moves 3 bytes per pixel instead of up to 8.
        img.apply_orientation(self.orientation);
        img.into_rgb8()
    }

    /// The oriented image stretched to `width x height`: `height * width * 3` bytes. Upright
    /// JPEGs are resized straight from the decoder's buffer.
    pub fn into_resized(self, width: u32, height: u32) -> Result<Vec<u8>, Error> {
        match self.pixels {
            Pixels::Borrowed(p) if self.orientation == Orientation::NoTransforms => {
                if (p.width, p.height) == (width, height) {
                    Ok(rgbx_to_rgb(p.data))
                } else {
                    resize_rgbx(p.data, p.width, p.height, width, height)
                }
            }
            _ => resize_rgb8(self.into_rgb8(), width, height),
        }
    }
}

/// Decodes `bytes` into an RGB8 image with the EXIF orientation applied (when
/// `spec.exif_orientation`); also returns the format it was decoded as.
pub fn decode_rgb8(bytes: &[u8], spec: &ImageSpec) -> Result<(RgbImage, ImageFormat), Error> {
    decode_with(bytes, spec, |d| Ok((d.format, d.into_rgb8()))).map(|(f, img)| (img, f))
}

/// Decodes `bytes` and hands the result, before orientation, to `use_decoded` (a JPEG's pixels
/// live in a per-thread buffer only during that call).
pub fn decode_with<R>(
    bytes: &[u8],
    spec: &ImageSpec,
    use_decoded: impl FnOnce(Decoded<'_>) -> Result<R, Error>,
) -> Result<R, Error> {
    let format = sniff::sniff_format(bytes)?;
    let mut use_decoded = Some(use_decoded);
    let mut call = |decoded: Decoded<'_>| match use_decoded.take() {
        Some(f) => f(decoded),
        None => Err(Error::new(ErrorCode::Internal, "image decoded twice")),
    };
    let mut known_orientation = None;
    // Passes the decoder makes over the image: one but for progressive JPEGs.
    let mut passes = 1;
    if format == ImageFormat::Jpeg {
        let scanned = jpeg::scan(bytes)?;
        check_scans(scanned.scans, spec.max_scans)?;
        passes = scanned.scans;
        let orientation = if spec.exif_orientation {
            // A broken EXIF block does not make the image unusable (PIL ignores it too).
            scanned
                .exif
                .and_then(Orientation::from_exif_chunk)
                .unwrap_or(Orientation::NoTransforms)
        } else {
            Orientation::NoTransforms
        };
        let done = turbo::decode(
            bytes,
            Some(stored_target(spec, orientation)),
            spec.max_scans,
            |w, h| {
                check_pixels(w, h, spec.max_pixels)?;
                check_scan_work(w, h, scanned.scans, spec.max_pixels)
            },
            |pixels| {
                call(Decoded {
                    format,
                    orientation,
                    pixels: Pixels::Borrowed(pixels),
                })
            },
        )?;
        if let Some(result) = done {
            return Ok(result);
        }
        // CMYK or YCCK: the `image` crate converts those.
        known_orientation = Some(orientation);
    }
    let (rgb, orientation) = decode_generic(bytes, format, spec, known_orientation, passes)?;
    call(Decoded {
        format,
        orientation,
        pixels: Pixels::Owned(rgb),
    })
}

/// Any served format with the `image` crate (first frame of an animation), to RGB8; also the
/// orientation to apply (`known_orientation` when given, else the decoder's). `passes` is the
/// number of scans of a JPEG (1 otherwise), checked against the size.
fn decode_generic(
    bytes: &[u8],
    format: ImageFormat,
    spec: &ImageSpec,
    known_orientation: Option<Orientation>,
    passes: u32,
) -> Result<(RgbImage, Orientation), Error> {
    if format == ImageFormat::Png {
        check_png_palette(bytes)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits(spec.max_pixels));
    let mut decoder = reader.into_decoder().map_err(|e| map_error(e, format))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, spec.max_pixels)?;
    check_scan_work(width, height, passes, spec.max_pixels)?;
    let orientation = match known_orientation {
        Some(o) => o,
        // A broken EXIF block does not make the image unusable (PIL ignores it too).
        None if spec.exif_orientation => decoder.orientation().unwrap_or(Orientation::NoTransforms),
        None => Orientation::NoTransforms,
    };
    let rgb = DynamicImage::from_decoder(decoder)
        .map_err(|e| map_error(e, format))?
        .into_rgb8();
    Ok((rgb, orientation))
}

/// Refuses an indexed-colour PNG with a PLTE chunk whose length is not a multiple of 3, which
/// the `png` crate (0.18.1) accepts and then panics on while expanding the palette
/// (image-rs/image-png#694; found by `fuzz/`'s `image_decode`). A chunk walk, no decoding:
/// everything else is left to the decoder.
fn check_png_palette(bytes: &[u8]) -> Result<(), Error> {
    // Signature (8), then IHDR first: length (4), type (4), width (4), height (4), bit depth (1),
    // colour type (1).
    const FIRST_CHUNK: usize = 8;
    const INDEXED: u8 = 3;
    if bytes.get(FIRST_CHUNK + 4..FIRST_CHUNK + 8) != Some(b"IHDR")
        || bytes.get(FIRST_CHUNK + 17) != Some(&INDEXED)
    {
        return Ok(());
    }
    let mut pos = FIRST_CHUNK;
    // Each chunk: length (4), type (4), data (length), CRC (4).
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if &header[4..] == b"PLTE" && !len.is_multiple_of(3) {
            return Err(Error::new(
                ErrorCode::CorruptImage,
                format!("corrupt PNG image: a PLTE chunk of {len} bytes, not a multiple of 3"),
            ));
        }
        pos = pos.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(orientation.to_exif(), 5..=8)
}

/// The output size in the orientation the image is stored in: width and height swap when the
/// EXIF orientation turns the image by 90 or 270 degrees (5 to 8), as `model/preprocess.py`
/// asks Pillow's `draft` for it (the draft happens before the orientation is applied).
pub fn stored_target(spec: &ImageSpec, orientation: Orientation) -> (u32, u32) {
    if swaps_axes(orientation) {
        (spec.height, spec.width)
    } else {
        (spec.width, spec.height)
    }
}

/// The decoder limits for images of at most `max_pixels` pixels.
pub fn limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(ALLOC_BYTES_PER_PIXEL)
            .saturating_add(ALLOC_SLACK),
    );
    limits
}

/// Refuses empty images and images with more than `max_pixels` pixels.
pub fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), Error> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(Error::new(
            ErrorCode::CorruptImage,
            format!("image is {width}x{height}: no pixels"),
        ));
    }
    if pixels > max_pixels {
        return Err(Error::new(
            ErrorCode::CorruptImage,
            format!(
                "image is {width}x{height} ({pixels} pixels), more than the {max_pixels} allowed"
            ),
        ));
    }
    Ok(())
}

/// Refuses a JPEG with more than `max_scans` scans (start-of-scan segments).
pub fn check_scans(scans: u32, max_scans: u32) -> Result<(), Error> {
    if scans > max_scans {
        return Err(Error::new(
            ErrorCode::CorruptImage,
            format!("JPEG has {scans} scans, more than the limit of {max_scans}"),
        ));
    }
    Ok(())
}

/// Refuses a JPEG whose decode would cost more than [`super::SCAN_PASSES`] full passes over the
/// largest image allowed: `scans x pixels` over `max_pixels x SCAN_PASSES`.
pub fn check_scan_work(width: u32, height: u32, scans: u32, max_pixels: u64) -> Result<(), Error> {
    let pixels = u64::from(width) * u64::from(height);
    let work = pixels.saturating_mul(u64::from(scans));
    let max_work = max_pixels.saturating_mul(super::SCAN_PASSES);
    if work > max_work {
        return Err(Error::new(
            ErrorCode::CorruptImage,
            format!(
                "JPEG of {width}x{height} in {scans} scans: {work} pixel-scans to decode, more than the limit of {max_work}"
            ),
        ));
    }
    Ok(())
}

/// Maps a decoder error to the contract's codes.
pub fn map_error(error: ImageError, format: ImageFormat) -> Error {
    let name = format.extensions_str().first().copied().unwrap_or("image");
    let name = name.to_ascii_uppercase();
    match error {
        ImageError::Unsupported(e) => match e.kind() {
            UnsupportedErrorKind::Format(_) => Error::new(
                ErrorCode::UnsupportedFormat,
                format!("{name} images are not supported: {e}"),
            ),
            _ => Error::new(
                ErrorCode::UnsupportedFormat,
                format!("this {name} image uses a feature that is not supported: {e}"),
            ),
        },
        ImageError::Limits(e) => match e.kind() {
            LimitErrorKind::DimensionError => Error::new(
                ErrorCode::CorruptImage,
                format!("{name} image is too large: {e}"),
            ),
            // A frame or buffer over the memory limit is refused like too many pixels: 422
            // (413 `too_large` is for bodies and downloads).
            _ => Error::new(
                ErrorCode::CorruptImage,
                format!("decoding this {name} image needs more memory than allowed: {e}"),
            ),
        },
        ImageError::Decoding(e) => Error::new(
            ErrorCode::CorruptImage,
            format!("corrupt {name} image: {e}"),
        ),
        ImageError::IoError(e) => Error::new(
            ErrorCode::CorruptImage,
            format!("corrupt {name} image (truncated?): {e}"),
        ),
        ImageError::Parameter(e) => Error::new(
            ErrorCode::CorruptImage,
            format!("corrupt {name} image: {e}"),
        ),
        ImageError::Encoding(e) => Error::new(
            ErrorCode::Internal,
            format!("unexpected encoding error while decoding: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gif_frame_larger_than_allowed_is_refused_like_too_many_pixels() {
        // 35 bytes: a 1x1 screen whose one frame claims 65535x65535.
        let mut gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec();
        gif.extend_from_slice(&[0x2c, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]);
        gif.extend_from_slice(&[2, 2, 0x4c, 0x01, 0, 0x3b]);
        let err =
            decode_rgb8(&gif, &ImageSpec::new(224, 224).with_max_pixels(1_000_000)).unwrap_err();
        assert_eq!(err.code, ErrorCode::CorruptImage, "{}", err.message);
        assert_eq!(err.code.http_status(), 422);
    }

    #[test]
    fn scan_limits_name_the_limit() {
        check_scans(100, 100).unwrap();
        let err = check_scans(694, 100).unwrap_err();
        assert_eq!(err.code, ErrorCode::CorruptImage);
        assert!(err.message.contains("limit of 100"), "{}", err.message);
        check_scan_work(6000, 6000, 11, 40_000_000).unwrap();
        let err = check_scan_work(6000, 6000, 12, 40_000_000).unwrap_err();
        assert_eq!(err.code, ErrorCode::CorruptImage);
        assert!(
            err.message.contains("limit of 400000000"),
            "{}",
            err.message
        );
        check_scan_work(u32::MAX, u32::MAX, u32::MAX, u64::MAX).unwrap();
    }

    #[test]
    fn pixel_limit_is_checked_without_overflow() {
        check_pixels(224, 224, 224 * 224).unwrap();
        assert_eq!(
            check_pixels(224, 225, 224 * 224).unwrap_err().code,
            ErrorCode::CorruptImage
        );
        assert!(check_pixels(u32::MAX, u32::MAX, u64::MAX).is_ok());
        assert!(check_pixels(0, 10, 100).is_err());
        assert_eq!(limits(u64::MAX).max_alloc, Some(u64::MAX));
    }

    /// A 1x1 PNG of colour type `color_type` with a PLTE chunk of `plte_len` bytes (CRCs
    /// zeroed: the check runs before the decoder).
    fn png_with_palette(color_type: u8, plte_len: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&[0; 4]);
        };
        chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, color_type, 0, 0, 0]);
        chunk(b"PLTE", &vec![7; plte_len as usize]);
        chunk(
            b"IDAT",
            &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
        );
        chunk(b"IEND", &[]);
        png
    }

    #[test]
    fn indexed_png_with_a_partial_palette_entry_is_corrupt_not_a_panic() {
        for len in [4, 5, 49, 767] {
            let err = check_png_palette(&png_with_palette(3, len)).unwrap_err();
            assert_eq!(err.code, ErrorCode::CorruptImage, "PLTE of {len} bytes");
            let spec = ImageSpec::new(224, 224);
            let err = decode_rgb8(&png_with_palette(3, len), &spec).unwrap_err();
            assert_eq!(err.code, ErrorCode::CorruptImage, "PLTE of {len} bytes");
        }
        check_png_palette(&png_with_palette(3, 48)).unwrap();
        // A suggested palette in a truecolour image is not used (nor checked), as in Pillow.
        check_png_palette(&png_with_palette(2, 49)).unwrap();
        check_png_palette(b"\x89PNG\r\n\x1a\n").unwrap();
        check_png_palette(&png_with_palette(3, 4)[..41]).unwrap_err();
    }
}
