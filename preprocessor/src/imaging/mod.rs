//! Image bytes -> the model's input tensor, as `model/preprocess.py` does it with PIL:
//!
//! 1. recognise the format from the magic bytes ([`sniff`]): unknown -> `not_an_image`,
//!    known but not served (TIFF, AVIF, HEIC, ...) -> `unsupported_format`;
//! 2. read the header only and refuse images with more than [`ImageSpec::max_pixels`] pixels
//!    before any pixel is decoded, and JPEGs whose decode would cost more than the limits allow
//!    (more than [`ImageSpec::max_scans`] scans, or too many scans for their size) ([`decode`]);
//! 3. decode (first frame of an animation; a JPEG at least 2, 4 or 8 times the output size in
//!    both dimensions at 1/2, 1/4 or 1/8 of its size, as Pillow's `draft` does), convert to
//!    RGB8 (alpha dropped, grayscale, palette and 16-bit expanded), apply the EXIF orientation;
//! 4. stretch to exactly `width x height` with PIL-compatible antialiased bilinear convolution
//!    ([`resize`]); the result is the raw `H*W*3` bytes, row-major, RGB interleaved (uint8 NHWC
//!    without the batch dimension).
//!
//! Everything here is synchronous and CPU-bound: the tier runs it on the blocking pool.

pub mod decode;
pub mod jpeg;
pub mod resize;
pub mod sniff;
pub mod turbo;

use std::time::{Duration, Instant};

use image::ImageFormat;
use protocol::Error;
use protocol::manifest::Manifest;

pub use decode::{decode_rgb8, decode_with};
pub use resize::resize_rgb8;
pub use sniff::sniff_format;

/// Default for [`ImageSpec::max_pixels`]: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// Default for [`ImageSpec::max_scans`]: libjpeg-turbo's own tools suggest 100 (`djpeg
/// -maxscans`); encoders write 1 (baseline) to about 10 (progressive).
pub const DEFAULT_MAX_SCANS: u32 = 100;
/// A progressive JPEG may cost at most this many full-size passes: `scans x pixels` is at most
/// `max_pixels x SCAN_PASSES`, so a large image gets fewer scans than a small one.
pub const SCAN_PASSES: u64 = 10;

/// What to produce from an image, and how much of an image to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Images whose header declares more pixels than this are refused before decoding.
    pub max_pixels: u64,
    /// JPEGs with more scans than this, or with `scans x pixels` over `max_pixels x`
    /// [`SCAN_PASSES`], are refused before decoding (and libjpeg-turbo's scan limit is set to it).
    pub max_scans: u32,
    /// Apply the EXIF orientation (as PIL's `ImageOps.exif_transpose`).
    pub exif_orientation: bool,
}

impl ImageSpec {
    /// A `width x height` output, with the default pixel limit and EXIF orientation applied.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_scans: DEFAULT_MAX_SCANS,
            exif_orientation: true,
        }
    }

    /// The model's input size and preprocessing options, from its manifest.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        Self {
            exif_orientation: manifest.preprocessing.exif_orientation,
            ..Self::new(manifest.input.width, manifest.input.height)
        }
    }

    /// The same spec with another pixel limit.
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The same spec with another scan limit.
    pub fn with_max_scans(mut self, max_scans: u32) -> Self {
        self.max_scans = max_scans;
        self
    }

    /// Bytes of one output tensor: `height * width * 3`.
    pub fn output_len(&self) -> usize {
        self.height as usize * self.width as usize * 3
    }
}

/// The result of [`preprocess_image_timed`]: the tensor bytes and what it took to make them.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// `height * width * 3` bytes, RGB interleaved, row-major.
    pub data: Vec<u8>,
    /// The format the image was decoded as.
    pub format: ImageFormat,
    /// Width and height of the decoded image, after DCT scaling (large JPEGs) and EXIF
    /// orientation.
    pub source_size: (u32, u32),
    /// Sniffing, decoding and colour conversion.
    pub decode: Duration,
    /// Orientation (when the image has one) and resizing.
    pub resize: Duration,
}

/// Encoded image bytes -> `spec.height * spec.width * 3` RGB bytes, the same (within rounding) as
/// `model/preprocess.py`'s `load_image`.
///
/// Errors: `not_an_image`, `unsupported_format`, `corrupt_image` (truncated, undecodable, more
/// pixels than `spec.max_pixels`, more scans than allowed, or a decoder needing more memory than
/// allowed).
pub fn preprocess_image(bytes: &[u8], spec: &ImageSpec) -> Result<Vec<u8>, Error> {
    preprocess_image_timed(bytes, spec).map(|p| p.data)
}

/// [`preprocess_image`], also reporting the format, the source size and the time of each step.
pub fn preprocess_image_timed(bytes: &[u8], spec: &ImageSpec) -> Result<Preprocessed, Error> {
    let started = Instant::now();
    decode::decode_with(bytes, spec, |decoded| {
        let decode = started.elapsed();
        let (format, source_size) = (decoded.format, decoded.size());
        let resize_started = Instant::now();
        let data = decoded.into_resized(spec.width, spec.height)?;
        Ok(Preprocessed {
            data,
            format,
            source_size,
            decode,
            resize: resize_started.elapsed(),
        })
    })
}
