//! The two loops. Open loop: one scheduler sends request `i` at its intended time and spawns a
//! task for it; latency counts from the intended time. Closed loop: `concurrency` tasks each send
//! the next request as soon as their previous one is answered; latency counts from the send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::images::ImageSet;
use crate::schedule::{self, Mode, Plan, Stop};
use crate::stats::Recorder;
use crate::target::Target;

/// Which image request `i` sends: the set in its (shuffled) order, over and over.
fn pick(i: u64, images: usize) -> usize {
    (i % images as u64) as usize
}

/// State the request tasks, the progress bar and the report share.
pub struct Shared {
    recorder: Mutex<Recorder>,
    /// Requests sent (warm-up included) and answered (warm-up included).
    pub sent: AtomicU64,
    pub done: AtomicU64,
    /// Signalled after each answer (a stored permit when nobody waits, so none is missed).
    answered: Notify,
}

impl Shared {
    /// `timings`: keep each answer's `timings` (`--timings`).
    pub fn new(classes: usize, timings: bool) -> Self {
        Self {
            recorder: Mutex::new(Recorder::new(classes).with_timings(timings)),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            answered: Notify::new(),
        }
    }

    pub fn recorder(&self) -> MutexGuard<'_, Recorder> {
        // A panic while holding the lock cannot leave counts half-written in a way that
        // matters for a report, so a poisoned lock is still read.
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, latency: Duration, outcome: &crate::target::Outcome, expected: Option<usize>) {
        let mut recorder = self.recorder();
        recorder.record(latency, outcome, expected);
        recorder.last_done = Some(Instant::now());
    }
}

/// The counted part of a run: from the first counted request's (intended) send time to the last
/// counted answer.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn length(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
}

/// Runs `plan` against `target`, counting into `shared`; returns the counted window. The loops run
/// as a spawned task: a task woken by the timer is queued on its own thread, whereas waking the
/// runtime's `block_on` future writes to the driver's eventfd, an extra syscall and wake-up per
/// request.
pub async fn run(target: Arc<Target>, set: &ImageSet, plan: Plan, shared: Arc<Shared>) -> Window {
    let classes: Arc<[Option<usize>]> = set.images.iter().map(|i| i.class).collect();
    let images = set.images.len();
    let counted = shared.clone();
    let start = tokio::spawn(async move {
        match plan.mode {
            Mode::Open { rate } => open_loop(target, &classes, images, &plan, rate, &shared).await,
            Mode::Closed { concurrency } => {
                closed_loop(target, &classes, images, &plan, concurrency, &shared).await
            }
        }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let end = counted.recorder().last_done.unwrap_or(start).max(start);
    Window { start, end }
}

async fn open_loop(
    target: Arc<Target>,
    classes: &Arc<[Option<usize>]>,
    images: usize,
    plan: &Plan,
    rate: f64,
    shared: &Arc<Shared>,
) -> Instant {
    let warmup = schedule::count_in(plan.warmup, rate);
    let total = warmup + schedule::measured_requests(plan.stop, rate);
    let start = Instant::now();
    for i in 0..total {
        let intended = start + schedule::offset(i, rate);
        if Instant::now() < intended {
            let wake = start + schedule::round_up(intended - start, plan.tick);
            tokio::time::sleep_until(wake.into()).await;
        }
        let (target, shared, image) = (target.clone(), shared.clone(), pick(i, images));
        let expected = classes[image];
        let counted = i >= warmup;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        // A bare task (no JoinSet bookkeeping); the end waits on the answered count instead.
        tokio::spawn(async move {
            let outcome = target.send(image).await;
            if counted {
                shared.finish(intended.elapsed(), &outcome, expected);
            }
            shared.done.fetch_add(1, Ordering::Release);
            shared.answered.notify_one();
        });
    }
    while shared.done.load(Ordering::Acquire) < total {
        shared.answered.notified().await;
    }
    start + schedule::offset(warmup, rate)
}

async fn closed_loop(
    target: Arc<Target>,
    classes: &Arc<[Option<usize>]>,
    images: usize,
    plan: &Plan,
    concurrency: usize,
    shared: &Arc<Shared>,
) -> Instant {
    let start = Instant::now();
    let counted_from = start + plan.warmup;
    let next = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(AtomicU64::new(0));
    let stop = plan.stop;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (target, shared, classes) = (target.clone(), shared.clone(), classes.clone());
        let (next, counted) = (next.clone(), counted.clone());
        tasks.spawn(async move {
            loop {
                let sent_at = Instant::now();
                let count = sent_at >= counted_from;
                if count {
                    let more = match stop {
                        Stop::Duration(d) => sent_at < counted_from + d,
                        Stop::Requests(n) => counted.fetch_add(1, Ordering::Relaxed) < n,
                    };
                    if !more {
                        break;
                    }
                }
                let image = pick(next.fetch_add(1, Ordering::Relaxed), images);
                shared.sent.fetch_add(1, Ordering::Relaxed);
                let outcome = target.send(image).await;
                if count {
                    shared.finish(sent_at.elapsed(), &outcome, classes[image]);
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    counted_from
}
