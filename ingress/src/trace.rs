//! The ingress's spans: one per request (route, status, error code), one per publish to the
//! requests stream, and the `traceparent` each answer carries (see [`tierkit::telemetry`]).

use axum::http::{HeaderMap, HeaderValue};
use protocol::Error;
use protocol::names::HEADER_TRACEPARENT;
use tierkit::telemetry;
use tracing::field::Empty;

/// The span of one request on `route`, child of the caller's `traceparent` when it is valid,
/// and the `traceparent` that goes downstream and back in the answer.
pub fn request_span(
    route: &'static str,
    request_id: &str,
    caller: Option<&str>,
) -> (tracing::Span, String) {
    let span = tracing::info_span!(
        "ingress.request",
        otel.kind = "server",
        http.route = route,
        request_id,
        trace_id = Empty,
        span_id = Empty,
        http.response.status_code = Empty,
        error.code = Empty,
    );
    let traceparent = telemetry::adopt(&span, caller);
    (span, traceparent)
}

/// Records a request's outcome on its span.
pub fn record_outcome(span: &tracing::Span, status: u16, error: Option<&Error>) {
    span.record("http.response.status_code", status);
    if let Some(e) = error {
        telemetry::record_error(span, e.code.as_str(), &e.message);
    }
}

/// A request refused before it was admitted (bad header, overloaded): its span, ended at once,
/// and the `traceparent` its answer carries.
pub fn refused(route: &'static str, caller: Option<&str>, e: &Error) -> String {
    let (span, traceparent) = request_span(route, "-", caller);
    record_outcome(&span, e.code.http_status(), Some(e));
    traceparent
}

/// The span of one publish to the requests stream (until its PubAck), child of the request's
/// `traceparent`; `traceparent` becomes the publish span's own, for the preprocessor.
pub fn publish_span(subject: &str, traceparent: &mut Option<String>) -> tracing::Span {
    let span = tracing::info_span!(
        "ingress.publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = subject,
    );
    *traceparent = Some(telemetry::adopt(&span, traceparent.as_deref()));
    span
}

/// Sets the `traceparent` response header.
pub fn set_header(headers: &mut HeaderMap, traceparent: Option<&str>) {
    if let Some(v) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(HEADER_TRACEPARENT, v);
    }
}
