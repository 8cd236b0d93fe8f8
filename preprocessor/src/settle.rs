//! One request message from the requests stream, end to end: read its metadata, run the
//! [`Pipeline`], publish the tensor (awaiting the PubAck) and only then acknowledge the request;
//! on error, redeliver later (transient, deliveries left) or reply with the error and terminate.
//! Every error is logged with the request id: nothing is dropped silently.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, AckKind};
use protocol::cancel::CancelSet;
use protocol::meta::{content_type, now_ms};
use protocol::names::*;
use protocol::{Error, ErrorCode, Reply, RequestMeta, TensorMessage};
use tracing::Instrument as _;

use crate::metrics::{Metrics, outcome};
use crate::pipeline::{Arrival, Pipeline};

/// What the handler needs besides the pipeline.
#[derive(Clone)]
pub struct Settler {
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub metrics: Metrics,
    /// Nak delay for transient errors.
    pub retry_delay: Duration,
    /// The consumer's `max_deliver`; 0 or less means unlimited.
    pub max_deliver: i64,
    /// Ids whose callers went away; `None` when cancellations are ignored.
    pub cancelled: Option<CancelSet>,
}

/// How a request that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// The tensor is in the tensors stream.
    Published,
    /// Its caller went away; skipped at the step named.
    Cancelled(&'static str),
}

/// What to do with a request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nak with the retry delay: JetStream redelivers it.
    Retry,
    /// Reply with the error and remove the request (Term, or Ack for an expired one).
    Fail,
}

/// Retry only transient errors, only when deliveries are left, and only when the retry would
/// start before the request's deadline.
pub fn decide(
    error: &Error,
    delivered: i64,
    max_deliver: i64,
    remaining: Option<Duration>,
    retry_delay: Duration,
) -> Decision {
    let deliveries_left = max_deliver <= 0 || delivered < max_deliver;
    let time_left = remaining.is_none_or(|r| r > retry_delay);
    if error.is_transient() && deliveries_left && time_left {
        Decision::Retry
    } else {
        Decision::Fail
    }
}

/// A failed tensor publish: no answer or no stream is `unavailable`, a refusal by the stream
/// (full, discard new) is `queue_full`, both transient; a tensor over the server's max payload is
/// `internal` (retrying cannot help).
pub fn publish_error_code(kind: PublishErrorKind) -> ErrorCode {
    match kind {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => ErrorCode::Unavailable,
        PublishErrorKind::MaxPayloadExceeded => ErrorCode::Internal,
        _ => ErrorCode::QueueFull,
    }
}

/// Whether an error reply may be published on `subject`: a plain subject, not a wildcard, not a
/// system subject and not one of the streams' subjects (a reply there would be stored as work).
pub fn reply_subject_ok(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 1024
        && !subject.starts_with('$')
        && !subject.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        && !subject.split('.').any(str::is_empty)
        && subject != REQUESTS_SUBJECT
        && subject != TENSORS_SUBJECT
}

/// The delivery facts of a message.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    stream_sequence: u64,
    delivered: i64,
    published_ms: Option<u64>,
}

impl Delivery {
    fn of(msg: &jetstream::Message) -> Self {
        match msg.info() {
            Ok(info) => Self {
                stream_sequence: info.stream_sequence,
                delivered: info.delivered,
                published_ms: SystemTime::from(info.published)
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64),
            },
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "message without delivery info");
                Self {
                    stream_sequence: 0,
                    delivered: 1,
                    published_ms: None,
                }
            }
        }
    }
}

/// The request's metadata; a malformed deadline still yields the id and reply subject, so the
/// error can be answered.
fn read_meta(headers: Option<&HeaderMap>, sequence: u64) -> (RequestMeta, Option<Error>) {
    let fallback = || format!("seq-{sequence}");
    match RequestMeta::from_headers(headers, fallback) {
        Ok(meta) => (meta, None),
        Err(error) => {
            let mut without_deadline = headers.cloned().unwrap_or_default();
            without_deadline.insert(HEADER_DEADLINE, "");
            let meta =
                RequestMeta::from_headers(Some(&without_deadline), fallback).unwrap_or_else(|_| {
                    RequestMeta {
                        request_id: fallback(),
                        reply_to: None,
                        deadline_ms: None,
                        traceparent: None,
                    }
                });
            (meta, Some(error))
        }
    }
}

impl Settler {
    /// Handles one message to the end; never fails (errors are settled and logged).
    pub async fn handle(&self, pipeline: &Pipeline, msg: jetstream::Message) {
        let received_at_ms = now_ms();
        let delivery = Delivery::of(&msg);
        let (meta, meta_error) = read_meta(msg.headers.as_ref(), delivery.stream_sequence);
        let arrival = Arrival {
            received_at_ms,
            queue_ms: delivery
                .published_ms
                .map(|p| received_at_ms.saturating_sub(p) as f64),
        };
        let result = match meta_error {
            Some(error) => Err(error),
            None => self.work(pipeline, &msg, &meta, arrival).await,
        };
        match result {
            Ok(Done::Cancelled(when)) => {
                self.metrics.outcome(outcome::CANCELLED);
                tracing::debug!(request_id = %meta.request_id, when, "cancelled by its caller; skipped");
                if let Err(e) = msg.ack().await {
                    tracing::warn!(request_id = %meta.request_id, error = %e, "cannot ack request");
                }
            }
            Ok(Done::Published) => {
                self.metrics.outcome(outcome::OK);
                tracing::debug!(request_id = %meta.request_id, "tensor published");
                if let Err(e) = msg.double_ack().await {
                    // The tensor is stored; a redelivery is de-duplicated by Nats-Msg-Id.
                    tracing::warn!(request_id = %meta.request_id, error = %e, "cannot ack request");
                }
            }
            Err(error) => self.settle_error(&msg, &meta, delivery, error).await,
        }
    }

    /// Fetches, preprocesses and publishes, unless the request is (or gets, while it downloads)
    /// cancelled.
    async fn work(
        &self,
        pipeline: &Pipeline,
        msg: &jetstream::Message,
        meta: &RequestMeta,
        arrival: Arrival,
    ) -> Result<Done, Error> {
        if self.is_cancelled(meta) {
            return Ok(Done::Cancelled("before preprocessing"));
        }
        let ct = content_type(msg.headers.as_ref());
        let download = crate::trace::download_span();
        let fetched = pipeline
            .fetch(meta, ct.as_deref(), msg.payload.clone())
            .instrument(download.clone())
            .await;
        crate::trace::record_download(&download, &fetched, |f| f.image.len());
        let fetched = fetched?;
        if self.is_cancelled(meta) {
            return Ok(Done::Cancelled("before decoding"));
        }
        let tensor = pipeline.finish(fetched, arrival).await?;
        self.publish_tensor(meta, &tensor).await?;
        Ok(Done::Published)
    }

    fn is_cancelled(&self, meta: &RequestMeta) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|set| set.contains(&meta.request_id))
    }

    /// Publishes the tensor to the tensors stream and waits for the PubAck; see
    /// [`publish_error_code`] for the failures.
    async fn publish_tensor(
        &self,
        meta: &RequestMeta,
        tensor: &TensorMessage,
    ) -> Result<(), Error> {
        let mut headers = meta.to_headers(CONTENT_TYPE_MSGPACK);
        let _span = crate::trace::publish_span(&mut headers, tensor.data.len());
        let refused = |e: PublishError| {
            Error::new(
                publish_error_code(e.kind()),
                format!("cannot publish the tensor to {TENSORS_STREAM}: {e}"),
            )
        };
        let ack = self
            .js
            .publish_with_headers(TENSORS_SUBJECT, headers, tensor.encode().into())
            .await
            .map_err(refused)?;
        ack.await.map(|_| ()).map_err(refused)
    }

    async fn settle_error(
        &self,
        msg: &jetstream::Message,
        meta: &RequestMeta,
        delivery: Delivery,
        error: Error,
    ) {
        self.metrics.error(error.code);
        crate::trace::record_failure(&error);
        let id = meta.request_id.as_str();
        let decision = decide(
            &error,
            delivery.delivered,
            self.max_deliver,
            meta.remaining(),
            self.retry_delay,
        );
        if decision == Decision::Retry {
            self.metrics.outcome(outcome::RETRY);
            tracing::warn!(
                request_id = id, code = %error.code, error = %error.message,
                delivered = delivery.delivered, "transient failure; the request will be redelivered"
            );
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(self.retry_delay))).await {
                tracing::warn!(request_id = id, error = %e, "cannot nak; redelivered after ack wait");
            }
            return;
        }
        self.metrics.outcome(outcome::ERROR);
        tracing::error!(
            request_id = id, code = %error.code, error = %error.message,
            delivered = delivery.delivered, reply_to = meta.reply_to.as_deref().unwrap_or("-"),
            "request failed"
        );
        self.reply_error(meta, error.clone()).await;
        // An expired request is done with, not a poison message.
        let kind = if error.code == ErrorCode::DeadlineExceeded {
            AckKind::Ack
        } else {
            AckKind::Term
        };
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!(request_id = id, error = %e, "cannot settle the failed request");
        }
    }

    /// Publishes the error reply over core NATS, if anyone listens; no flush.
    async fn reply_error(&self, meta: &RequestMeta, error: Error) {
        let Some(reply_to) = meta.reply_to.as_deref() else {
            return;
        };
        if !reply_subject_ok(reply_to) {
            tracing::warn!(request_id = %meta.request_id, reply_to, "refusing to reply on this subject");
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_REQUEST_ID, meta.request_id.as_str());
        headers.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
        headers.insert(HEADER_ERROR, error.code.as_str());
        if let Some(t) = &meta.traceparent {
            headers.insert(HEADER_TRACEPARENT, t.as_str());
        }
        let body = Reply::error(meta.request_id.clone(), error).encode();
        if let Err(e) = self
            .client
            .publish_with_headers(reply_to.to_owned(), headers, body.into())
            .await
        {
            tracing::warn!(request_id = %meta.request_id, reply_to, error = %e, "cannot publish the error reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: ErrorCode) -> Error {
        Error::new(code, "x")
    }

    #[test]
    fn only_transient_errors_with_deliveries_and_time_left_are_retried() {
        let d = Duration::from_secs(1);
        let timeout = err(ErrorCode::DownloadTimeout);
        assert_eq!(decide(&timeout, 1, 5, None, d), Decision::Retry);
        assert_eq!(decide(&timeout, 5, 5, None, d), Decision::Fail);
        assert_eq!(decide(&timeout, 9, -1, None, d), Decision::Retry);
        let soon = Some(Duration::from_millis(500));
        assert_eq!(decide(&timeout, 1, 5, soon, d), Decision::Fail);
        let later = Some(Duration::from_secs(5));
        assert_eq!(decide(&timeout, 1, 5, later, d), Decision::Retry);
        assert_eq!(
            decide(&err(ErrorCode::QueueFull), 1, 5, None, d),
            Decision::Retry
        );
        assert_eq!(
            decide(&err(ErrorCode::OriginError), 1, 5, None, d),
            Decision::Fail
        );
        let busy = Error::transient(ErrorCode::OriginError, "origin answered 503");
        assert_eq!(decide(&busy, 1, 5, None, d), Decision::Retry);
        assert_eq!(decide(&busy, 5, 5, None, d), Decision::Fail);
        assert_eq!(
            decide(&err(ErrorCode::CorruptImage), 1, 5, None, d),
            Decision::Fail
        );
    }

    #[test]
    fn refused_publishes_are_transient_unless_they_can_never_fit() {
        assert_eq!(
            publish_error_code(PublishErrorKind::Other),
            ErrorCode::QueueFull
        );
        assert_eq!(
            publish_error_code(PublishErrorKind::TimedOut),
            ErrorCode::Unavailable
        );
        assert!(publish_error_code(PublishErrorKind::Other).is_transient());
        let too_big = publish_error_code(PublishErrorKind::MaxPayloadExceeded);
        assert!(!too_big.is_transient());
    }

    #[test]
    fn replies_go_only_to_plain_subjects() {
        assert!(reply_subject_ok("clothesline.replies.ingress-1"));
        assert!(reply_subject_ok("_INBOX.abc"));
        for bad in [
            "",
            "a b",
            "a.*",
            "a.>",
            "$JS.API.x",
            "a..b",
            TENSORS_SUBJECT,
            REQUESTS_SUBJECT,
        ] {
            assert!(!reply_subject_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn bad_deadline_keeps_id_and_reply_subject() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_REQUEST_ID, "r1");
        h.insert(HEADER_REPLY_TO, "clothesline.replies.i");
        h.insert(HEADER_DEADLINE, "soon");
        let (meta, error) = read_meta(Some(&h), 7);
        assert_eq!(error.map(|e| e.code), Some(ErrorCode::BadRequest));
        assert_eq!(meta.request_id, "r1");
        assert_eq!(meta.reply_to.as_deref(), Some("clothesline.replies.i"));
        let (meta, error) = read_meta(None, 7);
        assert!(error.is_none());
        assert_eq!(meta.request_id, "seq-7");
    }
}
