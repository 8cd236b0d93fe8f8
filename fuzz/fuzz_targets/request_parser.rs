//! The request side of the wire contract: a request message's NATS headers
//! (`RequestMeta::from_headers`, `meta::content_type`) and its payload
//! (`RequestPayload::parse`, `ClassifyRequest::from_json`). Input layout: see
//! `clothesline_fuzz::decode_request` (content-type selector, header mask, headers, payload).
//!
//! Asserts no panic, and: errors carry the codes the contract documents; a parsed image is the
//! payload unchanged under a normalised `image/*` or octet-stream type; a URL request agrees with
//! `ClassifyRequest::from_json`; metadata read from headers survives `to_headers` and back.

#![no_main]

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use clothesline_fuzz::decode_request;
use libfuzzer_sys::fuzz_target;
use protocol::messages::RequestPayload;
use protocol::meta::{self, RequestMeta};
use protocol::names::HEADER_CONTENT_TYPE;
use protocol::{ClassifyRequest, ErrorCode};

fuzz_target!(|data: &[u8]| {
    let case = decode_request(data);

    // Headers as they can arrive over NATS: a name with control characters, spaces or ':' and a
    // value with CR/LF cannot travel, so those are left out.
    let mut headers = HeaderMap::new();
    for (name, value) in &case.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    let content_type = match &case.content_type {
        Some(ct) if case.ct_in_header => {
            if let Ok(value) = HeaderValue::from_str(ct) {
                headers.insert(HEADER_CONTENT_TYPE, value);
            }
            meta::content_type(Some(&headers))
        }
        other => other.clone(),
    };
    let headers = (!headers.is_empty()).then_some(&headers);

    match RequestMeta::from_headers(headers, || "fallback-id".to_owned()) {
        Ok(m) => {
            assert!(!m.request_id.is_empty());
            let back = RequestMeta::from_headers(Some(&m.to_headers("application/json")), || {
                panic!("to_headers always writes the request id")
            })
            .expect("metadata written by to_headers reads back");
            assert_eq!(back, m);
            let _ = (m.expired(), m.remaining());
        }
        Err(e) => {
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{e:?}");
            assert!(!e.meta.request_id.is_empty());
        }
    }

    let payload = Bytes::copy_from_slice(&case.payload);
    let as_json = ClassifyRequest::from_json(&case.payload);
    if let Err(e) = &as_json {
        assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    }
    match RequestPayload::parse(content_type.as_deref(), payload.clone()) {
        Ok(RequestPayload::Url(request)) => {
            assert_eq!(as_json.ok(), Some(request));
        }
        Ok(RequestPayload::Image {
            content_type: mime,
            bytes,
        }) => {
            assert!(!bytes.is_empty());
            assert_eq!(bytes, payload);
            assert!(
                mime.starts_with("image/") || mime == "application/octet-stream",
                "{mime:?}"
            );
            assert!(
                !mime.contains(';')
                    && mime.trim() == mime
                    && !mime.bytes().any(|b| b.is_ascii_uppercase()),
                "{mime:?}"
            );
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::BadRequest | ErrorCode::NotAnImage | ErrorCode::UnsupportedMediaType
                ),
                "{e:?}"
            );
            let _ = (e.to_json_body(), e.code.http_status());
        }
    }
});
