//! JPEG decoding with libjpeg-turbo 3 (turbojpeg, built from its bundled source): the decoder
//! Pillow ships, with the same defaults (accurate integer IDCT, fancy upsampling), so a JPEG
//! decodes to the same pixels the model was trained on. CMYK/YCCK JPEGs, which TurboJPEG
//! cannot convert to RGB, are left to the `image` crate.

use image::RgbImage;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat};

/// What the caller should do with a JPEG.
pub enum Decoded {
    /// Decoded to RGB8.
    Rgb(RgbImage),
    /// A colour space TurboJPEG does not turn into RGB (CMYK, YCCK): decode it another way.
    Unsupported,
}

/// Decodes a complete JPEG whose header was already checked against the pixel limit.
pub fn decode(bytes: &[u8]) -> Result<Decoded, turbojpeg::Error> {
    let mut decompressor = Decompressor::new()?;
    let header = decompressor.read_header(bytes)?;
    if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
        return Ok(Decoded::Unsupported);
    }
    let (width, height) = (header.width, header.height);
    let mut pixels = vec![0u8; width * height * 3];
    let image = Image {
        pixels: pixels.as_mut_slice(),
        width,
        pitch: width * 3,
        height,
        format: PixelFormat::RGB,
    };
    decompressor.decompress(bytes, image)?;
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    match (w, h) {
        (Ok(w), Ok(h)) => {
            Ok(RgbImage::from_raw(w, h, pixels).map_or(Decoded::Unsupported, Decoded::Rgb))
        }
        _ => Ok(Decoded::Unsupported),
    }
}
