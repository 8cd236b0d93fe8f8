//! JPEG stream walk, without decoding. The JPEG decoder is lenient: it fills a truncated image
//! with grey and reports success, where PIL (libjpeg) raises "image file is truncated". This walks
//! the marker segments and entropy-coded data and requires the end-of-image marker; on the way
//! it finds the EXIF block, as Pillow does (the first `APP1` segment starting `Exif\0\0`).

use protocol::{Error, ErrorCode};

const SOI: u8 = 0xd8;
const EOI: u8 = 0xd9;
const SOS: u8 = 0xda;
const APP1: u8 = 0xe1;
const TEM: u8 = 0x01;
const EXIF_PREFIX: &[u8] = b"Exif\0\0";

/// What [`scan`] found in a complete JPEG stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanned<'a> {
    /// The TIFF structure of the first EXIF segment before the image data (after `Exif\0\0`).
    pub exif: Option<&'a [u8]>,
    /// Start-of-scan segments: 1 for a baseline JPEG, about 10 for a usual progressive one. A
    /// progressive decoder walks the whole image once per scan, so the decode costs about
    /// `scans x pixels` whatever the file's size.
    pub scans: u32,
}

/// `Ok` when `bytes` is a JPEG stream whose segments are all present and which reaches its
/// end-of-image marker (anything after it is ignored, as decoders do); `corrupt_image` otherwise.
pub fn check_complete(bytes: &[u8]) -> Result<(), Error> {
    scan(bytes).map(|_| ())
}

/// [`check_complete`], also returning the EXIF block.
pub fn scan(bytes: &[u8]) -> Result<Scanned<'_>, Error> {
    if bytes.get(..2) != Some(&[0xff, SOI]) {
        return Err(corrupt("no start-of-image marker"));
    }
    let mut found = Scanned::default();
    let mut in_header = true;
    let mut pos = 2;
    loop {
        let (marker, at) = next_marker(bytes, pos).ok_or_else(truncated)?;
        match marker {
            EOI => return Ok(found),
            // Standalone markers: no length field.
            TEM | 0xd0..=0xd7 => pos = at + 2,
            _ => {
                let len = bytes
                    .get(at + 2..at + 4)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .ok_or_else(truncated)?;
                if len < 2 {
                    return Err(corrupt("segment length below 2"));
                }
                let end = at + 2 + len;
                if end > bytes.len() {
                    return Err(truncated());
                }
                if marker == APP1 && in_header && found.exif.is_none() {
                    found.exif = bytes[at + 4..end].strip_prefix(EXIF_PREFIX);
                }
                pos = if marker == SOS {
                    in_header = false;
                    found.scans = found.scans.saturating_add(1);
                    skip_entropy_coded(bytes, end).ok_or_else(truncated)?
                } else {
                    end
                };
            }
        }
    }
}

/// The next marker at or after `pos`: its code and the index of its `0xff`. Garbage between
/// segments is skipped (decoders tolerate it); fill bytes (`0xff 0xff`) are skipped.
fn next_marker(bytes: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        // SIMD search: entropy-coded data is most of the stream, with a 0xff every few hundred bytes.
        let ff = pos + memchr::memchr(0xff, bytes.get(pos..)?)?;
        let mut code_at = ff + 1;
        while bytes.get(code_at) == Some(&0xff) {
            code_at += 1;
        }
        match bytes.get(code_at) {
            None => return None,
            Some(0) => pos = code_at + 1,
            Some(&code) => return Some((code, code_at - 1)),
        }
    }
}

/// Skips the entropy-coded data after a start-of-scan header: returns the index of the next
/// marker that is not a stuffed byte (`0xff 0x00`) nor a restart marker (`0xff 0xd0..=0xd7`).
fn skip_entropy_coded(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let (code, at) = next_marker(bytes, pos)?;
        if (0xd0..=0xd7).contains(&code) {
            pos = at + 2;
        } else {
            return Some(at);
        }
    }
}

fn truncated() -> Error {
    corrupt("the JPEG data is truncated (no end-of-image marker)")
}

fn corrupt(what: &str) -> Error {
    Error::new(ErrorCode::CorruptImage, format!("corrupt JPEG: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, an APP0-like segment, SOS with entropy data holding a stuffed byte and a restart
    /// marker, EOI.
    fn minimal() -> Vec<u8> {
        let mut j = vec![0xff, SOI];
        j.extend_from_slice(&[0xff, 0xe0, 0x00, 0x04, 0xaa, 0xbb]);
        j.extend_from_slice(&[0xff, SOS, 0x00, 0x03, 0x01]);
        j.extend_from_slice(&[0x12, 0xff, 0x00, 0x34, 0xff, 0xd0, 0x56]);
        j.extend_from_slice(&[0xff, EOI]);
        j
    }

    #[test]
    fn complete_streams_pass_and_trailing_bytes_are_ignored() {
        check_complete(&minimal()).unwrap();
        let mut trailing = minimal();
        trailing.extend_from_slice(b"garbage");
        check_complete(&trailing).unwrap();
    }

    #[test]
    fn every_truncation_is_refused() {
        let full = minimal();
        for cut in 0..full.len() {
            let err = check_complete(&full[..cut]).unwrap_err();
            assert_eq!(err.code, ErrorCode::CorruptImage, "cut at {cut}");
        }
    }

    #[test]
    fn the_first_exif_segment_before_the_image_data_is_found() {
        let mut j = vec![0xff, SOI];
        j.extend_from_slice(&[0xff, APP1, 0x00, 0x07, b'X', b'M', b'P', b'!', 0]);
        j.extend_from_slice(&[0xff, APP1, 0x00, 0x0c]);
        j.extend_from_slice(b"Exif\0\0II*\0");
        j.extend_from_slice(&[0xff, APP1, 0x00, 0x0c]);
        j.extend_from_slice(b"Exif\0\0MM\0*");
        j.extend_from_slice(&minimal()[2..]);
        assert_eq!(scan(&j).unwrap().exif, Some(&b"II*\0"[..]));
        assert_eq!(scan(&minimal()).unwrap().exif, None);
    }

    #[test]
    fn scans_are_counted() {
        assert_eq!(scan(&minimal()).unwrap().scans, 1);
        let mut j = minimal();
        j.truncate(j.len() - 2);
        for _ in 0..699 {
            j.extend_from_slice(&[0xff, SOS, 0x00, 0x03, 0x01, 0x00]);
        }
        j.extend_from_slice(&[0xff, EOI]);
        assert_eq!(scan(&j).unwrap().scans, 700);
    }

    #[test]
    fn an_eoi_inside_a_segment_does_not_count() {
        // An APP1 segment (e.g. an EXIF thumbnail) containing ff d9, then the stream stops.
        let j = [0xff, SOI, 0xff, 0xe1, 0x00, 0x06, 0xff, EOI, 0x00, 0x00];
        assert!(check_complete(&j).is_err());
    }
}
