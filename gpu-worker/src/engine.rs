//! The engine thread: a plain `std::thread` that resolves the device, loads and warms up the
//! [`Model`], then runs the batches the async side sends it over a bounded channel, answering
//! each on a oneshot. libtorch is only ever called from this thread.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use protocol::manifest::Manifest;
use tch::Device;
use tokio::sync::{mpsc, oneshot};

use crate::config::{DEFAULT_MAX_BATCH_CPU, DEFAULT_MAX_BATCH_CUDA, DeviceChoice};
use crate::model::Model;

/// What the engine thread needs to start.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub manifest: Manifest,
    pub device: DeviceChoice,
    /// fp16 on CUDA; ignored on CPU.
    pub half: bool,
    /// libtorch's intra-op threads.
    pub intra_op_threads: usize,
    /// The largest batch; `None`: the device's default.
    pub max_batch: Option<usize>,
    /// Warm-up runs at each of batch sizes 1 and `max_batch`.
    pub warmup_batches: usize,
}

/// What the engine resolved while starting.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub device: Device,
    pub precision: &'static str,
    pub max_batch: usize,
    pub image_len: usize,
    pub classes: usize,
}

impl EngineInfo {
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }
}

/// The logits of a batch, one row per image, and how long the model took.
#[derive(Debug)]
pub struct BatchOutput {
    pub logits: Vec<Vec<f32>>,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model failed on this batch; the engine goes on.
    #[error("inference failed: {0}")]
    Failed(String),
    /// The engine thread is gone; nothing more can run.
    #[error("the engine thread has stopped")]
    Gone,
}

struct Job {
    data: Vec<u8>,
    n: usize,
    reply: oneshot::Sender<Result<BatchOutput, String>>,
}

/// The async side's handle on the engine thread; cheap to clone. The thread ends when every
/// handle is dropped (after the batch it is running).
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    info: EngineInfo,
}

impl Engine {
    /// Starts the engine thread and waits (without blocking the runtime) until the model is
    /// loaded and warmed up. Returns the handle and the thread, to join after dropping every handle.
    pub async fn start(options: EngineOptions) -> anyhow::Result<(Engine, JoinHandle<()>)> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || match prepare(&options) {
                Ok((model, info)) => {
                    let _ = ready_tx.send(Ok(info));
                    serve(&model, jobs_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .context("cannot spawn the engine thread")?;
        match ready_rx.await {
            Ok(Ok(info)) => Ok((
                Engine {
                    jobs: jobs_tx,
                    info,
                },
                thread,
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!(
                "the engine thread panicked while loading the model"
            )),
        }
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Runs `n` images laid out one after the other in `data`.
    pub async fn run(&self, data: Vec<u8>, n: usize) -> Result<BatchOutput, EngineError> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Job { data, n, reply })
            .await
            .map_err(|_| EngineError::Gone)?;
        result
            .await
            .map_err(|_| EngineError::Gone)?
            .map_err(EngineError::Failed)
    }
}

fn resolve_device(choice: DeviceChoice) -> anyhow::Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceChoice::Auto | DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => {
            let count = tch::Cuda::device_count();
            ensure!(
                (n as i64) < count,
                "device cuda:{n} requested, but {count} CUDA device(s) are available"
            );
            Device::Cuda(n)
        }
    })
}

/// On the engine thread: device, threads, model, warm-up.
fn prepare(options: &EngineOptions) -> anyhow::Result<(Model, EngineInfo)> {
    let device = resolve_device(options.device)?;
    tch::set_num_threads(i32::try_from(options.intra_op_threads.max(1)).unwrap_or(i32::MAX));
    let started = Instant::now();
    let model = Model::load(&options.manifest, device, options.half)?;
    let max_batch = options.max_batch.unwrap_or(if device.is_cuda() {
        DEFAULT_MAX_BATCH_CUDA
    } else {
        DEFAULT_MAX_BATCH_CPU
    });
    tracing::info!(
        device = ?device,
        precision = model.precision(),
        half_requested = options.half,
        intra_op_threads = options.intra_op_threads,
        max_batch,
        model = %options.manifest.model_path().display(),
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded on {device:?} in {}",
        model.precision()
    );
    let started = Instant::now();
    let mut sizes = vec![1, max_batch];
    sizes.dedup();
    for &n in &sizes {
        let zeros = vec![0u8; n * model.image_len()];
        for _ in 0..options.warmup_batches {
            model
                .run_batch(&zeros, n)
                .with_context(|| format!("warm-up at batch size {n} failed"))?;
        }
    }
    tracing::info!(
        batch_sizes = ?sizes,
        runs_each = options.warmup_batches,
        ms = started.elapsed().as_millis() as u64,
        "warm-up done"
    );
    let info = EngineInfo {
        device,
        precision: model.precision(),
        max_batch,
        image_len: model.image_len(),
        classes: model.classes(),
    };
    Ok((model, info))
}

/// On the engine thread: runs jobs until every sender is dropped.
fn serve(model: &Model, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        let started = Instant::now();
        // A panic in a binding must fail the batch, not take the engine down.
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| model.run_batch(&job.data, job.n)))
                .unwrap_or_else(|panic| {
                    Err(anyhow!("libtorch panicked: {}", panic_message(&*panic)))
                });
        let result = result
            .map(|logits| BatchOutput {
                logits,
                elapsed: started.elapsed(),
            })
            .map_err(|e| format!("{e:#}"));
        // The caller may have gone (shutdown); nothing to do then.
        let _ = job.reply.send(result);
    }
    tracing::info!("engine thread stopping");
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model;

    #[tokio::test]
    async fn engine_thread_runs_batches_and_reports_bad_ones() {
        let dir = tiny_model();
        let manifest = Manifest::load(dir.path().join("manifest.json")).expect("manifest");
        let (engine, thread) = Engine::start(EngineOptions {
            manifest,
            device: DeviceChoice::Cpu,
            half: false,
            intra_op_threads: 1,
            max_batch: None,
            warmup_batches: 1,
        })
        .await
        .expect("engine starts");
        let info = engine.info().clone();
        assert_eq!(
            (info.device, info.max_batch, info.classes),
            (Device::Cpu, 4, 10)
        );
        let out = engine
            .run(vec![3; 2 * info.image_len], 2)
            .await
            .expect("batch");
        assert_eq!(out.logits.len(), 2);
        assert_eq!(out.logits[0], out.logits[1]);
        let err = engine.run(vec![3; 5], 1).await.unwrap_err();
        assert!(matches!(err, EngineError::Failed(_)), "{err}");
        drop(engine);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join task")
            .expect("engine thread exits cleanly");
    }

    #[tokio::test]
    async fn engine_refuses_a_missing_cuda_device() {
        let dir = tiny_model();
        let manifest = Manifest::load(dir.path().join("manifest.json")).expect("manifest");
        let result = Engine::start(EngineOptions {
            manifest,
            device: DeviceChoice::Cuda(64),
            half: false,
            intra_op_threads: 1,
            max_batch: Some(2),
            warmup_batches: 0,
        })
        .await;
        let err = result.err().expect("no 65 GPUs here");
        assert!(err.to_string().contains("cuda:64"), "{err}");
    }
}
