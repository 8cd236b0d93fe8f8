//! One error type with stable codes, used by every tier, and its mapping to HTTP status codes.
//!
//! The code is the contract: clients branch on `error.code`, never on the message. Over HTTP an
//! error is `{"error": {"code": ..., "message": ...}}` with [`ErrorCode::http_status`]; over NATS
//! it is the same JSON in a [`crate::Reply`] plus the `Clothesline-Error` header.

use serde::{Deserialize, Serialize};

/// Stable error codes. Serialized in snake_case; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, missing or non-string `url`, bad header).
    BadRequest,
    /// The URL does not parse or uses a scheme other than http/https.
    InvalidUrl,
    /// The URL resolves to an address the preprocessor refuses (loopback, private, ...).
    BlockedAddress,
    /// The body or the downloaded image is larger than allowed.
    TooLarge,
    /// The request's content type is not one the API accepts.
    UnsupportedMediaType,
    /// The bytes are not an image at all.
    NotAnImage,
    /// An image, but in a format that is not supported.
    UnsupportedFormat,
    /// A supported format, but the data is broken (truncated, bad header, too many pixels).
    CorruptImage,
    /// The origin server answered with an error status.
    OriginError,
    /// The origin could not be reached (DNS, connection refused or reset).
    OriginUnreachable,
    /// The download took longer than allowed.
    DownloadTimeout,
    /// The request's deadline passed before it was answered.
    DeadlineExceeded,
    /// This ingress has too many requests in flight.
    Overloaded,
    /// The work queue is full (JetStream refused the publish).
    QueueFull,
    /// A dependency (NATS, a stream) is not available right now.
    Unavailable,
    /// A tensor message is malformed or was made for another model or shape.
    BadTensor,
    /// The model failed to run on this input.
    InferenceFailed,
    /// Anything else; a bug.
    Internal,
    /// No such path (HTTP only).
    NotFound,
    /// The path exists, but not with this method (HTTP only).
    MethodNotAllowed,
    /// The request line's URI is longer than the server reads (HTTP only).
    UriTooLong,
    /// The request headers are larger or more numerous than the server reads (HTTP only).
    HeadersTooLarge,
    /// The request id was used within the idempotency window for a request with another body.
    IdConflict,
    /// The request is pinned to a model version that is not published.
    UnknownModelVersion,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        Self::BadRequest,
        Self::InvalidUrl,
        Self::BlockedAddress,
        Self::TooLarge,
        Self::UnsupportedMediaType,
        Self::NotAnImage,
        Self::UnsupportedFormat,
        Self::CorruptImage,
        Self::OriginError,
        Self::OriginUnreachable,
        Self::DownloadTimeout,
        Self::DeadlineExceeded,
        Self::Overloaded,
        Self::QueueFull,
        Self::Unavailable,
        Self::BadTensor,
        Self::InferenceFailed,
        Self::Internal,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::IdConflict,
        Self::UnknownModelVersion,
    ];

    /// The stable string form, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidUrl => "invalid_url",
            Self::BlockedAddress => "blocked_address",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotAnImage => "not_an_image",
            Self::UnsupportedFormat => "unsupported_format",
            Self::CorruptImage => "corrupt_image",
            Self::OriginError => "origin_error",
            Self::OriginUnreachable => "origin_unreachable",
            Self::DownloadTimeout => "download_timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Overloaded => "overloaded",
            Self::QueueFull => "queue_full",
            Self::Unavailable => "unavailable",
            Self::BadTensor => "bad_tensor",
            Self::InferenceFailed => "inference_failed",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::IdConflict => "id_conflict",
            Self::UnknownModelVersion => "unknown_model_version",
        }
    }

    /// Parses the stable string form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status this code maps to; the only place that mapping lives.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::InvalidUrl | Self::BlockedAddress => 400,
            Self::TooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::NotAnImage | Self::UnsupportedFormat | Self::CorruptImage => 422,
            Self::Overloaded => 429,
            Self::OriginError | Self::OriginUnreachable => 502,
            Self::QueueFull | Self::Unavailable => 503,
            Self::DownloadTimeout | Self::DeadlineExceeded => 504,
            Self::BadTensor | Self::InferenceFailed | Self::Internal => 500,
            Self::NotFound | Self::UnknownModelVersion => 404,
            Self::MethodNotAllowed => 405,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::IdConflict => 409,
        }
    }

    /// Whether retrying the same request later may succeed (NATS: Nak with delay, not Term).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::OriginUnreachable
                | Self::DownloadTimeout
                | Self::Overloaded
                | Self::QueueFull
                | Self::Unavailable
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code and a human-readable message. This is also the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// Transient although its code is not always (an origin's 503 is `origin_error` like its
    /// 404, but worth retrying). Local to the process that made it: never on the wire.
    #[serde(skip)]
    transient: bool,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transient: false,
        }
    }

    /// An error worth retrying whatever its code says ([`Error::is_transient`]).
    pub fn transient(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::new(code, message)
        }
    }

    /// Whether retrying the same request later may succeed: its code is transient
    /// ([`ErrorCode::is_transient`]), or it was made with [`Error::transient`].
    pub fn is_transient(&self) -> bool {
        self.transient || self.code.is_transient()
    }

    /// `{"error": {"code": ..., "message": ...}}`, the body of every HTTP error.
    pub fn to_json_body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_serde_and_parse() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..600).contains(&code.http_status()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn transience_is_the_codes_unless_marked_and_stays_off_the_wire() {
        assert!(!Error::new(ErrorCode::OriginError, "404").is_transient());
        assert!(Error::new(ErrorCode::OriginUnreachable, "reset").is_transient());
        let busy = Error::transient(ErrorCode::OriginError, "origin answered 503");
        assert!(busy.is_transient());
        let json = busy.to_json_body();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "origin_error", "message": "origin answered 503"}})
        );
        let back: Error = serde_json::from_value(json["error"].clone()).expect("decode");
        assert!(!back.is_transient());
    }

    #[test]
    fn statuses_follow_the_api_contract() {
        assert_eq!(ErrorCode::BadRequest.http_status(), 400);
        assert_eq!(ErrorCode::TooLarge.http_status(), 413);
        assert_eq!(ErrorCode::UnsupportedMediaType.http_status(), 415);
        assert_eq!(ErrorCode::CorruptImage.http_status(), 422);
        assert_eq!(ErrorCode::OriginError.http_status(), 502);
        assert_eq!(ErrorCode::DeadlineExceeded.http_status(), 504);
        assert_eq!(ErrorCode::Overloaded.http_status(), 429);
        assert_eq!(ErrorCode::QueueFull.http_status(), 503);
        assert_eq!(ErrorCode::IdConflict.http_status(), 409);
    }

    #[test]
    fn error_body_has_code_and_message() {
        let body = Error::new(ErrorCode::OriginError, "origin answered 404").to_json_body();
        assert_eq!(body["error"]["code"], "origin_error");
        assert_eq!(body["error"]["message"], "origin answered 404");
    }
}
