//! What the fuzz targets share: the byte layout of a `request_parser` input (also used by
//! `examples/make_seeds.rs` to write the seeds) and the shipped model's input, as
//! `model/manifest.json` declares it.

use protocol::ModelRef;
use protocol::manifest::InputSpec;

/// The shipped model (`model/manifest.json`: name, version).
pub fn shipped_model() -> ModelRef {
    ModelRef {
        name: "clothes-efficientnet-lite0".into(),
        version: "1.0.0".into(),
    }
}

/// The shipped model's input (`model/manifest.json`): 224x224x3 uint8 NHWC.
pub fn shipped_input() -> InputSpec {
    InputSpec {
        height: 224,
        width: 224,
        channels: 3,
        layout: "NHWC".into(),
        dtype: "uint8".into(),
    }
}

/// Content types a request can carry; the input's first byte picks one (modulo
/// `CONTENT_TYPES.len() + 1`; the extra value means "a string read from the input").
pub const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("APPLICATION/JSON"),
    Some("image/jpeg"),
    Some("image/png"),
    Some(" Image/WebP ; q=1"),
    Some("application/octet-stream"),
    Some("multipart/form-data; boundary=xyz"),
    Some("text/plain"),
    Some(""),
    Some(";"),
    Some("\u{130}mage/png"),
];

/// Selector value for "content type read from the input".
pub const FUZZED_CONTENT_TYPE: u8 = CONTENT_TYPES.len() as u8;

/// Header-mask bits (second byte); bits 0..=3 each add one header whose value follows as
/// `[len: u8][len bytes]`, in this order.
pub const FIXED_HEADERS: [&str; 4] = [
    "Clothesline-Request-Id",
    "Clothesline-Reply-To",
    "Clothesline-Deadline",
    "traceparent",
];
/// Bit 4: the content type travels as the `Content-Type` header and is read back with
/// `protocol::meta::content_type` (the preprocessor's path) instead of being passed directly
/// (the ingress's path).
pub const CT_IN_HEADER: u8 = 1 << 4;
/// Bit 5: one more header, `[len][name][len][value]`, with a name from the input.
pub const EXTRA_HEADER: u8 = 1 << 5;

/// One `request_parser` input, decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestCase {
    pub content_type: Option<String>,
    pub ct_in_header: bool,
    /// `(name, value)` pairs, fixed names first.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Layout: `[selector][mask]`, then `[len][content type]` when the selector is
/// [`FUZZED_CONTENT_TYPE`], then the headers the mask selects, then the payload (the rest).
/// Missing bytes read as empty; strings are UTF-8, lossily.
pub fn decode_request(data: &[u8]) -> RequestCase {
    let mut r = Reader(data);
    let selector = r.byte() % (FUZZED_CONTENT_TYPE + 1);
    let mask = r.byte();
    let content_type = if selector == FUZZED_CONTENT_TYPE {
        Some(r.string())
    } else {
        CONTENT_TYPES[usize::from(selector)].map(str::to_owned)
    };
    let mut headers = Vec::new();
    for (bit, name) in FIXED_HEADERS.iter().enumerate() {
        if mask & (1 << bit) != 0 {
            headers.push(((*name).to_owned(), r.string()));
        }
    }
    if mask & EXTRA_HEADER != 0 {
        let name = r.string();
        headers.push((name, r.string()));
    }
    RequestCase {
        content_type,
        ct_in_header: mask & CT_IN_HEADER != 0,
        headers,
        payload: r.0.to_vec(),
    }
}

/// The bytes [`decode_request`] reads as this case, for writing seeds. `content_type` is one of
/// [`CONTENT_TYPES`] or any string (written inline); `headers` are `(bit, value)` for the
/// [`FIXED_HEADERS`].
pub fn encode_request(
    content_type: Option<&str>,
    ct_in_header: bool,
    headers: &[(usize, &str)],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    match CONTENT_TYPES.iter().position(|c| *c == content_type) {
        Some(i) => out.push(i as u8),
        None => out.push(FUZZED_CONTENT_TYPE),
    }
    let mut mask = if ct_in_header { CT_IN_HEADER } else { 0 };
    for (bit, _) in headers {
        mask |= 1 << bit;
    }
    out.push(mask);
    if out[0] == FUZZED_CONTENT_TYPE {
        let ct = content_type.unwrap_or("");
        out.push(ct.len() as u8);
        out.extend_from_slice(ct.as_bytes());
    }
    let mut sorted = headers.to_vec();
    sorted.sort_by_key(|(bit, _)| *bit);
    for (_, value) in sorted {
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn string(&mut self) -> String {
        let len = usize::from(self.byte()).min(self.0.len());
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_round_trips() {
        let bytes = encode_request(
            Some("weird/type"),
            true,
            &[(2, "123"), (0, "id-1")],
            b"{\"url\":\"x\"}",
        );
        let case = decode_request(&bytes);
        assert_eq!(case.content_type.as_deref(), Some("weird/type"));
        assert!(case.ct_in_header);
        assert_eq!(
            case.headers,
            vec![
                ("Clothesline-Request-Id".to_owned(), "id-1".to_owned()),
                ("Clothesline-Deadline".to_owned(), "123".to_owned()),
            ]
        );
        assert_eq!(case.payload, b"{\"url\":\"x\"}");
        assert_eq!(
            decode_request(&encode_request(None, false, &[], b"")),
            RequestCase::default()
        );
    }
}
