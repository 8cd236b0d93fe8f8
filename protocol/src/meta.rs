//! Per-request metadata carried in NATS headers from tier to tier: request id, reply subject,
//! deadline and trace context. The payload never repeats them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;

use crate::error::{Error, ErrorCode};
use crate::names::*;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new unique request id.
pub fn new_request_id() -> String {
    nuid::next().to_string()
}

/// Longest request id a caller may choose (`X-Request-Id`, `Clothesline-Request-Id`).
pub const MAX_CALLER_ID_LEN: usize = 128;
/// Longest suffix the ingress appends to a caller's id: `-<index>` of a batch item.
const MAX_DERIVED_SUFFIX_LEN: usize = 1 + 20;
/// Longest request id anywhere: a caller's id and the suffix of an id derived from it.
pub const MAX_REQUEST_ID_LEN: usize = MAX_CALLER_ID_LEN + MAX_DERIVED_SUFFIX_LEN;

/// The one rule for request ids, wherever one is read: 1 to [`MAX_REQUEST_ID_LEN`] characters
/// of `[A-Za-z0-9._-]`. A caller's own id must also fit [`MAX_CALLER_ID_LEN`]
/// ([`valid_caller_id`]), so every id derived from it ([`derived_request_id`]) is valid too.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether a caller may name its request `id` (see [`valid_request_id`]).
pub fn valid_caller_id(id: &str) -> bool {
    id.len() <= MAX_CALLER_ID_LEN && valid_request_id(id)
}

/// The id of the `index`th part of request `parent` (a batch item): `<parent>-<index>`, valid
/// whenever `parent` is a valid caller id.
pub fn derived_request_id(parent: &str, index: usize) -> String {
    format!("{parent}-{index}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    pub request_id: String,
    /// Where to publish the reply; `None` means nobody listens (fire and forget).
    pub reply_to: Option<String>,
    /// Absolute deadline in ms since the Unix epoch.
    pub deadline_ms: Option<u64>,
    pub traceparent: Option<String>,
    /// The model version the caller pinned the request to, if any.
    pub model_version: Option<String>,
}

impl RequestMeta {
    pub fn new(reply_to: Option<String>, timeout: Option<Duration>) -> Self {
        Self {
            request_id: new_request_id(),
            reply_to,
            deadline_ms: timeout.map(|t| now_ms() + t.as_millis() as u64),
            traceparent: None,
            model_version: None,
        }
    }

    /// Headers for a message carrying this request, with its content type. The request id doubles
    /// as `Nats-Msg-Id`, so a publish retried by the client is stored once.
    pub fn to_headers(&self, content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_REQUEST_ID, self.request_id.as_str());
        h.insert(HEADER_NATS_MSG_ID, self.request_id.as_str());
        h.insert(HEADER_CONTENT_TYPE, content_type);
        if let Some(r) = &self.reply_to {
            h.insert(HEADER_REPLY_TO, r.as_str());
        }
        if let Some(d) = self.deadline_ms {
            h.insert(HEADER_DEADLINE, d.to_string());
        }
        if let Some(t) = &self.traceparent {
            h.insert(HEADER_TRACEPARENT, t.as_str());
        }
        if let Some(v) = &self.model_version {
            h.insert(HEADER_MODEL_VERSION, v.as_str());
        }
        h
    }

    /// Reads the metadata of a message. A message without a request id (published by a plain
    /// NATS client) gets `fallback_id`; a deadline that is not a number is a bad request.
    pub fn from_headers(
        headers: Option<&HeaderMap>,
        fallback_id: impl FnOnce() -> String,
    ) -> Result<Self, Error> {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let deadline_ms = match get(HEADER_DEADLINE) {
            None => None,
            Some(d) => Some(d.parse::<u64>().map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("header {HEADER_DEADLINE} must be ms since the epoch, got {d:?}"),
                )
            })?),
        };
        Ok(Self {
            request_id: get(HEADER_REQUEST_ID).unwrap_or_else(fallback_id),
            reply_to: get(HEADER_REPLY_TO),
            deadline_ms,
            traceparent: get(HEADER_TRACEPARENT),
            model_version: get(HEADER_MODEL_VERSION),
        })
    }

    /// Whether the deadline has passed at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_some_and(|d| now_ms >= d)
    }

    /// Time left until the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline_ms
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms())))
    }
}

/// The content type of a message, lower-cased, if any.
pub fn content_type(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(HEADER_CONTENT_TYPE))
        .map(|v| v.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derived_from_every_valid_caller_id_are_valid() {
        let longest = "a".repeat(MAX_CALLER_ID_LEN);
        assert!(valid_caller_id(&longest));
        assert!(!valid_caller_id(&format!("{longest}b")));
        let derived = derived_request_id(&longest, usize::MAX);
        assert!(valid_request_id(&derived), "{derived}");
        assert!(!valid_caller_id(&derived));
        for bad in ["", "not valid!", "a/b", "caf\u{e9}", "a\nb"] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
        assert!(valid_request_id(&new_request_id()));
    }

    #[test]
    fn headers_round_trip() {
        let mut m = RequestMeta::new(
            Some("clothesline.replies.x".into()),
            Some(Duration::from_secs(5)),
        );
        m.traceparent = Some("00-abc-def-01".into());
        m.model_version = Some("2.0.0".into());
        let h = m.to_headers("application/json");
        assert_eq!(h.get(HEADER_NATS_MSG_ID).unwrap().as_str(), m.request_id);
        let back = RequestMeta::from_headers(Some(&h), || unreachable!()).unwrap();
        assert_eq!(back, m);
        assert!(!back.expired_at(now_ms()));
        assert!(back.expired_at(now_ms() + 10_000));
        assert!(back.remaining().unwrap() <= Duration::from_secs(5));
    }

    #[test]
    fn missing_id_gets_fallback_and_bad_deadline_is_refused() {
        let m = RequestMeta::from_headers(None, || "seq-7".into()).unwrap();
        assert_eq!(
            (m.request_id.as_str(), m.reply_to, m.deadline_ms),
            ("seq-7", None, None)
        );
        let mut h = HeaderMap::new();
        h.insert(HEADER_DEADLINE, "soon");
        assert_eq!(
            RequestMeta::from_headers(Some(&h), || "x".into())
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
    }
}
