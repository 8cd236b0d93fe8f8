//! One request message from the requests stream, end to end: read its metadata (a message whose
//! reply subject fails [`protocol::reply_to::validate_request`] is terminated unanswered), run the
//! [`Pipeline`], publish the tensor (awaiting the PubAck) and only then acknowledge the request;
//! on error, redeliver later (transient, deliveries left) or reply with the error and terminate.
//! Every error is logged with the request id: nothing is dropped silently.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, AckKind};
use protocol::cancel::CancelSet;
use protocol::meta::{MalformedMeta, content_type, fallback_request_id, now_ms};
use protocol::names::*;
use protocol::reply_to;
use protocol::{Error, ErrorCode, Reply, RequestMeta, TensorMessage};
use tierkit::publish::{PublishFailure, publish_until};
use tracing::Instrument as _;

use crate::metrics::{Metrics, outcome};
use crate::pipeline::{Arrival, Gate, Pipeline};
use crate::router::Router;

/// How long a tensor publish is retried in place (a stream electing a leader takes seconds); past
/// it, or past the request's deadline if sooner, the request goes back to the queue.
const MAX_PUBLISH_RETRY: Duration = Duration::from_secs(10);

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
    /// Which model version each request is prepared for.
    pub router: Router,
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

/// The tensor's `Nats-Msg-Id`: the request's place in its stream, so the tensor of a redelivered
/// request is stored once, while two requests that share a request id (callers choose them) never
/// swallow each other's tensor. The request id when the place is unknown.
fn tensor_msg_id(meta: &RequestMeta, delivery: Delivery) -> String {
    match delivery.stream_sequence {
        0 => meta.request_id.clone(),
        seq => format!("{REQUESTS_STREAM}-{seq}"),
    }
}

/// The request's metadata, and the error of headers that do not parse (still answered to the
/// caller with what could be read: id, reply subject, trace context).
fn read_meta(headers: Option<&HeaderMap>, sequence: u64) -> (RequestMeta, Option<Error>) {
    match RequestMeta::from_headers(headers, || fallback_request_id(REQUESTS_STREAM, sequence)) {
        Ok(meta) => (meta, None),
        Err(bad) => {
            let MalformedMeta { meta, error } = *bad;
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
        let lane = msg.subject.as_str();
        if let Some(Err(error)) = meta
            .reply_to
            .as_deref()
            .map(|r| reply_to::validate_request(lane, r))
        {
            self.refuse_reply_to(&msg, &meta, error).await;
            return;
        }
        let arrival = Arrival {
            received_at_ms,
            queue_ms: delivery
                .published_ms
                .map(|p| received_at_ms.saturating_sub(p) as f64),
        };
        let result = match meta_error {
            Some(error) => Err(error),
            None => {
                let msg_id = tensor_msg_id(&meta, delivery);
                self.work(pipeline, &msg, &meta, arrival, &msg_id).await
            }
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
        msg_id: &str,
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
        let pin = meta
            .model_version
            .as_deref()
            .or(fetched.model_version.as_deref());
        let target = self.router.route(&meta.request_id, pin).await?;
        self.metrics
            .model_requests
            .with_label_values(&[target.model.version.as_str()])
            .inc();
        let cancelled = || self.is_cancelled(meta);
        let gate = Gate {
            meta,
            cancelled: &cancelled,
        };
        let Some(tensor) = pipeline.finish_for(fetched, arrival, gate, &target).await? else {
            return Ok(Done::Cancelled("while waiting to be decoded"));
        };
        self.publish_tensor(meta, &tensor, msg_id).await?;
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
        msg_id: &str,
    ) -> Result<(), Error> {
        let mut headers = meta.to_headers(CONTENT_TYPE_MSGPACK);
        headers.insert(HEADER_NATS_MSG_ID, msg_id);
        let _span = crate::trace::publish_span(&mut headers, tensor.data.len());
        let refused = |e: PublishError| {
            Error::new(
                publish_error_code(e.kind()),
                format!("cannot publish the tensor to {TENSORS_STREAM}: {e}"),
            )
        };
        // A tensors stream between leaders, or a connection moving to another server, is
        // retried here for a while (same Nats-Msg-Id: stored once); longer outages go back to the
        // queue as a transient failure.
        let remaining = meta.remaining().unwrap_or(MAX_PUBLISH_RETRY);
        let until = tokio::time::Instant::now() + remaining.min(MAX_PUBLISH_RETRY);
        let payload = tensor.encode().into();
        match publish_until(&self.js, TENSORS_SUBJECT, headers, payload, until).await {
            Ok(_) => Ok(()),
            Err(PublishFailure::Refused(e)) => Err(refused(e)),
            Err(PublishFailure::Deadline) => Err(Error::new(
                ErrorCode::Unavailable,
                format!("{TENSORS_STREAM} did not store the tensor in time"),
            )),
        }
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

    /// A request whose reply subject is invalid: counted, terminated, never answered (publishing
    /// there could cost this tier its connection, or reach a subject nobody should write to).
    async fn refuse_reply_to(&self, msg: &jetstream::Message, meta: &RequestMeta, error: Error) {
        self.metrics.invalid_reply_subjects.inc();
        self.metrics.outcome(outcome::ERROR);
        self.metrics.error(error.code);
        tracing::warn!(request_id = %meta.request_id, error = %error.message,
            "request terminated unanswered: invalid reply subject");
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(request_id = %meta.request_id, error = %e, "cannot terminate the request");
        }
    }

    /// Publishes the error reply over core NATS, if anyone listens (on a subject [`handle`]
    /// validated); no flush.
    ///
    /// [`handle`]: Settler::handle
    async fn reply_error(&self, meta: &RequestMeta, error: Error) {
        let reply = Reply::error(meta.request_id.clone(), error);
        tierkit::reply::send(&self.client, meta, &reply).await;
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
        assert_eq!(meta.request_id, "CLOTHESLINE_REQUESTS-7");
    }
}
