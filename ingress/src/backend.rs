//! The boundary between the HTTP API and the pipeline: [`Backend::submit`] queues one request and
//! waits for its reply. [`NatsBackend`] is the real one (JetStream publish + reply routing);
//! unit tests of the API use a fake.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::messages::Outcome;
use protocol::meta::Deadline;
use protocol::names::{
    CANCEL_SUBJECT, HEADER_NATS_MSG_ID, INGRESS_REQUESTS_SUBJECT, REQUESTS_STREAM, TENSORS_STREAM,
};
use protocol::{Error, ErrorCode, Prediction, RequestMeta};

use crate::replies::ReplyRouter;
use tierkit::publish::{PublishFailure, publish_until};

/// One request to classify.
#[derive(Debug, Clone)]
pub struct Job {
    /// The request's metadata from [`crate::call::Call`]; the backend adds the reply subject.
    pub meta: RequestMeta,
    /// The id is the caller's (or derived from it): the request is idempotent
    /// ([`crate::idempotency`]) and never cancelled, since a retry under the same id would
    /// find the id in the workers' cancelled set and be dropped.
    pub caller_id: bool,
    /// `application/json` for `{"url"}`, or the image's own type.
    pub content_type: String,
    pub payload: Bytes,
    /// The time the caller gave the request, for messages (the deadline is `meta.deadline`).
    pub timeout: Duration,
}

impl Job {
    /// When the caller stops waiting: the meta's deadline, `timeout` from now without one.
    pub fn deadline(&self) -> Deadline {
        self.meta
            .deadline
            .unwrap_or_else(|| Deadline::after(self.timeout))
    }
}

pub trait Backend: Send + Sync + 'static {
    /// Queues the job and waits for its result, at most until its deadline.
    fn submit(&self, job: Job) -> BoxFuture<'static, Result<Prediction, Error>>;
    /// `Ok` when requests can be queued now.
    fn ready(&self) -> BoxFuture<'static, Result<(), String>>;
}

#[derive(Clone)]
pub struct NatsBackend {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub router: ReplyRouter,
}

impl Backend for NatsBackend {
    fn submit(&self, job: Job) -> BoxFuture<'static, Result<Prediction, Error>> {
        let this = self.clone();
        Box::pin(async move { this.submit_inner(job).await })
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move {
            if !tierkit::runtime::nats_connected(&this.client) {
                return Err("not connected to NATS".into());
            }
            for stream in [REQUESTS_STREAM, TENSORS_STREAM] {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    this.js.get_stream_no_info(stream),
                )
                .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("stream {stream}: {e}")),
                    Err(_) => return Err(format!("stream {stream}: no answer from JetStream")),
                }
            }
            Ok(())
        })
    }
}

impl NatsBackend {
    async fn submit_inner(&self, job: Job) -> Result<Prediction, Error> {
        let deadline = tokio::time::Instant::from_std(job.deadline().instant());
        // Register before publishing, so a fast reply cannot arrive before anyone waits; the
        // request's reply subject is its own, with a token only this ingress knows.
        let mut waiter = self.router.register(&job.meta.request_id);
        let mut meta = job.meta.with_reply_to(waiter.reply_to.clone());
        let publish_span =
            crate::trace::publish_span(INGRESS_REQUESTS_SUBJECT, &mut meta.traceparent);
        let mut headers = meta.to_headers(&job.content_type);
        // De-duplicated by the token, not by the caller's id: callers choose ids, and two
        // requests sharing one must not swallow each other.
        headers.insert(HEADER_NATS_MSG_ID, waiter.token());
        // From the first publish on the request may be queued: if this future is dropped (the
        // HTTP client went away) or the deadline passes before the reply, tell the workers not
        // to bother.
        let mut cancel = CancelOnDrop {
            client: self.client.clone(),
            id: (!job.caller_id).then(|| meta.request_id.clone()),
        };
        // A leader election or a reconnect is retried until the deadline (same Nats-Msg-Id, the
        // token: stored once).
        match publish_until(
            &self.js,
            INGRESS_REQUESTS_SUBJECT,
            headers,
            job.payload,
            deadline,
        )
        .await
        {
            Err(PublishFailure::Deadline) => return Err(deadline_error(job.timeout)),
            Err(PublishFailure::Refused(e)) => {
                // Not queued: a cancellation would only spoil a retry under the same id.
                cancel.id = None;
                return Err(publish_error(e));
            }
            Ok((_, attempts)) if attempts > 1 => {
                tracing::info!(request_id = %meta.request_id, attempts, "request queued after retries");
            }
            Ok(_) => {}
        }
        drop(publish_span);
        let reply = tokio::time::timeout_at(deadline, waiter.reply()).await;
        if matches!(reply, Ok(Some(_))) {
            cancel.id = None;
        }
        match reply {
            Err(_) => Err(deadline_error(job.timeout)),
            Ok(None) => Err(Error::new(ErrorCode::Unavailable, "reply routing stopped")),
            Ok(Some(reply)) => match reply.outcome {
                Outcome::Prediction(p) => Ok(p),
                Outcome::Error(e) => Err(e),
            },
        }
    }
}

/// Publishes the request id on `clothesline.cancel` when dropped while still armed.
struct CancelOnDrop {
    client: async_nats::Client,
    id: Option<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let client = self.client.clone();
            // Drop cannot await: the publish goes on a task (a core-NATS publish only buffers).
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = client.publish(CANCEL_SUBJECT, id.into()).await {
                        tracing::debug!(error = %e, "could not publish a cancellation");
                    }
                });
            }
        }
    }
}

pub(crate) fn deadline_error(timeout: Duration) -> Error {
    Error::new(
        ErrorCode::DeadlineExceeded,
        format!(
            "no answer within the deadline of {} ms",
            timeout.as_millis()
        ),
    )
}

/// JetStream refusals mapped to stable codes: a full work queue (discard-new) is `queue_full`.
pub fn publish_error(e: jetstream::context::PublishError) -> Error {
    match e.kind() {
        PublishErrorKind::StreamNotFound => Error::new(
            ErrorCode::Unavailable,
            "the requests stream does not exist (not provisioned?)",
        ),
        PublishErrorKind::MaxPayloadExceeded => {
            Error::new(ErrorCode::TooLarge, "request larger than NATS accepts")
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Error::new(
            ErrorCode::Unavailable,
            format!("JetStream did not store the request: {e}"),
        ),
        _ => {
            let detail = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            if is_queue_full(&detail) {
                Error::new(
                    ErrorCode::QueueFull,
                    "the requests queue is full; retry later",
                )
            } else {
                Error::new(
                    ErrorCode::Unavailable,
                    format!("JetStream refused the request: {detail}"),
                )
            }
        }
    }
}

/// The server's words for a stream at its limits with discard-new (error code 10077 and kin).
fn is_queue_full(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "maximum messages",
        "maximum bytes",
        "resource limits exceeded",
        "10077",
        "10047",
    ]
    .iter()
    .any(|needle| d.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_new_refusals_read_as_queue_full() {
        assert!(is_queue_full(
            "maximum messages exceeded (error code 10077)"
        ));
        assert!(is_queue_full("Maximum bytes exceeded"));
        assert!(!is_queue_full("permissions violation"));
    }
}
