//! Decoding to RGB8 (JPEG with libjpeg-turbo, see [`super::turbo`]; the rest with the `image`
//! crate), bounded: the header's pixel count is checked before
//! any pixel is decoded, and the decoder runs under `image::Limits`.
//!
//! Matches PIL's `exif_transpose` + first frame + `convert("RGB")`: alpha is dropped (not
//! composited), grayscale is replicated, palettes are expanded (a GIF's transparent index keeps
//! its palette colour), 16-bit samples are scaled to 8 bits.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use protocol::{Error, ErrorCode};

use super::{ImageSpec, jpeg, sniff, turbo};

/// Bytes the decoder may allocate per pixel of the limit: RGBA with 16-bit samples.
const ALLOC_BYTES_PER_PIXEL: u64 = 8;
/// Allowance on top of the pixel buffers (palettes, scratch buffers, metadata).
const ALLOC_SLACK: u64 = 64 << 20;

/// Decodes `bytes` into an RGB8 image with the EXIF orientation applied (when
/// `spec.exif_orientation`); also returns the format it was decoded as.
pub fn decode_rgb8(bytes: &[u8], spec: &ImageSpec) -> Result<(RgbImage, ImageFormat), Error> {
    let format = sniff::sniff_format(bytes)?;
    if format == ImageFormat::Jpeg {
        jpeg::check_complete(bytes)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits(spec.max_pixels));
    let mut decoder = reader.into_decoder().map_err(|e| map_error(e, format))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, spec.max_pixels)?;
    let orientation = if spec.exif_orientation {
        // A broken EXIF block does not make the image unusable (PIL ignores it too).
        decoder.orientation().unwrap_or(Orientation::NoTransforms)
    } else {
        Orientation::NoTransforms
    };
    let turbo = match format {
        ImageFormat::Jpeg => match turbo::decode(bytes) {
            Ok(turbo::Decoded::Rgb(rgb)) => Some(rgb),
            Ok(turbo::Decoded::Unsupported) => None,
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::CorruptImage,
                    format!("corrupt JPG image: {e}"),
                ));
            }
        },
        _ => None,
    };
    let rgb = match turbo {
        Some(rgb) => rgb,
        None => DynamicImage::from_decoder(decoder)
            .map_err(|e| map_error(e, format))?
            .into_rgb8(),
    };
    // Orienting after the conversion moves 3 bytes per pixel instead of up to 8.
    let mut rgb = DynamicImage::ImageRgb8(rgb);
    rgb.apply_orientation(orientation);
    Ok((rgb.into_rgb8(), format))
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
            _ => Error::new(
                ErrorCode::TooLarge,
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
}
