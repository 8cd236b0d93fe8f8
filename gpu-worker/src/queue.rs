//! The batcher's state, free of NATS and libtorch (the shape of text-embeddings-inference's
//! queue): the tensors waiting for a batch ([`crate::gather`] decides which go, and when), how
//! many engine replicas are busy, and whether the worker is stopping. Each method answers with a
//! decision the batcher's loop ([`crate::batcher`]) carries out; nothing here waits or sends.
//!
//! - One batch per engine replica at a time: a batch is started only while fewer than
//!   `engines` run ([`BatchQueue::next`], [`BatchQueue::finished`]).
//! - At most one batch waits: the pull source asks for no more tensors than a batch holds
//!   (every queued tensor keeps one of its credits until its batch starts).
//! - Stopping: [`BatchQueue::stop`] gives back everything queued (to hand back to the stream at
//!   once), nothing is queued or started after it, and the work is over
//!   ([`BatchQueue::is_done`]) once the batches running have ended.

use std::time::Instant;

use crate::gather::{Gatherer, Next};

/// What the batcher's loop should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<T> {
    /// Start this batch (items with their arrival) on a free engine replica.
    Run(Vec<(T, Instant)>),
    /// Nothing to start before this instant, unless an item arrives or a batch ends.
    WaitUntil(Instant),
    /// Nothing to start until an item arrives or a batch ends.
    Idle,
}

#[derive(Debug)]
pub struct BatchQueue<T> {
    gather: Gatherer<T>,
    /// Engine replicas: batches that may run at once.
    engines: usize,
    /// Batches started and not yet finished.
    running: usize,
    stopping: bool,
}

impl<T> BatchQueue<T> {
    /// A queue gathering with `gather`, for `engines` replicas (at least one).
    pub fn new(gather: Gatherer<T>, engines: usize) -> Self {
        Self {
            gather,
            engines: engines.max(1),
            running: 0,
            stopping: false,
        }
    }

    /// Partial batches always wait the batch delay (see [`Gatherer::always_wait`]).
    pub fn always_wait(mut self) -> Self {
        self.gather = self.gather.always_wait();
        self
    }

    /// Queues an item that arrived at `now`, with what the server had pending behind it (see
    /// [`Gatherer::push`]). Once stopping, nothing is queued: the item comes back, to be handed
    /// back to the stream.
    pub fn push(&mut self, item: T, now: Instant, behind: Option<u64>) -> Result<(), T> {
        if self.stopping {
            return Err(item);
        }
        self.gather.push(item, now, behind);
        Ok(())
    }

    /// What to do at `now`. A [`Decision::Run`] counts its batch as running until
    /// [`BatchQueue::finished`].
    pub fn next(&mut self, now: Instant) -> Decision<T> {
        let engine_free = self.running < self.engines;
        match self.gather.next(engine_free, self.stopping, now) {
            Next::Dispatch(n) => {
                self.running += 1;
                Decision::Run(self.gather.take(n))
            }
            Next::WaitUntil(t) => Decision::WaitUntil(t),
            Next::Idle => Decision::Idle,
        }
    }

    /// A batch started by [`BatchQueue::next`] ended (answered, failed or handed back).
    pub fn finished(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Stops: nothing more is queued or started; returns what was queued, to hand back.
    pub fn stop(&mut self) -> Vec<T> {
        self.stopping = true;
        self.gather
            .take_all()
            .into_iter()
            .map(|(item, _)| item)
            .collect()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Stopped, and every batch started has ended.
    pub fn is_done(&self) -> bool {
        self.stopping && self.running == 0 && self.gather.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.gather.len()
    }

    pub fn running(&self) -> usize {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn queue(max_batch: usize, engines: usize) -> BatchQueue<u32> {
        BatchQueue::new(Gatherer::new(max_batch, 5 * MS), engines)
    }

    fn run(d: Decision<u32>) -> Vec<u32> {
        match d {
            Decision::Run(batch) => batch.into_iter().map(|(i, _)| i).collect(),
            other => panic!("expected a batch to run, got {other:?}"),
        }
    }

    #[test]
    fn one_batch_per_engine_replica_at_a_time() {
        let t0 = Instant::now();
        let mut q = queue(2, 1);
        for i in 0..4 {
            q.push(i, t0, None).unwrap();
        }
        assert_eq!(run(q.next(t0)), [0, 1]);
        assert_eq!(q.next(t0), Decision::Idle, "the only engine is busy");
        assert_eq!(q.running(), 1);
        q.finished();
        assert_eq!(run(q.next(t0)), [2, 3]);
        assert_eq!(q.next(t0), Decision::Idle, "nothing queued");
    }

    #[test]
    fn two_replicas_run_two_batches_side_by_side() {
        let t0 = Instant::now();
        let mut q = queue(2, 2);
        for i in 0..6 {
            q.push(i, t0, None).unwrap();
        }
        assert_eq!(run(q.next(t0)), [0, 1]);
        assert_eq!(run(q.next(t0)), [2, 3]);
        assert_eq!(q.next(t0), Decision::Idle);
        assert_eq!(q.running(), 2);
        q.finished();
        assert_eq!(run(q.next(t0)), [4, 5]);
    }

    #[test]
    fn a_partial_batch_waits_for_more_then_goes() {
        let t0 = Instant::now();
        let mut q = queue(4, 1);
        q.push(0, t0, Some(3)).unwrap();
        assert_eq!(q.next(t0 + MS), Decision::WaitUntil(t0 + 5 * MS));
        assert_eq!(q.running(), 0, "waiting starts nothing");
        assert_eq!(run(q.next(t0 + 5 * MS)), [0]);
    }

    #[test]
    fn a_lone_item_runs_at_once_when_nothing_is_pending_unless_told_to_wait() {
        let t0 = Instant::now();
        let mut q = queue(4, 1);
        q.push(0, t0, Some(0)).unwrap();
        assert_eq!(run(q.next(t0)), [0]);

        let mut q = queue(4, 1).always_wait();
        q.push(0, t0, Some(0)).unwrap();
        assert_eq!(q.next(t0), Decision::WaitUntil(t0 + 5 * MS));
    }

    #[test]
    fn stopping_gives_back_the_queue_and_refuses_more() {
        let t0 = Instant::now();
        let mut q = queue(2, 1);
        for i in 0..3 {
            q.push(i, t0, None).unwrap();
        }
        assert_eq!(run(q.next(t0)), [0, 1]);
        assert!(!q.is_stopping());
        assert_eq!(q.stop(), [2]);
        assert!(q.is_stopping());
        assert_eq!(
            q.push(9, t0, Some(0)),
            Err(9),
            "nothing is queued once stopping"
        );
        assert_eq!(q.queued(), 0);
        assert_eq!(q.next(t0), Decision::Idle);
        assert!(!q.is_done(), "a batch still runs");
        q.finished();
        assert!(q.is_done());
    }

    #[test]
    fn a_finish_too_many_does_not_free_a_replica_that_is_not_there() {
        let t0 = Instant::now();
        let mut q = queue(1, 1);
        q.finished();
        assert_eq!(q.running(), 0);
        q.push(0, t0, None).unwrap();
        q.push(1, t0, None).unwrap();
        assert_eq!(run(q.next(t0)), [0]);
        assert_eq!(q.next(t0), Decision::Idle);
    }

    #[test]
    fn not_stopped_is_never_done() {
        let q = queue(2, 1);
        assert!(!q.is_done());
    }
}
