//! The gpu-worker's spans (see [`tierkit::telemetry`]): one per tensor message, child of the
//! preprocessor's tensor publish, with its queue wait (publish time to pull) and batch wait (pull
//! to batch start); one span per batch (size, device, model version), linked both ways with the
//! spans of its items, as a batch serves many traces; one span per reply.

use std::time::{Instant, SystemTime};

use async_nats::jetstream::Message;
use protocol::messages::Outcome;
use protocol::names::{HEADER_REQUEST_ID, HEADER_TRACEPARENT};
use protocol::{ModelRef, Reply, RequestMeta};
use tierkit::telemetry::{self, at_ms, link, past_span, span_context};
use tracing::field::Empty;

use crate::engine::EngineInfo;

fn header<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// The span of one tensor message, child of the `traceparent` it carries.
pub fn item_span(msg: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "gpu_worker.request",
        otel.kind = "consumer",
        request_id = header(msg, HEADER_REQUEST_ID).unwrap_or("-"),
        trace_id = Empty,
        span_id = Empty,
        error.code = Empty,
    );
    telemetry::adopt(&span, header(msg, HEADER_TRACEPARENT));
    span
}

/// The current (item) span's queue wait: from the tensor's publish to now.
pub fn queue_wait(queued_at_ms: u64) {
    let now = SystemTime::now();
    past_span(
        &tracing::Span::current(),
        "gpu_worker.queue_wait",
        (at_ms(queued_at_ms), now),
        Vec::new(),
    );
}

/// The span of one batch, linked with each of its items' spans (whose batch wait, from
/// `admitted` to now, is recorded).
pub fn batch_span<'a>(
    info: &EngineInfo,
    model: &ModelRef,
    items: impl Iterator<Item = (&'a tracing::Span, Instant)>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "gpu_worker.batch",
        batch.size = Empty,
        device = ?info.device,
        model.name = %model.name,
        model.version = %model.version,
    );
    let batch_cx = span_context(&span);
    let now = SystemTime::now();
    let mut size = 0u64;
    for (item, admitted) in items {
        size += 1;
        let since = now.checked_sub(admitted.elapsed()).unwrap_or(now);
        past_span(item, "gpu_worker.batch_wait", (since, now), Vec::new());
        link(item, batch_cx.clone());
        link(&span, span_context(item));
    }
    span.record("batch.size", size);
    span
}

/// The span of publishing a reply, child of the current (item) span; an error reply's code is
/// recorded on both.
pub fn reply_span(meta: &RequestMeta, reply: &Reply) -> tracing::Span {
    let span = tracing::info_span!(
        "gpu_worker.reply",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = meta.reply_to.as_deref().unwrap_or("-"),
        error.code = Empty,
    );
    if let Outcome::Error(e) = &reply.outcome {
        telemetry::record_error(&span, e.code.as_str(), &e.message);
        telemetry::record_error(&tracing::Span::current(), e.code.as_str(), &e.message);
    }
    span
}
