//! The batching policy, free of NATS and libtorch: which queued items make the next batch, and
//! when.
//!
//! Items queue up in arrival order while the engines work. When an engine is free:
//! - `max_batch` or more are queued: the first `max_batch` go at once;
//! - fewer, and nothing more is on its way (the server said no tensor was pending behind the
//!   last one, [`Gatherer::push`]): they go at once, as waiting could not fill the batch and
//!   would only add latency (at low load a lone image runs as soon as it arrives); unless
//!   [`Gatherer::always_wait`] was asked for;
//! - fewer, with more on their way (or not known): they go when the oldest has waited
//!   `max_delay` (at once if it already has, e.g. it arrived while the previous batch ran), or as
//!   soon as the batch fills up;
//! - when draining, whatever is queued goes at once (on shutdown the batcher hands the queue back
//!   instead, so nothing that has not started waits for this worker).
//!
//! The queue holds at most one batch waiting ([`Gatherer::wants_more`]): beyond that the caller
//! stops pulling, so other replicas get the work and nothing waits here near its ack deadline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the batcher should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the first `n` queued items to the engine now.
    Dispatch(usize),
    /// Wait for more items, but no later than this.
    WaitUntil(Instant),
    /// Nothing to do until an item arrives or the engine frees up.
    Idle,
}

#[derive(Debug)]
pub struct Gatherer<T> {
    max_batch: usize,
    max_delay: Duration,
    queue: VecDeque<(T, Instant)>,
    /// What the server said was pending behind the last item pushed (`None`: not known).
    behind: Option<u64>,
    /// Whether a partial batch goes at once when nothing more is pending.
    idle_dispatch: bool,
}

impl<T> Gatherer<T> {
    pub fn new(max_batch: usize, max_delay: Duration) -> Self {
        Self {
            max_batch: max_batch.max(1),
            max_delay,
            queue: VecDeque::with_capacity(max_batch.max(1)),
            behind: None,
            idle_dispatch: true,
        }
    }

    /// Partial batches always wait `max_delay` for more, even when nothing more is pending.
    pub fn always_wait(mut self) -> Self {
        self.idle_dispatch = false;
        self
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Queues an item that arrived at `now`; `behind` is how many more the server had pending
    /// for the consumer when it delivered this one (JetStream's `num_pending`; `None`: unknown,
    /// then a partial batch waits as if more were coming).
    pub fn push(&mut self, item: T, now: Instant, behind: Option<u64>) {
        self.queue.push_back((item, now));
        self.behind = behind;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether to pull more items: until one full batch is waiting.
    pub fn wants_more(&self) -> bool {
        self.queue.len() < self.max_batch
    }

    /// What to do at `now`, given whether the engine can take a batch and whether the batcher is
    /// draining (then partial batches go without waiting).
    pub fn next(&self, engine_free: bool, draining: bool, now: Instant) -> Next {
        let Some((_, oldest)) = self.queue.front() else {
            return Next::Idle;
        };
        if !engine_free {
            return Next::Idle;
        }
        let queued = self.queue.len();
        if queued >= self.max_batch {
            return Next::Dispatch(self.max_batch);
        }
        let due = *oldest + self.max_delay;
        let nothing_coming = self.idle_dispatch && self.behind == Some(0);
        if draining || nothing_coming || now >= due {
            Next::Dispatch(queued)
        } else {
            Next::WaitUntil(due)
        }
    }

    /// Removes and returns the first `n` items (fewer if fewer are queued), with their arrival.
    pub fn take(&mut self, n: usize) -> Vec<(T, Instant)> {
        let n = n.min(self.queue.len());
        self.queue.drain(..n).collect()
    }

    /// Removes and returns everything queued.
    pub fn take_all(&mut self) -> Vec<(T, Instant)> {
        self.behind = None;
        self.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn items(g: Vec<(u32, Instant)>) -> Vec<u32> {
        g.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn a_full_batch_goes_at_once_and_the_rest_waits() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(3, 5 * MS);
        for i in 0..4 {
            g.push(i, t0, None);
        }
        assert_eq!(g.next(true, false, t0), Next::Dispatch(3));
        assert_eq!(items(g.take(3)), [0, 1, 2]);
        assert_eq!(g.next(true, false, t0), Next::WaitUntil(t0 + 5 * MS));
        assert_eq!(g.next(true, false, t0 + 5 * MS), Next::Dispatch(1));
        assert_eq!(items(g.take(10)), [3]);
        assert_eq!(g.next(true, false, t0 + 9 * MS), Next::Idle);
    }

    #[test]
    fn a_partial_batch_waits_from_its_oldest_item_until_full_or_due() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, 5 * MS);
        g.push(0, t0, None);
        g.push(1, t0 + 2 * MS, None);
        assert_eq!(
            g.next(true, false, t0 + 3 * MS),
            Next::WaitUntil(t0 + 5 * MS)
        );
        g.push(2, t0 + 3 * MS, None);
        g.push(3, t0 + 4 * MS, None);
        assert_eq!(g.next(true, false, t0 + 4 * MS), Next::Dispatch(4));
        assert_eq!(items(g.take(4)), [0, 1, 2, 3]);
    }

    #[test]
    fn items_that_waited_behind_a_running_batch_go_when_it_ends() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(8, 5 * MS);
        g.push(0, t0, None);
        g.push(1, t0 + MS, None);
        assert_eq!(
            g.next(false, false, t0 + 20 * MS),
            Next::Idle,
            "engine busy"
        );
        assert_eq!(g.next(true, false, t0 + 20 * MS), Next::Dispatch(2));
    }

    #[test]
    fn at_most_one_batch_waits_while_the_engine_works() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(2, 5 * MS);
        assert!(g.wants_more());
        g.push(0, t0, None);
        assert!(g.wants_more());
        g.push(1, t0, None);
        assert!(!g.wants_more());
        assert_eq!(g.next(false, false, t0), Next::Idle);
        g.take(1);
        assert!(g.wants_more());
    }

    #[test]
    fn zero_delay_and_draining_send_partial_batches_at_once() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, Duration::ZERO);
        g.push(0, t0, None);
        assert_eq!(g.next(true, false, t0), Next::Dispatch(1));

        let mut g = Gatherer::new(4, Duration::from_secs(1));
        g.push(0, t0, None);
        g.push(1, t0, None);
        assert_eq!(g.next(true, true, t0), Next::Dispatch(2));
        assert_eq!(items(g.take_all()), [0, 1]);
        assert!(g.is_empty());
        assert_eq!(g.next(true, true, t0), Next::Idle);
    }

    #[test]
    fn a_lone_item_with_nothing_pending_behind_it_goes_at_once() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, 5 * MS);
        g.push(0, t0, Some(0));
        assert_eq!(g.next(true, false, t0), Next::Dispatch(1));
        assert_eq!(g.next(false, false, t0), Next::Idle, "no engine free");
        assert_eq!(items(g.take(1)), [0]);
    }

    #[test]
    fn a_partial_batch_waits_while_more_are_pending_and_goes_when_the_last_arrives() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, 5 * MS);
        g.push(0, t0, Some(2));
        assert_eq!(g.next(true, false, t0), Next::WaitUntil(t0 + 5 * MS));
        g.push(1, t0 + MS, Some(1));
        assert_eq!(g.next(true, false, t0 + MS), Next::WaitUntil(t0 + 5 * MS));
        g.push(2, t0 + 2 * MS, Some(0));
        assert_eq!(g.next(true, false, t0 + 2 * MS), Next::Dispatch(3));
        assert_eq!(items(g.take(3)), [0, 1, 2]);
    }

    #[test]
    fn more_pending_than_room_still_waits_at_most_max_delay() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, 5 * MS);
        g.push(0, t0, Some(100));
        assert_eq!(
            g.next(true, false, t0 + 4 * MS),
            Next::WaitUntil(t0 + 5 * MS)
        );
        assert_eq!(g.next(true, false, t0 + 5 * MS), Next::Dispatch(1));
    }

    #[test]
    fn what_is_known_to_be_pending_is_forgotten_with_the_queue() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, 5 * MS);
        g.push(0, t0, Some(0));
        g.take_all();
        g.push(1, t0, None);
        assert_eq!(g.next(true, false, t0), Next::WaitUntil(t0 + 5 * MS));
    }

    #[test]
    fn always_wait_keeps_a_lone_item_waiting_for_a_fuller_batch() {
        let t0 = Instant::now();
        let mut g = Gatherer::new(4, 5 * MS).always_wait();
        g.push(0, t0, Some(0));
        assert_eq!(g.next(true, false, t0), Next::WaitUntil(t0 + 5 * MS));
        assert_eq!(g.next(true, false, t0 + 5 * MS), Next::Dispatch(1));
    }
}
