//! JPEG decoding with libjpeg-turbo 3 (turbojpeg, built from its bundled source): the decoder
//! Pillow ships, with the same defaults (accurate integer IDCT, fancy upsampling), so a JPEG
//! decodes to the same pixels the model was trained on. CMYK/YCCK JPEGs, which TurboJPEG
//! cannot convert to RGB, are left to the `image` crate.
//!
//! The pixels come out as RGBX (the fourth byte padding): libjpeg-turbo's SIMD colour
//! conversion writes four-byte pixels about 15% faster than packed RGB, and the resizer reads
//! them as fast; the colours are the same.
//!
//! DCT scaling: when the output is at least 2, 4 or 8 times smaller than the image in both
//! dimensions, libjpeg-turbo decodes at 1/2, 1/4 or 1/8 of the size, skipping most of the IDCT
//! work. The factor is chosen exactly as Pillow's `JpegImageFile.draft` chooses it (which
//! `model/preprocess.py` calls), so both sides decode the same smaller image.

use std::cell::RefCell;

use protocol::{Error, ErrorCode};
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

/// Scratch buffers larger than this (about 4 megapixels of RGBX) are freed after use rather than
/// kept for the thread's next image.
const MAX_KEPT_SCRATCH: usize = 16 << 20;

thread_local! {
    /// One decompressor per thread, reused: a handle allocates libjpeg's state.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    /// The decoded pixels, reused from image to image (no allocation, no page faults).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decoded pixels, borrowed from the thread's scratch buffer.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    /// `height * width * 4` bytes, row-major, RGBX (the fourth byte of each pixel is padding).
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
}

/// The DCT scale denominator (1, 2, 4 or 8) Pillow's `draft(mode, (target_width,
/// target_height))` picks for a `width x height` JPEG: the largest `s` with
/// `width / target_width >= s` and `height / target_height >= s` (integer division), so the
/// scaled image, `ceil(width / s) x ceil(height / s)`, is never smaller than the target.
pub fn draft_scale(
    width: usize,
    height: usize,
    target_width: usize,
    target_height: usize,
) -> usize {
    if target_width == 0 || target_height == 0 {
        return 1;
    }
    let scale = (width / target_width).min(height / target_height);
    [8, 4, 2, 1].into_iter().find(|&s| scale >= s).unwrap_or(1)
}

/// Decodes a complete JPEG into the thread's scratch buffer and hands the pixels to `use_pixels`.
/// `check_size` sees the full (unscaled) width and height first and may refuse the image before
/// any pixel is decoded. With a `target` (output width and height, in the orientation the JPEG
/// is stored in), decodes at the scale [`draft_scale`] picks; lossless JPEGs are never scaled.
/// libjpeg-turbo stops (`corrupt_image`) at a JPEG with more than `max_scans` scans.
///
/// `Ok(None)` for colour spaces TurboJPEG does not turn into RGB (CMYK, YCCK): decode those
/// another way. Decoder errors are `corrupt_image`.
pub fn decode<R>(
    bytes: &[u8],
    target: Option<(u32, u32)>,
    max_scans: u32,
    check_size: impl FnOnce(u32, u32) -> Result<(), Error>,
    use_pixels: impl FnOnce(Pixels<'_>) -> Result<R, Error>,
) -> Result<Option<R>, Error> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(Decompressor::new().map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot start the JPEG decoder: {e}"),
                )
            })?),
        };
        let header = match decompressor.read_header(bytes) {
            Ok(h) => h,
            Err(e) => {
                *slot = None; // never reuse a handle whose last call failed
                return Err(corrupt(e));
            }
        };
        if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
            return Ok(None);
        }
        check_size(dimension(header.width)?, dimension(header.height)?)?;
        let scale = match target {
            Some((w, h)) if !header.is_lossless => {
                draft_scale(header.width, header.height, w as usize, h as usize)
            }
            _ => 1,
        };
        let factor = ScalingFactor::new(1, scale);
        let scaled = header.scaled(factor);
        let (width, height) = (scaled.width, scaled.height);
        let mut failed = false;
        let result = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let len = width * height * 4;
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let image = Image {
                pixels: &mut buf[..len],
                width,
                pitch: width * 4,
                height,
                format: PixelFormat::RGBX,
            };
            let decoded = decompressor
                .set_scaling_factor(factor)
                .and_then(|()| decompressor.set_scan_limit(max_scans))
                .and_then(|()| decompressor.decompress(bytes, image));
            let result = match decoded {
                Ok(()) => use_pixels(Pixels {
                    data: &buf[..len],
                    width: dimension(width)?,
                    height: dimension(height)?,
                })
                .map(Some),
                Err(e) => {
                    failed = true;
                    Err(corrupt(e))
                }
            };
            if buf.capacity() > MAX_KEPT_SCRATCH {
                *buf = Vec::new();
            }
            result
        });
        if failed {
            *slot = None; // never reuse a handle whose last call failed
        }
        result
    })
}

fn dimension(n: usize) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| Error::new(ErrorCode::CorruptImage, "JPEG dimension too large"))
}

fn corrupt(e: turbojpeg::Error) -> Error {
    Error::new(ErrorCode::CorruptImage, format!("corrupt JPG image: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_follows_pillow_draft() {
        // Pillow: scale = min(W // w, H // h); the largest of 8, 4, 2, 1 not above it.
        assert_eq!(draft_scale(400, 533, 224, 224), 1);
        assert_eq!(draft_scale(447, 900, 224, 224), 1); // ceil(447 / 2) = 224 would fit: still 1
        assert_eq!(draft_scale(448, 448, 224, 224), 2);
        assert_eq!(draft_scale(2000, 1500, 224, 224), 4);
        assert_eq!(draft_scale(1500, 2000, 224, 224), 4);
        assert_eq!(draft_scale(1792, 1792, 224, 224), 8);
        assert_eq!(draft_scale(20_000, 20_000, 224, 224), 8);
        assert_eq!(draft_scale(100, 100, 224, 224), 1);
        assert_eq!(draft_scale(2000, 1500, 0, 224), 1);
    }
}
