//! Format recognition from magic bytes, never from the content type or a file name (both are
//! whatever the sender says). Splits "not an image" from "an image we do not serve".

use image::ImageFormat;
use protocol::{Error, ErrorCode};

/// The formats this tier decodes (the `image` features chosen in the workspace).
pub const SUPPORTED_FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Bmp,
];

/// Whether `format` is one of [`SUPPORTED_FORMATS`].
pub fn is_supported(format: ImageFormat) -> bool {
    SUPPORTED_FORMATS.contains(&format)
}

/// The format of `bytes`, if it is one this tier decodes.
///
/// `not_an_image` when no known image signature matches; `unsupported_format` for images in a
/// format that is recognised but not served (TIFF, AVIF, HEIC, JPEG XL, ...).
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, Error> {
    match image::guess_format(bytes) {
        Ok(format) if is_supported(format) => Ok(format),
        Ok(format) => Err(unsupported(format.extensions_str().first().copied())),
        Err(_) => match other_image_format(bytes) {
            Some(name) => Err(unsupported(Some(name))),
            None => Err(Error::new(
                ErrorCode::NotAnImage,
                format!(
                    "not a recognised image (first bytes {}); send JPEG, PNG, GIF, WebP or BMP",
                    hex_prefix(bytes)
                ),
            )),
        },
    }
}

fn unsupported(name: Option<&str>) -> Error {
    Error::new(
        ErrorCode::UnsupportedFormat,
        format!(
            "{} images are not supported; send JPEG, PNG, GIF, WebP or BMP",
            name.unwrap_or("these").to_ascii_uppercase()
        ),
    )
}

/// Image formats that the `image` crate does not know at all, by signature.
fn other_image_format(bytes: &[u8]) -> Option<&'static str> {
    // ISO base media file format: `....ftyp<brand>`, HEIF/HEIC/AVIF.
    if bytes.get(4..8) == Some(b"ftyp") {
        let brand = bytes.get(8..12)?;
        const HEIF: [&[u8]; 8] = [
            b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
        ];
        if HEIF.contains(&brand) {
            return Some("heif");
        }
        if brand == b"avif" || brand == b"avis" {
            return Some("avif");
        }
        return None;
    }
    const JXL_BOX: &[u8] = b"\0\0\0\x0cJXL \r\n\x87\n";
    const JP2_BOX: &[u8] = b"\0\0\0\x0cjP  \r\n\x87\n";
    if bytes.starts_with(&[0xff, 0x0a]) || bytes.starts_with(JXL_BOX) {
        return Some("jpeg xl");
    }
    if bytes.starts_with(JP2_BOX) || bytes.starts_with(&[0xff, 0x4f, 0xff, 0x51]) {
        return Some("jpeg 2000");
    }
    if bytes.starts_with(b"8BPS") {
        return Some("psd");
    }
    None
}

fn hex_prefix(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "none: empty".into();
    }
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> ErrorCode {
        sniff_format(bytes).expect_err("must be refused").code
    }

    #[test]
    fn served_formats_are_recognised() {
        assert_eq!(
            sniff_format(b"\x89PNG\r\n\x1a\n....").ok(),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            sniff_format(&[0xff, 0xd8, 0xff, 0xe0]).ok(),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(sniff_format(b"GIF89a..").ok(), Some(ImageFormat::Gif));
        assert_eq!(
            sniff_format(b"RIFF\x10\0\0\0WEBPVP8 ").ok(),
            Some(ImageFormat::WebP)
        );
        assert_eq!(sniff_format(b"BM......").ok(), Some(ImageFormat::Bmp));
    }

    #[test]
    fn other_images_are_unsupported_and_the_rest_is_not_an_image() {
        assert_eq!(code(b"II*\0\x08\0\0\0"), ErrorCode::UnsupportedFormat);
        assert_eq!(
            code(b"\0\0\0\x1cftypavif\0\0"),
            ErrorCode::UnsupportedFormat
        );
        assert_eq!(
            code(b"\0\0\0\x18ftypheic\0\0"),
            ErrorCode::UnsupportedFormat
        );
        assert_eq!(code(b"\0\0\0\x18ftypisom\0\0"), ErrorCode::NotAnImage);
        assert_eq!(code(&[0xff, 0x0a, 0x01]), ErrorCode::UnsupportedFormat);
        assert_eq!(
            code(b"<html><body>404</body></html>"),
            ErrorCode::NotAnImage
        );
        assert_eq!(code(b""), ErrorCode::NotAnImage);
        let err = sniff_format(b"\0\0\0\x18ftypheic").unwrap_err();
        assert!(err.message.contains("HEIF"), "{}", err.message);
    }
}
