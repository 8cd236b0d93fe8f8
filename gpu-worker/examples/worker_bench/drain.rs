//! The worker draining a pre-filled tensors stream: `clothesline_gpu_worker::run` in this process
//! with the configuration the binary would have, replies counted on the bench's subscription.
//!
//! Throughput is timed from the first reply to the last: the first batch (warm-up is over by
//! then, the worker is pulling) ends at the first reply, and every image after it ran between
//! the two, so images/s = (N - size of the first batch) / (last - first).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clothesline_gpu_worker::{Config, run};
use futures::StreamExt;
use protocol::Reply;
use protocol::messages::Outcome;

/// What the drain measured.
#[derive(Debug, Clone)]
pub struct Drain {
    pub errors: usize,
    /// From starting the worker to its first reply (model load, warm-up, first batch).
    pub to_first_reply: Duration,
    /// From the first reply to the last.
    pub elapsed: Duration,
    /// Images answered after the first reply's batch: those that ran within `elapsed`.
    pub counted: usize,
    /// The batch size an image ran in, averaged over images.
    pub mean_batch: f64,
    /// The largest batch seen.
    pub largest_batch: usize,
}

impl Drain {
    pub fn images_per_s(&self) -> f64 {
        self.counted as f64 / self.elapsed.as_secs_f64()
    }
}

/// Starts the worker with `config`, waits for `n` replies on `replies` (at most `timeout`), then
/// shuts the worker down and waits for it.
pub async fn drain(
    config: Config,
    replies: &mut async_nats::Subscriber,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Drain> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let mut worker = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut first, mut last) = (None, started);
    let (mut errors, mut first_batch, mut batch_sum, mut largest) = (0, 0, 0usize, 0);
    let mut received = 0;
    while received < n {
        let msg = tokio::select! {
            msg = replies.next() => msg.context("the reply subscription ended")?,
            done = &mut worker => bail!("the worker stopped after {received} replies: {:?}",
                done.map(|r| r.map_err(|e| format!("{e:#}")))),
            _ = tokio::time::sleep_until(deadline) => {
                bail!("only {received} of {n} replies after {timeout:?}")
            }
        };
        let now = Instant::now();
        received += 1;
        first.get_or_insert(now);
        last = now;
        match Reply::decode(&msg.payload)?.outcome {
            Outcome::Prediction(p) => {
                let batch = p.timings.batch_size.unwrap_or(1) as usize;
                if received == 1 {
                    first_batch = batch;
                }
                batch_sum += batch;
                largest = largest.max(batch);
            }
            Outcome::Error(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("worker_bench: an error reply: {} {}", e.code, e.message);
                }
            }
        }
    }
    let _ = stop.send(());
    worker
        .await
        .context("the worker task panicked")?
        .context("the worker failed")?;
    let first = first.unwrap_or(started);
    let elapsed = last - first;
    Ok(Drain {
        errors,
        to_first_reply: first - started,
        elapsed,
        counted: n.saturating_sub(first_batch.max(1)),
        mean_batch: batch_sum as f64 / (n - errors).max(1) as f64,
        largest_batch: largest,
    })
}
