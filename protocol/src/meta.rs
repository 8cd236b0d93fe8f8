//! Per-request metadata carried in NATS headers from tier to tier: request id, reply subject,
//! [`Deadline`], trace context and model pin; the one request-id rule; the one content-type
//! normalizer. The payload never repeats them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The id of a message published without one (by a plain NATS client): where it sits in its
/// stream, `<stream>-<sequence>`, the same on every delivery.
pub fn fallback_request_id(stream: &str, sequence: u64) -> String {
    format!("{stream}-{sequence}")
}

/// When a request stops being worth an answer: an instant on the wall clock, in milliseconds
/// since the Unix epoch, as it travels in [`HEADER_DEADLINE`] from tier to tier (each tier's
/// clock, so tiers on other machines agree within their clocks' skew). The one form a deadline
/// takes from the ingress to the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(u64);

impl Deadline {
    /// The deadline `at_ms` milliseconds after the epoch.
    pub fn at_ms(at_ms: u64) -> Self {
        Self(at_ms)
    }

    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Self(now_ms().saturating_add(ms))
    }

    /// Milliseconds since the epoch.
    pub fn as_ms(self) -> u64 {
        self.0
    }

    /// Whether it has passed.
    pub fn expired(self) -> bool {
        self.expired_at(now_ms())
    }

    /// Whether it has passed at `now_ms` (ms since the epoch).
    pub fn expired_at(self, now_ms: u64) -> bool {
        now_ms >= self.0
    }

    /// Time left, zero once it has passed.
    pub fn remaining(self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(now_ms()))
    }

    /// The monotonic instant at which [`Self::remaining`] runs out, for timers.
    pub fn instant(self) -> Instant {
        Instant::now() + self.remaining()
    }

    /// Parses a [`HEADER_DEADLINE`] value.
    pub fn parse(value: &str) -> Result<Self, Error> {
        value.trim().parse::<u64>().map(Self).map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("header {HEADER_DEADLINE} must be ms since the epoch, got {value:?}"),
            )
        })
    }
}

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What travels with a request from the ingress (or a NATS client) to its reply, in the NATS
/// headers of each message; the payload never repeats it. Made once where the request enters
/// ([`RequestMeta::new`] and the `with_*` setters, or [`RequestMeta::from_headers`]) and read,
/// never rebuilt, by each tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    pub request_id: String,
    /// Where to publish the reply; `None` means nobody listens (fire and forget).
    pub reply_to: Option<String>,
    pub deadline: Option<Deadline>,
    pub traceparent: Option<String>,
    /// The model version the caller pinned the request to, if any.
    pub model_version: Option<String>,
}

/// Headers that did not parse: the error, and what could be read (id, reply subject, trace
/// context), so the error can still be answered to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedMeta {
    pub meta: RequestMeta,
    pub error: Error,
}

impl RequestMeta {
    /// A request named `request_id`: no reply subject, deadline, trace context or pin yet.
    pub fn new(request_id: impl Into<String>) -> Self {
        Self {
            request_id: request_id.into(),
            reply_to: None,
            deadline: None,
            traceparent: None,
            model_version: None,
        }
    }

    pub fn with_reply_to(mut self, subject: impl Into<String>) -> Self {
        self.reply_to = Some(subject.into());
        self
    }

    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline `timeout` from now.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(Deadline::after(timeout))
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
        if let Some(d) = self.deadline {
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

    /// The headers of this request's reply: its id, JSON, its trace context, and the error code
    /// (`error`) or the model version that answered (`model_version`). Every tier that answers
    /// builds them here, so every reply carries the same.
    pub fn reply_headers(
        &self,
        error: Option<ErrorCode>,
        model_version: Option<&str>,
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_REQUEST_ID, self.request_id.as_str());
        h.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
        if let Some(code) = error {
            h.insert(HEADER_ERROR, code.as_str());
        }
        if let Some(v) = model_version {
            h.insert(HEADER_MODEL_VERSION, v);
        }
        if let Some(t) = &self.traceparent {
            h.insert(HEADER_TRACEPARENT, t.as_str());
        }
        h
    }

    /// Reads the metadata of a message. A message without a request id (published by a plain
    /// NATS client) gets `fallback_id` (see [`fallback_request_id`]). A deadline that is not a
    /// number is a bad request; the error comes with the rest of the metadata, so it can be
    /// answered.
    pub fn from_headers(
        headers: Option<&HeaderMap>,
        fallback_id: impl FnOnce() -> String,
    ) -> Result<Self, Box<MalformedMeta>> {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut meta = Self {
            request_id: get(HEADER_REQUEST_ID).unwrap_or_else(fallback_id),
            reply_to: get(HEADER_REPLY_TO),
            deadline: None,
            traceparent: get(HEADER_TRACEPARENT),
            model_version: get(HEADER_MODEL_VERSION),
        };
        match get(HEADER_DEADLINE)
            .map(|d| Deadline::parse(&d))
            .transpose()
        {
            Ok(deadline) => {
                meta.deadline = deadline;
                Ok(meta)
            }
            Err(error) => Err(Box::new(MalformedMeta { meta, error })),
        }
    }

    /// Whether the deadline has passed (never, without one).
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(Deadline::expired)
    }

    /// Time left until the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(Deadline::remaining)
    }
}

/// The media type of a `Content-Type` value: lower-cased, without parameters
/// (`Image/JPEG; q=1` -> `image/jpeg`). The one normalizer for HTTP and NATS content types.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The media type of a message (see [`media_type`]), if it has a content type.
pub fn content_type(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(HEADER_CONTENT_TYPE))
        .map(|v| media_type(v.as_str()))
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
        let mut m = RequestMeta::new(new_request_id())
            .with_reply_to("clothesline.replies.x")
            .with_timeout(Duration::from_secs(5));
        m.traceparent = Some("00-abc-def-01".into());
        m.model_version = Some("2.0.0".into());
        let h = m.to_headers("application/json");
        assert_eq!(h.get(HEADER_NATS_MSG_ID).unwrap().as_str(), m.request_id);
        let back = RequestMeta::from_headers(Some(&h), || unreachable!()).unwrap();
        assert_eq!(back, m);
        let deadline = back.deadline.unwrap();
        assert!(!back.expired() && !deadline.expired_at(now_ms()));
        assert!(deadline.expired_at(now_ms() + 10_000));
        assert!(back.remaining().unwrap() <= Duration::from_secs(5));
        assert!(
            RequestMeta::new("x")
                .with_deadline(Deadline::at_ms(1))
                .expired()
        );
        assert_eq!(Deadline::at_ms(1).remaining(), Duration::ZERO);
    }

    #[test]
    fn missing_id_gets_fallback_and_bad_deadline_is_refused_with_what_was_read() {
        let fallback = || fallback_request_id("CLOTHESLINE_REQUESTS", 7);
        let m = RequestMeta::from_headers(None, fallback).unwrap();
        assert_eq!(
            (m.request_id.as_str(), m.reply_to, m.deadline),
            ("CLOTHESLINE_REQUESTS-7", None, None)
        );
        let mut h = HeaderMap::new();
        h.insert(HEADER_DEADLINE, "soon");
        h.insert(HEADER_REPLY_TO, "clothesline.replies.x.y");
        h.insert(HEADER_TRACEPARENT, "00-abc-def-01");
        let bad = RequestMeta::from_headers(Some(&h), || "x".into()).unwrap_err();
        assert_eq!(bad.error.code, ErrorCode::BadRequest);
        assert_eq!(bad.meta.request_id, "x");
        assert_eq!(
            bad.meta.reply_to.as_deref(),
            Some("clothesline.replies.x.y")
        );
        assert_eq!(bad.meta.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(bad.meta.deadline, None);
    }

    #[test]
    fn reply_headers_carry_the_trace_and_the_outcome() {
        let mut m = RequestMeta::new("r1");
        m.traceparent = Some("00-abc-def-01".into());
        let h = m.reply_headers(Some(ErrorCode::DeadlineExceeded), None);
        assert_eq!(h.get(HEADER_ERROR).unwrap().as_str(), "deadline_exceeded");
        assert_eq!(h.get(HEADER_TRACEPARENT).unwrap().as_str(), "00-abc-def-01");
        assert_eq!(h.get(HEADER_REQUEST_ID).unwrap().as_str(), "r1");
        let h = m.reply_headers(None, Some("2"));
        assert!(h.get(HEADER_ERROR).is_none());
        assert_eq!(h.get(HEADER_MODEL_VERSION).unwrap().as_str(), "2");
    }

    #[test]
    fn media_types_are_normalized_once() {
        assert_eq!(media_type(" Image/JPEG ; q=1"), "image/jpeg");
        assert_eq!(media_type("application/json"), "application/json");
        assert_eq!(media_type(""), "");
    }
}
