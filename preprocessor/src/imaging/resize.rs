//! Stretch an RGB8 image to exactly `width x height` with antialiased bilinear convolution, the
//! same filter and fixed-point arithmetic as Pillow's `Image.resize(..., BILINEAR,
//! reducing_gap=None)` (`fast_image_resize`'s `Convolution(Bilinear)` follows Pillow), with the
//! best SIMD extension of the CPU (AVX2, SSE4.1, NEON).

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use protocol::{Error, ErrorCode};

/// Intermediate buffers larger than this are freed after use rather than kept for the next image.
const MAX_KEPT_BUFFERS: usize = 16 << 20;

thread_local! {
    /// One resizer per thread: its intermediate buffer is reused from image to image.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// `image` -> `height * width * 3` bytes. An image that already has the size is returned as is,
/// as PIL does.
pub fn resize_rgb8(image: RgbImage, width: u32, height: u32) -> Result<Vec<u8>, Error> {
    if image.dimensions() == (width, height) {
        return Ok(image.into_raw());
    }
    let (src_width, src_height) = image.dimensions();
    resize_raw(image.as_raw(), src_width, src_height, width, height)
}

/// Raw RGB8 pixels (`src_height * src_width * 3` bytes) -> `height * width * 3` bytes.
pub fn resize_raw(
    src: &[u8],
    src_width: u32,
    src_height: u32,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, Error> {
    if width == 0 || height == 0 {
        return Err(internal(format!("output size {width}x{height} is empty")));
    }
    let src = ImageRef::new(src_width, src_height, src, PixelType::U8x3)
        .map_err(|e| internal(format!("source {src_width}x{src_height}: {e}")))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER
        .with(|cell| {
            let mut resizer = cell.borrow_mut();
            let resized = resizer.resize(&src, &mut dst, &options);
            if resizer.size_of_internal_buffers() > MAX_KEPT_BUFFERS {
                resizer.reset_internal_buffers();
            }
            resized
        })
        .map_err(|e| {
            internal(format!(
                "resize {src_width}x{src_height} -> {width}x{height}: {e}"
            ))
        })?;
    Ok(dst.into_vec())
}

fn internal(message: String) -> Error {
    Error::new(ErrorCode::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_images_stay_uniform_and_sizes_are_exact() {
        let img = RgbImage::from_pixel(37, 501, image::Rgb([10, 200, 77]));
        let out = resize_rgb8(img, 224, 224).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
        assert!(out.chunks_exact(3).all(|p| p == [10, 200, 77]));
    }

    #[test]
    fn same_size_is_returned_unchanged() {
        let img = RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let raw = img.as_raw().clone();
        assert_eq!(resize_rgb8(img, 4, 3).unwrap(), raw);
    }

    #[test]
    fn downscaling_averages_like_pillow() {
        // Pillow: Image.frombytes("RGB", (2, 1), bytes([0,0,0, 255,255,255]))
        //   .resize((1, 1), Image.BILINEAR) -> (128, 128, 128)
        let out = resize_raw(&[0, 0, 0, 255, 255, 255], 2, 1, 1, 1).unwrap();
        assert_eq!(out, [128, 128, 128]);
        assert!(resize_raw(&[0; 3], 1, 1, 0, 5).is_err());
        assert!(resize_raw(&[0; 2], 1, 1, 1, 1).is_err());
    }
}
