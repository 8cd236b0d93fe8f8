//! Stretch an RGB8 image to exactly `width x height` with antialiased bilinear convolution, the
//! same filter as Pillow's `Image.resize(..., BILINEAR, reducing_gap=None)`
//! (`fast_image_resize`'s `Convolution(Bilinear)` follows Pillow; its 16-bit fixed-point
//! coefficients put about one output value in nine one level off Pillow's), with the best SIMD
//! extension of the CPU (AVX2, SSE4.1, NEON).
//!
//! Two sources: packed RGB, and RGBX (four bytes a pixel, the fourth ignored), which is what
//! the JPEG decoder writes fastest and what the resizer reads fastest; either way the result is
//! packed RGB.

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
    /// The RGBX result of [`resize_rgbx`] before its padding is dropped, reused.
    static RGBX_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
    let mut dst = vec![0; width as usize * height as usize * 3];
    resize_into(
        src,
        PixelType::U8x3,
        (src_width, src_height),
        &mut dst,
        (width, height),
    )?;
    Ok(dst)
}

/// RGBX pixels (`src_height * src_width * 4` bytes, every fourth byte ignored) -> `height * width
/// * 3` bytes of RGB, the same values [`resize_raw`] gives for the RGB pixels.
pub fn resize_rgbx(
    src: &[u8],
    src_width: u32,
    src_height: u32,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, Error> {
    RGBX_OUT.with(|cell| {
        let mut rgbx = cell.borrow_mut();
        let len = width as usize * height as usize * 4;
        if rgbx.len() < len {
            rgbx.resize(len, 0);
        }
        let result = resize_into(
            src,
            PixelType::U8x4,
            (src_width, src_height),
            &mut rgbx[..len],
            (width, height),
        )
        .map(|()| rgbx_to_rgb(&rgbx[..len]));
        if rgbx.capacity() > MAX_KEPT_BUFFERS {
            *rgbx = Vec::new();
        }
        result
    })
}

/// RGBX -> RGB: drops every fourth byte.
pub fn rgbx_to_rgb(rgbx: &[u8]) -> Vec<u8> {
    let mut rgb = vec![0; rgbx.len() / 4 * 3];
    for (out, px) in rgb.chunks_exact_mut(3).zip(rgbx.chunks_exact(4)) {
        out.copy_from_slice(&px[..3]);
    }
    rgb
}

/// Resizes `src` (`src_size`, pixels of `pixel_type`) into `dst` (`dst_size`, the same type).
fn resize_into(
    src: &[u8],
    pixel_type: PixelType,
    (src_width, src_height): (u32, u32),
    dst: &mut [u8],
    (width, height): (u32, u32),
) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(internal(format!("output size {width}x{height} is empty")));
    }
    let src = ImageRef::new(src_width, src_height, src, pixel_type)
        .map_err(|e| internal(format!("source {src_width}x{src_height}: {e}")))?;
    let mut dst = Image::from_slice_u8(width, height, dst, pixel_type)
        .map_err(|e| internal(format!("destination {width}x{height}: {e}")))?;
    // The fourth byte of RGBX is padding, not alpha: nothing to premultiply.
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .use_alpha(false);
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
        })
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

    #[test]
    fn rgbx_gives_the_rgb_result() {
        let (w, h) = (37u32, 53u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        // The padding byte changes from pixel to pixel: it must not leak into the colours.
        let rgbx: Vec<u8> = rgb
            .chunks_exact(3)
            .enumerate()
            .flat_map(|(i, p)| [p[0], p[1], p[2], (i * 13) as u8])
            .collect();
        for (dw, dh) in [(20, 20), (37, 9), (64, 80), (37, 53)] {
            assert_eq!(
                resize_rgbx(&rgbx, w, h, dw, dh).unwrap(),
                resize_raw(&rgb, w, h, dw, dh).unwrap(),
                "{dw}x{dh}"
            );
        }
        assert!(resize_rgbx(&rgbx, w, h, 0, 1).is_err());
        assert!(resize_rgbx(&rgbx[..10], w, h, 5, 5).is_err());
    }
}
