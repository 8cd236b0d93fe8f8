//! Queueing a message through a leader election or a reconnect: on a NATS cluster a publish can
//! fail for a moment while a stream elects a leader (no responders, or no PubAck in
//! time) or while the connection moves to another server (broken pipe). Those are retried, with
//! a short backoff, until a deadline; the caller sees an answer, not the election. The ingress
//! queues requests with it, the preprocessor tensors.
//! A retry cannot store a message twice: every publish carries a `Nats-Msg-Id` of its own (the
//! ingress's per-request token; `<requests stream>-<sequence>` for a tensor), and the stream keeps
//! one message per id within its duplicate window.
//! Refusals that a retry cannot change (a full queue, a message over the size limit, a
//! permissions violation) are returned at once.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;
use tokio::time::Instant;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why a request could not be queued.
#[derive(Debug)]
pub enum PublishFailure {
    /// JetStream refused it, or kept failing until the deadline: its last error.
    Refused(PublishError),
    /// The deadline passed before any attempt was acknowledged.
    Deadline,
}

/// Publishes `payload` on `subject` and waits for the stream's acknowledgement, retrying the
/// failures a leader election or a reconnect causes until `deadline`. Returns the number of
/// attempts with the acknowledgement.
pub async fn publish_until(
    js: &jetstream::Context,
    subject: &'static str,
    headers: HeaderMap,
    payload: Bytes,
    deadline: Instant,
) -> Result<(PublishAck, u32), PublishFailure> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let attempt = async {
            js.publish_with_headers(subject, headers.clone(), payload.clone())
                .await?
                .await
        };
        let error = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => return Err(PublishFailure::Deadline),
            Ok(Ok(ack)) => return Ok((ack, attempts)),
            Ok(Err(e)) => e,
        };
        if !is_retryable(&error) {
            return Err(PublishFailure::Refused(error));
        }
        let next = Instant::now() + backoff;
        if next >= deadline {
            return Err(PublishFailure::Refused(error));
        }
        tracing::debug!(error = %error, attempts, "request not stored yet; retrying");
        tokio::time::sleep_until(next).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether a failed publish may succeed when tried again soon: no PubAck in time, a broken
/// connection, no responders (a stream between leaders answers nobody), or JetStream saying the
/// cluster or the stream is unavailable for now.
pub fn is_retryable(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => true,
        PublishErrorKind::Other => {
            let detail = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            is_temporary_unavailability(&detail)
        }
        _ => false,
    }
}

/// JetStream's words for a cluster or stream that is unavailable for the moment: no meta or
/// stream leader (10008 "JetStream system temporarily unavailable"), a stream offline (10118);
/// and for a retry that came while the first attempt (same `Nats-Msg-Id`) is still being
/// replicated (10158 "duplicate message id is in process", nats-server 2.12: seen when a client
/// moved to another server after a partition; tried again, it gets the first attempt's PubAck).
pub fn is_temporary_unavailability(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "temporarily unavailable",
        "10008",
        "stream is offline",
        "10118",
        "no leader",
        "duplicate message id is in process",
        "10158",
    ]
    .iter()
    .any(|needle| d.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elections_and_reconnects_are_retried_refusals_are_not() {
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
        ] {
            assert!(is_retryable(&PublishError::new(kind)), "{kind:?}");
        }
        for kind in [
            PublishErrorKind::MaxPayloadExceeded,
            PublishErrorKind::WrongLastMessageId,
            PublishErrorKind::Other,
        ] {
            assert!(!is_retryable(&PublishError::new(kind)), "{kind:?}");
        }
    }

    #[test]
    fn cluster_unavailability_reads_as_temporary() {
        assert!(is_temporary_unavailability(
            "JetStream system temporarily unavailable (error code 10008)"
        ));
        assert!(is_temporary_unavailability("stream is offline"));
        assert!(is_temporary_unavailability(
            "duplicate message id is in process (code 409, error code 10158)"
        ));
        assert!(!is_temporary_unavailability(
            "maximum messages exceeded (error code 10077)"
        ));
    }
}
