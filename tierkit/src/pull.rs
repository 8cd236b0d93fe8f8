//! The pull source both worker tiers read their JetStream consumer through: one task (the actor)
//! owns the consumer and hands each message it fetches to the tier over a bounded channel.
//!
//! - **Room.** The source is made with a capacity (the preprocessor's concurrency, the gpu-worker's
//!   batch size). Each message comes with a [`Credit`], one unit of that capacity, held until the
//!   tier drops it (a request handled, a tensor sent to the engine): a pull asks for no more
//!   messages than there are free credits, and none is opened while every credit is held. That
//!   is the backpressure: what the tier cannot start stays on the server for other workers.
//! - **Fetch.** One pull at a time, each expiring after [`PULL_EXPIRES`] on the server.
//! - **Backoff.** A pull that cannot be opened, or fails, is retried after a pause that doubles
//!   from 100 ms up to [`MAX_RESTART_DELAY`] and is reset by the first message that arrives.
//! - **Readiness.** [`PullSource::pulling`] says whether pulling works: the last pull could be
//!   opened and brought messages or ended as asked, not with an error from the server (the
//!   consumer deleted, no JetStream); the tier's readiness reports it.
//! - **Stopping.** On shutdown no pull is opened any more; what arrives for the open pull is not
//!   handed to the tier but given back (nak, no delay) once that pull has ended (at most
//!   [`PULL_EXPIRES`], or the grace's work end when a server gone away never ends it): earlier,
//!   the server could redeliver it into the same pull, where it would bounce and spend its
//!   deliveries. [`PullSource::drain`] does the same for what the tier held but did not start,
//!   and for what was still in the channel; every wait on NATS is bounded by the [`Grace`].
//! - **In progress.** [`in_progress`] tells the server that messages are still being worked on
//!   while a long step runs, so they are not redelivered to another worker meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Grace, bounded};

/// How long one pull waits on the server for messages; a stopping tier waits at most this long
/// for its open pull to end (handing back what arrives meanwhile).
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// The first pause after a failed pull.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between attempts to restart a failed pull.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// One unit of the source's capacity, held with a message until the tier is done with it.
#[derive(Debug)]
pub struct Credit {
    _permit: OwnedSemaphorePermit,
}

/// A fetched message, with the room it takes.
#[derive(Debug)]
pub struct Pulled {
    pub msg: Message,
    pub credit: Credit,
}

/// The tier's handle on the pull task.
pub struct PullSource {
    messages: mpsc::Receiver<Pulled>,
    pulling: Arc<AtomicBool>,
    task: JoinHandle<()>,
    /// Stops the task: cancelled with the tier's shutdown, or by [`PullSource::drain`].
    stop: CancellationToken,
    grace: Grace,
}

/// What the pull task needs.
struct Puller {
    consumer: PullConsumer,
    credits: Arc<Semaphore>,
    messages: mpsc::Sender<Pulled>,
    pulling: Arc<AtomicBool>,
    shutdown: CancellationToken,
    grace: Grace,
    /// What the log calls the messages ("requests", "tensors").
    what: &'static str,
}

impl PullSource {
    /// Starts pulling from `consumer`, at most `capacity` messages held by the tier at once,
    /// until `shutdown` is cancelled. `what` names the messages in the logs.
    pub fn start(
        consumer: PullConsumer,
        capacity: usize,
        shutdown: &CancellationToken,
        grace: &Grace,
        what: &'static str,
    ) -> Self {
        let capacity = capacity.max(1);
        // Every message in the channel holds a credit: a send never waits.
        let (tx, rx) = mpsc::channel(capacity);
        let pulling = Arc::new(AtomicBool::new(false));
        let stop = shutdown.child_token();
        let puller = Puller {
            consumer,
            credits: Arc::new(Semaphore::new(capacity)),
            messages: tx,
            pulling: pulling.clone(),
            shutdown: stop.clone(),
            grace: grace.clone(),
            what,
        };
        Self {
            messages: rx,
            pulling,
            task: tokio::spawn(puller.run()),
            stop,
            grace: grace.clone(),
        }
    }

    /// The next message; `None` once the source has stopped (shutdown). Cancel-safe.
    pub async fn next(&mut self) -> Option<Pulled> {
        self.messages.recv().await
    }

    /// Whether pulling works (for readiness): false until a pull brings a message or ends as
    /// asked, and again after a pull fails.
    pub fn pulling(&self) -> Arc<AtomicBool> {
        self.pulling.clone()
    }

    /// Stops pulling (if shutdown has not already), waits for the open pull to end (what arrives
    /// for it is handed back), then hands back `held` (what the tier took but will not start)
    /// and whatever was still waiting in the channel. Bounded by the grace: returns by its end
    /// whatever NATS does.
    pub async fn drain(mut self, held: Vec<Message>) {
        self.stop.cancel();
        self.messages.close();
        let mut held = held;
        while let Ok(pulled) = self.messages.try_recv() {
            held.push(pulled.msg);
        }
        let task = &mut self.task;
        if bounded(self.grace.ends(), "end the last pull", task)
            .await
            .is_none()
        {
            self.task.abort();
        }
        // Closed: what the task sent before it ended is here, and nothing more comes.
        while let Ok(pulled) = self.messages.try_recv() {
            held.push(pulled.msg);
        }
        let ends = self.grace.ends();
        bounded(ends, "hand back held messages", hand_back(&held)).await;
    }
}

impl Puller {
    async fn run(self) {
        let mut restart_delay = FIRST_RESTART_DELAY;
        let mut held = Vec::new();
        while !self.shutdown.is_cancelled() {
            let Some(credits) = self.credits().await else {
                break;
            };
            let pull = self
                .consumer
                .batch()
                .max_messages(credits.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let batch = match pull {
                Ok(batch) => {
                    tracing::trace!(asked = credits.len(), what = self.what, "pull opened");
                    batch
                }
                Err(e) => {
                    tracing::warn!(error = %e, what = self.what, "cannot pull; retrying");
                    self.pulling.store(false, Ordering::Relaxed);
                    pause(&self.shutdown, &mut restart_delay).await;
                    continue;
                }
            };
            match self.read(batch, credits, &mut held).await {
                Ended::Done { received } => {
                    if received {
                        restart_delay = FIRST_RESTART_DELAY;
                    }
                }
                Ended::Failed => pause(&self.shutdown, &mut restart_delay).await,
            }
        }
        let ends = self.grace.ends();
        bounded(ends, "hand back pulled messages", hand_back(&held)).await;
    }

    /// Waits for a free credit, then takes every free one. `None` on shutdown.
    async fn credits(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            p = self.credits.clone().acquire_owned() => p.ok()?,
        };
        let mut credits = vec![first];
        while let Ok(p) = self.credits.clone().try_acquire_owned() {
            credits.push(p);
        }
        Some(credits)
    }

    /// Hands what the pull brings to the tier, one credit each, until the pull ends. Once
    /// stopping, what arrives goes to `held` instead; a pull a server gone away never ends is
    /// given up at the grace's work end.
    async fn read(
        &self,
        mut batch: Batch,
        mut credits: Vec<OwnedSemaphorePermit>,
        held: &mut Vec<Message>,
    ) -> Ended {
        let mut received = false;
        let mut stopping = false;
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    continue;
                }
                m = batch.next() => m,
                _ = sleep_until(self.grace.work_ends()), if stopping => {
                    tracing::warn!(what = self.what,
                        "stopping: the last pull did not end within the grace period");
                    None
                }
            };
            // Pulling works while pulls bring messages or end as asked; a pull the server answers
            // with an error (the consumer gone, no responders) says it does not.
            self.pulling
                .store(!matches!(next, Some(Err(_))), Ordering::Relaxed);
            match next {
                Some(Ok(msg)) => {
                    tracing::trace!(stopping, what = self.what, "pulled a message");
                    received = true;
                    match credits.pop().filter(|_| !stopping) {
                        Some(credit) => {
                            let credit = Credit { _permit: credit };
                            let pulled = Pulled { msg, credit };
                            // Closed: the tier is draining; the message is handed back.
                            if let Err(mpsc::error::SendError(p)) = self.messages.send(pulled).await
                            {
                                held.push(p.msg);
                            }
                        }
                        None => held.push(msg),
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, what = self.what, "pulling failed");
                    return Ended::Failed;
                }
                None => return Ended::Done { received },
            }
        }
    }
}

/// How a pull ended.
enum Ended {
    /// Expired, or every message asked for came; `received`: at least one did.
    Done { received: bool },
    /// The server answered with an error.
    Failed,
}

/// Waits `delay` (or until shutdown), then doubles it up to [`MAX_RESTART_DELAY`].
async fn pause(shutdown: &CancellationToken, delay: &mut Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(*delay) => {}
    }
    *delay = next_delay(*delay);
}

fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(MAX_RESTART_DELAY)
}

/// Gives messages this tier will not start back to the stream at once (nak, no delay), for
/// another worker.
pub async fn hand_back(msgs: &[Message]) {
    for msg in msgs {
        tracing::debug!(subject = %msg.subject, "stopping: handing a message back");
        if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
            tracing::warn!(error = %e, "cannot hand a message back; redelivered after the ack wait");
        }
    }
}

/// Runs `work`; while it runs longer than half the ack wait, tells the server (ack "in progress")
/// that `msgs` are still being worked on, every half ack wait (at least every 100 ms).
pub async fn in_progress<T>(
    work: impl Future<Output = T>,
    msgs: &[&Message],
    ack_wait: Duration,
) -> T {
    tokio::pin!(work);
    let period = (ack_wait / 2).max(Duration::from_millis(100));
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = progress.tick() => {
                for msg in msgs {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::warn!(subject = %msg.subject, error = %e,
                            "cannot tell the server a message is in progress");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_delay_doubles_up_to_its_cap() {
        let mut d = FIRST_RESTART_DELAY;
        let mut seen = vec![d];
        for _ in 0..8 {
            d = next_delay(d);
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[5], Duration::from_millis(3200));
        assert!(seen[6..].iter().all(|d| *d == MAX_RESTART_DELAY));
    }

    #[tokio::test]
    async fn in_progress_returns_the_work_s_result() {
        let out = in_progress(async { 7 }, &[], Duration::from_secs(30)).await;
        assert_eq!(out, 7);
    }
}
