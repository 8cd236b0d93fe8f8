//! The preprocessor's spans (see [`tierkit::telemetry`]): one per request message, child of the
//! ingress's publish, with its queue wait (from the message's publish time), download, decode,
//! resize and tensor publish; the tensor message carries the publish span's `traceparent`.

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::Message;
use protocol::meta::now_ms;
use protocol::names::{HEADER_REQUEST_ID, HEADER_TRACEPARENT, TENSORS_SUBJECT};
use tierkit::telemetry::{self, at_ms, past_span};
use tracing::field::Empty;

fn header<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// The span of one request message, child of the `traceparent` it carries, with its queue wait
/// (publish time to now) as a child span.
pub fn item_span(msg: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "preprocessor.request",
        otel.kind = "consumer",
        request_id = header(msg, HEADER_REQUEST_ID).unwrap_or("-"),
        trace_id = Empty,
        span_id = Empty,
        messaging.delivery_count = Empty,
        error.code = Empty,
    );
    telemetry::adopt(&span, header(msg, HEADER_TRACEPARENT));
    if let Ok(info) = msg.info() {
        span.record("messaging.delivery_count", info.delivered);
        let published = SystemTime::from(info.published);
        past_span(
            &span,
            "preprocessor.queue_wait",
            (published, SystemTime::now()),
            Vec::new(),
        );
    }
    span
}

/// The span of fetching the image: the download for a URL request (its bytes, and which
/// delivery of the request this is: deliveries after the first are retries).
pub fn download_span() -> tracing::Span {
    tracing::info_span!(
        "preprocessor.download",
        download.bytes = Empty,
        error.code = Empty
    )
}

/// Records the outcome of a fetch on its span.
pub fn record_download<T>(
    span: &tracing::Span,
    result: &Result<T, protocol::Error>,
    bytes: impl Fn(&T) -> usize,
) {
    match result {
        Ok(f) => {
            span.record("download.bytes", bytes(f) as u64);
        }
        Err(e) => telemetry::record_error(span, e.code.as_str(), &e.message),
    }
}

/// Decode and resize, as measured on the blocking pool, as two spans of the current one that
/// end now, one after the other.
pub fn decode_and_resize(decode: Duration, resize: Duration) {
    let parent = tracing::Span::current();
    let end = at_ms(now_ms());
    let resize_start = end - resize;
    past_span(
        &parent,
        "preprocessor.decode",
        (resize_start - decode, resize_start),
        Vec::new(),
    );
    past_span(
        &parent,
        "preprocessor.resize",
        (resize_start, end),
        Vec::new(),
    );
}

/// The span of publishing the tensor (until it is dropped), child of the current span; the
/// tensor's headers get its `traceparent`.
pub fn publish_span(headers: &mut HeaderMap, tensor_bytes: usize) -> tracing::Span {
    let span = tracing::info_span!(
        "preprocessor.publish_tensor",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = TENSORS_SUBJECT,
        messaging.message.body.size = tensor_bytes as u64,
    );
    let fallback = headers
        .get(HEADER_TRACEPARENT)
        .map(|v| v.as_str().to_string());
    if let Some(t) = telemetry::traceparent_of(&span, fallback.as_deref()) {
        headers.insert(HEADER_TRACEPARENT, t);
    }
    span
}

/// Records a failed request's error code on the current (request) span.
pub fn record_failure(error: &protocol::Error) {
    telemetry::record_error(
        &tracing::Span::current(),
        error.code.as_str(),
        &error.message,
    );
}
