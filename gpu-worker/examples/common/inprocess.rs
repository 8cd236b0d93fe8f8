//! In-process model throughput, shared by the `model_bench` and `worker_bench` examples: runs a
//! [`Model`] back to back at one batch size (warm-up first) for at least a given time and a given
//! number of runs, and reports images/s over the timed runs and the median time per batch.

use std::time::{Duration, Instant};

use clothesline_gpu_worker::Model;

/// One batch size's timed runs.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub batch: usize,
    pub times: Vec<Duration>,
    /// Replicas that ran side by side, each for about the same time, their runs all in `times`.
    pub replicas: usize,
}

impl Throughput {
    pub fn runs(&self) -> usize {
        self.times.len()
    }

    /// Median time of one batch.
    pub fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t.get(t.len() / 2).copied().unwrap_or_default()
    }

    /// Images run divided by the total time of the timed runs: what a busy server sustains (with
    /// replicas side by side, each adds its own rate).
    pub fn images_per_s(&self) -> f64 {
        let total: Duration = self.times.iter().sum();
        (self.runs() * self.batch * self.replicas.max(1)) as f64 / total.as_secs_f64()
    }

    /// Adds the runs of another measurement at the same batch size (and replicas).
    pub fn merge(&mut self, other: &Throughput) {
        debug_assert_eq!((self.batch, self.replicas), (other.batch, other.replicas));
        self.times.extend_from_slice(&other.times);
    }

    /// A markdown table row: batch, runs, median ms/batch, ms/image, images/s.
    pub fn row(&self) -> String {
        let ms = self.median().as_secs_f64() * 1e3;
        format!(
            "| {} | {} | {ms:.2} | {:.2} | {:.1} |",
            self.batch,
            self.runs(),
            ms / self.batch as f64,
            self.images_per_s()
        )
    }
}

/// The header of the table [`Throughput::row`] fills.
pub const TABLE_HEADER: &str = "| batch | runs | median ms/batch | ms/image (median) | images/s (all runs) |\n|---:|---:|---:|---:|---:|";

/// How long and how often to run each batch size.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub warmup: usize,
    pub min_runs: usize,
    pub min_time: Duration,
}

/// `n` different images of the model's size (the pixel values do not change the work done).
pub fn images(model: &Model, n: usize) -> Vec<u8> {
    (0..n * model.image_len())
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Runs batches of `n` per `plan` and measures them.
pub fn measure(model: &Model, n: usize, plan: Plan) -> anyhow::Result<Throughput> {
    let data = images(model, n);
    for _ in 0..plan.warmup {
        model.run_batch(&data, n)?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < plan.min_runs.max(1) || started.elapsed() < plan.min_time {
        let t = Instant::now();
        model.run_batch(&data, n)?;
        times.push(t.elapsed());
    }
    Ok(Throughput {
        batch: n,
        times,
        replicas: 1,
    })
}

/// [`measure`] on each of `models` at once, each on a thread of its own with `threads` intra-op
/// threads (as the worker's engines run): one [`Throughput`] of all their runs.
pub fn measure_replicas(
    models: &[Model],
    threads: i32,
    n: usize,
    plan: Plan,
) -> anyhow::Result<Throughput> {
    // Every thread sets its thread count and runs once before any of them measures: setting the
    // count also resets process-wide state (oneDNN's primitive cache) that a running model uses.
    let ready = std::sync::Barrier::new(models.len());
    let setting = std::sync::Mutex::new(());
    let each: Vec<anyhow::Result<Throughput>> = std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter()
            .map(|model| {
                let (ready, setting) = (&ready, &setting);
                s.spawn(move || {
                    let first = {
                        let _one_at_a_time = setting
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        tch::set_num_threads(threads);
                        // The thread's first parallel operation sets the count again (libtorch's
                        // lazy per-thread initialisation): also one at a time.
                        model.run_batch(&images(model, 1), 1)
                    };
                    ready.wait();
                    first?;
                    measure(model, n, plan)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a replica's run panicked")))
            })
            .collect()
    });
    let mut all: Option<Throughput> = None;
    for t in each {
        let t = t?;
        match all.as_mut() {
            Some(a) => a.merge(&t),
            None => all = Some(t),
        }
    }
    let mut all = all.ok_or_else(|| anyhow::anyhow!("no replicas"))?;
    all.replicas = models.len();
    Ok(all)
}
