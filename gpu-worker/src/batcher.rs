//! The batcher: the task that feeds the batching state ([`crate::queue`]) and carries out its
//! decisions. Tensors come from the pull source ([`tierkit::pull`]), which asks for no more than
//! a batch holds, so at most one batch waits while the engines work; each is checked
//! ([`crate::admit`]) and queued; the queue says when a batch starts, and each runs on a task of
//! its own ([`crate::batch`]), one per engine replica at a time.
//!
//! On shutdown the batcher stops pulling, hands back (nak, no delay) what it queued but has not
//! started and what still arrives for its open pull, once that pull has ended (earlier, a tensor
//! could be redelivered into it and bounce), so other workers take them; then it waits for the
//! batches running. When the grace period's work ends first, those hand their items back within
//! its last steps, and the run ends with [`AbandonedBatches`] (the process leaves with `_exit`,
//! see [`crate::leave`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tierkit::pull::{Credit, PullSource, Pulled};
use tierkit::runtime::{Grace, bounded};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::admit::{Admitted, admit};
use crate::batch::{BatchContext, CheckedTensor, run_batch_or_hand_back};
use crate::engine::EngineError;
use crate::gather::Gatherer;
use crate::leave::AbandonedBatches;
use crate::queue::{BatchQueue, Decision};

/// A queued tensor, holding its room in the pull source until its batch starts.
struct Queued {
    tensor: CheckedTensor,
    _credit: Credit,
}

/// The batch tasks running, one per busy engine replica.
type Running = JoinSet<Result<(), EngineError>>;

pub struct Batcher {
    context: Arc<BatchContext>,
    queue: BatchQueue<Queued>,
}

impl Batcher {
    /// A batcher running `context`'s model versions, a partial batch waiting at most
    /// `max_delay` for more.
    pub fn new(context: BatchContext, max_delay: Duration) -> Self {
        let info = context.serving.info();
        let gather = Gatherer::new(info.max_batch, max_delay);
        let queue = BatchQueue::new(gather, info.replicas);
        Self {
            context: Arc::new(context),
            queue,
        }
    }

    /// With `false`, a partial batch always waits the batch delay for more, even when the server
    /// has nothing more pending (see [`crate::gather`]); by default it runs at once then.
    pub fn with_idle_dispatch(mut self, on: bool) -> Self {
        if !on {
            self.queue = self.queue.always_wait();
        }
        self
    }

    /// Runs until `shutdown` (or the source stops), then stops as the module says. An error
    /// means the engine is gone, or batches were still running at the end of the grace period.
    pub async fn run(
        mut self,
        mut source: PullSource,
        shutdown: &CancellationToken,
        grace: &Grace,
    ) -> anyhow::Result<()> {
        let mut running = Running::new();
        loop {
            let wake = match self.queue.next(Instant::now()) {
                Decision::Run(batch) => {
                    tracing::trace!(size = batch.len(), "starting a batch");
                    let batch = batch.into_iter().map(|(q, at)| (q.tensor, at)).collect();
                    running.spawn(run_batch_or_hand_back(self.context.clone(), batch));
                    continue;
                }
                Decision::WaitUntil(t) => Some(t),
                Decision::Idle => None,
            };
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    self.queue.finished();
                    if let Err(e) = engine_gone(done) {
                        // The other batches running finish (or are redelivered) on their own.
                        running.detach_all();
                        source.drain(self.take_queued()).await;
                        anyhow::bail!("{e}");
                    }
                }
                pulled = source.next() => match pulled {
                    Some(pulled) => self.admit(pulled).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far).into()), if wake.is_some() => {}
            }
        }
        tracing::info!(
            queued = self.queue.queued(),
            running = running.len(),
            "stopping: no more pulls; handing back what has not started, \
             finishing the batches running"
        );
        source.drain(self.take_queued()).await;
        self.finish(running, grace).await
    }

    /// Checks a pulled tensor and queues it, or it was answered at once.
    async fn admit(&mut self, pulled: Pulled) {
        let Pulled { msg, credit } = pulled;
        let span = crate::trace::item_span(&msg);
        let Some(Admitted { tensor, behind }) = admit(&self.context, msg).instrument(span).await
        else {
            return;
        };
        let queued = Queued {
            tensor,
            _credit: credit,
        };
        tracing::trace!(queued = self.queue.queued(), ?behind, "queueing a tensor");
        if let Err(q) = self.queue.push(queued, Instant::now(), behind) {
            tierkit::pull::hand_back(std::slice::from_ref(&q.tensor.msg)).await;
        }
    }

    /// Stops the queue; what it held, to hand back.
    fn take_queued(&mut self) -> Vec<async_nats::jetstream::Message> {
        let queued = self.queue.stop();
        queued.into_iter().map(|q| q.tensor.msg).collect()
    }

    /// Waits for the batches running until the grace's work ends; those still running then hand
    /// their items back within its last steps.
    async fn finish(self, mut running: Running, grace: &Grace) -> anyhow::Result<()> {
        let all_done = async {
            while let Some(done) = running.join_next().await {
                engine_gone(done)?;
            }
            Ok::<(), EngineError>(())
        };
        match tokio::time::timeout_at(grace.work_ends(), all_done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                running.detach_all();
                Err(e.into())
            }
            Err(_) => {
                let left = running.len();
                self.context.abandon.cancel();
                let handed_back = async { while running.join_next().await.is_some() {} };
                bounded(grace.ends(), "hand back tensors", handed_back).await;
                Err(AbandonedBatches { running: left }.into())
            }
        }
    }
}

/// The engine's end, from a batch task's result; a task that failed otherwise is logged (its
/// items will be redelivered).
fn engine_gone(done: Result<Result<(), EngineError>, JoinError>) -> Result<(), EngineError> {
    match done {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "a batch task failed; its items will be redelivered");
            Ok(())
        }
    }
}
