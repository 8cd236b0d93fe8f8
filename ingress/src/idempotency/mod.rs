//! Idempotent requests: a request id the caller chose (`X-Request-Id`, `Clothesline-Request-Id`)
//! names one piece of work, across every ingress replica, for the idempotency window.
//!
//! [`Idempotent`] wraps the backend. A request with a caller's id claims its id in the JetStream
//! key-value bucket `clothesline-results` (a revision-checked write of a pending [`Record`]: the
//! body's hash, this ingress, the deadline), runs, then writes its answer over the claim; the
//! bucket's max age (the window, set by `clothesline-provision`) drops it later. Whoever finds the
//! id taken reads the entry: another body is `id_conflict` (409); an answer is returned as it is
//! (no second inference); a pending claim is watched until its answer comes (attached), the claim
//! is deleted (a transient failure: the caller claims the id and runs it anew), the caller's
//! deadline passes, or the claim's own deadline passes (its owner is gone: the caller takes the
//! claim over with a revision-checked write). Which answers are kept: [`record::is_kept`].
//!
//! The claimed request runs on a task of its own, so it finishes and records its answer for the
//! retry even when its caller goes away; such requests are never cancelled
//! ([`crate::backend::Job::caller_id`]). Requests without a caller's id pass straight through:
//! no bucket round trip.

pub mod record;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use futures::future::BoxFuture;
use protocol::messages::Outcome;
use protocol::meta::now_ms;
use protocol::names::RESULTS_BUCKET;
use protocol::{Error, ErrorCode, Prediction};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::backend::{Backend, Job, deadline_error};
use crate::metrics::Metrics;
use record::{Record, Seen, State};

/// The backend with idempotent requests: see the module's documentation.
#[derive(Clone)]
pub struct Idempotent {
    inner: Arc<dyn Backend>,
    js: jetstream::Context,
    /// The bucket, looked up on first use (it may be provisioned after the ingress starts).
    store: Arc<OnceCell<kv::Store>>,
    /// This ingress's instance id, written in its claims.
    owner: String,
    metrics: Metrics,
}

/// A job's deadline as a timer, and the time the caller gave it, for the error message.
#[derive(Debug, Clone, Copy)]
struct Limit {
    at: Instant,
    timeout: Duration,
}

impl Limit {
    fn of(job: &Job) -> Self {
        Self {
            at: Instant::from_std(job.deadline().instant()),
            timeout: job.timeout,
        }
    }

    /// Runs `fut` until the deadline; past it, `deadline_exceeded`.
    async fn bound<T>(self, fut: impl Future<Output = T>) -> Result<T, Error> {
        tokio::time::timeout_at(self.at, fut)
            .await
            .map_err(|_| deadline_error(self.timeout))
    }
}

impl Idempotent {
    pub fn new(
        inner: Arc<dyn Backend>,
        js: jetstream::Context,
        owner: String,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner,
            js,
            store: Arc::default(),
            owner,
            metrics,
        }
    }

    async fn store(&self) -> Result<&kv::Store, Error> {
        self.store
            .get_or_try_init(|| self.js.get_key_value(RESULTS_BUCKET))
            .await
            .map_err(|e| unavailable("the results bucket is not available (not provisioned?)", e))
    }

    fn count(&self, outcome: &str) {
        self.metrics.idempotent.with_label_values(&[outcome]).inc();
    }

    async fn submit_once(&self, job: Job) -> Result<Prediction, Error> {
        let deadline = Limit::of(&job);
        let kv = self.store().await?.clone();
        let key = record::key(&job.meta.request_id);
        let body = record::body_hash(
            &job.content_type,
            &job.payload,
            job.meta.model_version.as_deref(),
        );
        let claim = Record {
            body: body.clone(),
            state: State::Pending {
                owner: self.owner.clone(),
                deadline_ms: job.deadline().as_ms(),
            },
        }
        .encode();
        let mut expected = 0;
        let mut attached = false;
        let mut pause = Backoff::default();
        loop {
            match deadline
                .bound(kv.update(&key, claim.clone(), expected))
                .await?
            {
                Ok(revision) => {
                    self.count("new");
                    // The run ends by the caller's deadline, which is the claim's (it may have
                    // waited on another request first).
                    return self.run(kv, key, revision, body, job).await;
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) if transient(e.kind() == kv::UpdateErrorKind::TimedOut, &e) => {
                    // The bucket's stream between leaders, or the connection between servers.
                    tracing::debug!(error = %e, "claiming the request id again");
                    deadline.bound(pause.next()).await?;
                    continue;
                }
                Err(e) => return Err(unavailable("cannot claim the request id", e)),
            }
            let entry = match deadline.bound(kv.entry(key.clone())).await? {
                Ok(entry) => entry,
                Err(e) if transient(e.kind() == kv::EntryErrorKind::TimedOut, &e) => {
                    tracing::debug!(error = %e, "reading the request id's entry again");
                    deadline.bound(pause.next()).await?;
                    continue;
                }
                Err(e) => return Err(unavailable("cannot read the request id's entry", e)),
            };
            let mut seen = record::read(entry.as_ref(), &body, now_ms())?;
            if let Seen::Pending {
                revision,
                stale_at_ms,
            } = seen
            {
                attached = true;
                let _waiting = Waiting::new(&self.metrics);
                seen = attach(&kv, &key, &body, (revision, stale_at_ms), deadline).await?;
            }
            match seen {
                Seen::Free(revision) | Seen::Pending { revision, .. } => expected = revision,
                Seen::Conflict => {
                    self.count("conflict");
                    return Err(record::conflict(&job.meta.request_id));
                }
                Seen::Done(outcome) => {
                    self.count(if attached { "attached" } else { "cached" });
                    return outcome;
                }
            }
        }
    }

    /// Runs a claimed request on a task of its own and records its outcome over the claim.
    async fn run(
        &self,
        kv: kv::Store,
        key: String,
        revision: u64,
        body: String,
        job: Job,
    ) -> Result<Prediction, Error> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let outcome = inner.submit(job).await;
            settle(&kv, &key, revision, body, &outcome).await;
            outcome
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::new(
                ErrorCode::Internal,
                format!("the request's task failed: {e}"),
            ))
        })
    }
}

impl Backend for Idempotent {
    fn submit(&self, job: Job) -> BoxFuture<'static, Result<Prediction, Error>> {
        if !job.caller_id {
            return self.inner.submit(job);
        }
        let this = self.clone();
        Box::pin(async move { this.submit_once(job).await })
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move {
            this.inner.ready().await?;
            this.store().await.map(|_| ()).map_err(|e| e.message)
        })
    }
}

/// Watches the entry of a pending request until it is answered (`Done`), freed (`Free`: deleted,
/// or its claim stale and to be taken over at its revision) or taken by another body
/// (`Conflict`), or until the caller's deadline.
async fn attach(
    kv: &kv::Store,
    key: &str,
    body: &str,
    (mut revision, stale_at_ms): (u64, u64),
    deadline: Limit,
) -> Result<Seen, Error> {
    let mut watch = deadline
        .bound(kv.watch_with_history(key))
        .await?
        .map_err(|e| unavailable("cannot watch the request id's entry", e))?;
    let mut stale_at = instant_of(stale_at_ms);
    loop {
        let next = tokio::select! {
            () = tokio::time::sleep_until(deadline.at) => return Err(deadline_error(deadline.timeout)),
            () = tokio::time::sleep_until(stale_at) => return Ok(Seen::Free(revision)),
            next = watch.next() => next,
        };
        let entry = match next {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(unavailable("the watch of the request id failed", e)),
            None => {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    "the watch of the request id ended",
                ));
            }
        };
        match record::read(Some(&entry), body, now_ms())? {
            Seen::Pending {
                revision: r,
                stale_at_ms,
            } => {
                revision = r;
                stale_at = instant_of(stale_at_ms);
            }
            settled => return Ok(settled),
        }
    }
}

/// Writes a kept outcome over the claim, or deletes the claim (revision-checked both).
async fn settle(
    kv: &kv::Store,
    key: &str,
    revision: u64,
    body: String,
    outcome: &Result<Prediction, Error>,
) {
    let written = if record::is_kept(outcome) {
        let outcome = match outcome.clone() {
            Ok(p) => Outcome::Prediction(p),
            Err(e) => Outcome::Error(e),
        };
        let done = Record {
            body,
            state: State::Done { outcome },
        };
        kv.update(key, done.encode(), revision)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        kv.delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = written {
        // Taken over after its deadline, or the bucket is out of reach: the next caller of
        // the id runs it again.
        tracing::warn!(error = %e, "could not record the outcome of a request with a caller's id");
    }
}

/// Counts a request in `ingress_idempotent_waiting` while it lives.
struct Waiting(prometheus::IntGauge);

impl Waiting {
    fn new(metrics: &Metrics) -> Self {
        metrics.idempotent_waiting.inc();
        Self(metrics.idempotent_waiting.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether a failed bucket call may succeed when made again soon: no answer in time, or
/// JetStream saying the bucket's stream has no leader for the moment (the words a publish is
/// retried on, [`tierkit::publish::is_temporary_unavailability`]), or nobody answering at all (no
/// responders while a leader is elected).
fn transient(timed_out: bool, e: &(impl std::error::Error + ?Sized)) -> bool {
    let mut detail = e.to_string();
    if let Some(source) = e.source() {
        detail = format!("{detail}: {source}");
    }
    timed_out
        || tierkit::publish::is_temporary_unavailability(&detail)
        || detail.to_ascii_lowercase().contains("no responders")
}

/// Pauses between calls to the bucket made again: 25 ms, doubling up to 500 ms.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(25))
    }
}

impl Backoff {
    fn next(&mut self) -> tokio::time::Sleep {
        let pause = self.0;
        self.0 = (self.0 * 2).min(Duration::from_millis(500));
        tokio::time::sleep(pause)
    }
}

/// The tokio instant of a time in ms since the epoch.
fn instant_of(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms()))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failure(&'static str);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failure {}

    #[test]
    fn elections_are_retried_refusals_are_not() {
        assert!(transient(true, &Failure("timed out")));
        assert!(transient(
            false,
            &Failure("JetStream system temporarily unavailable (error code 10008)")
        ));
        assert!(transient(false, &Failure("nats: no responders")));
        assert!(!transient(false, &Failure("permissions violation")));
        assert!(!transient(
            false,
            &Failure("maximum messages exceeded (error code 10077)")
        ));
    }

    #[tokio::test]
    async fn the_pause_doubles_up_to_half_a_second() {
        let mut pause = Backoff::default();
        let mut seen = vec![];
        for _ in 0..7 {
            seen.push(pause.0.as_millis());
            drop(pause.next());
        }
        assert_eq!(seen, [25, 50, 100, 200, 400, 500, 500]);
    }
}
