//! Image bytes -> the model's input: `preprocess_image` with a 224x224 output and a 4-megapixel
//! cap (bombs are refused from the header, before any pixel is decoded). Covers format
//! sniffing, the JPEG stream walk and EXIF read, libjpeg-turbo (not instrumented: C), the
//! `image` crate's PNG, GIF, WebP and BMP decoders, orientation and the resize.
//!
//! Asserts no panic, and: `Ok` is exactly 224*224*3 bytes; errors carry the codes
//! `preprocess_image` documents (not_an_image, unsupported_format, corrupt_image, too_large),
//! never `internal`.

#![no_main]

use clothesline_preprocessor::imaging::{ImageSpec, preprocess_image};
use libfuzzer_sys::fuzz_target;
use protocol::ErrorCode;

const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    let spec = ImageSpec::new(224, 224).with_max_pixels(MAX_PIXELS);
    match preprocess_image(data, &spec) {
        Ok(tensor) => assert_eq!(tensor.len(), 224 * 224 * 3),
        Err(e) => assert!(
            matches!(
                e.code,
                ErrorCode::NotAnImage
                    | ErrorCode::UnsupportedFormat
                    | ErrorCode::CorruptImage
                    | ErrorCode::TooLarge
            ),
            "{e:?}"
        ),
    }
});
