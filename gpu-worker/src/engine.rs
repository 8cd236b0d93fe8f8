//! The engine threads: plain `std::thread`s that each load and warm up a replica of the
//! [`Model`], then take the batches the async side sends over one bounded channel, whichever
//! thread is free first, answering each on a oneshot. libtorch is only ever called from these
//! threads (and once, to see whether CUDA is there, on the blocking pool).
//!
//! One replica is the default on CUDA (the GPU runs one batch at a time anyway). On CPU the
//! default is one replica per core with one intra-op thread each: EfficientNet-Lite0's small
//! convolutions keep one thread busy but split badly across several, so two single-threaded
//! replicas on two cores ran 1.5x the images of one replica with two threads (BENCHMARKS.md).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use protocol::manifest::Manifest;
use tch::Device;
use tokio::sync::{mpsc, oneshot};

use crate::config::{
    DEFAULT_MAX_BATCH_CPU, DEFAULT_MAX_BATCH_CUDA, DeviceChoice, default_engines,
    default_intra_op_threads,
};
use crate::model::Model;

/// What the engine threads need to start.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub manifest: Manifest,
    /// The model file's bytes, when fetched from the model bucket; `None`: the manifest's file.
    pub model_bytes: Option<Arc<Vec<u8>>>,
    pub device: DeviceChoice,
    /// fp16 on CUDA; ignored on CPU.
    pub half: bool,
    /// Model replicas, each on a thread of its own; `None`: 1 on CUDA, one per core on CPU.
    pub replicas: Option<usize>,
    /// libtorch's intra-op threads, per replica; `None`: the cores shared out among the replicas
    /// (at least 1).
    pub intra_op_threads: Option<usize>,
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
    /// Replicas of the model, each running one batch at a time.
    pub replicas: usize,
    /// Intra-op threads of each replica.
    pub intra_op_threads: usize,
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
    /// The engine threads are gone; nothing more can run.
    #[error("the engine threads have stopped")]
    Gone,
}

/// A batch sent to the engine threads, with where its result goes.
struct BatchRequest {
    data: Vec<u8>,
    n: usize,
    reply: oneshot::Sender<Result<BatchOutput, String>>,
}

/// The batch requests channel's receiving end, shared by the engine threads: the one holding
/// the lock waits for the next batch, the others wait for the lock.
type BatchRequests = Arc<Mutex<mpsc::Receiver<BatchRequest>>>;

/// The async side's handle on the engine threads; cheap to clone. The threads end when every
/// handle is dropped (each after the batch it is running).
#[derive(Clone)]
pub struct Engine {
    requests: mpsc::Sender<BatchRequest>,
    info: EngineInfo,
}

/// The engine threads, to join once every [`Engine`] handle is dropped.
#[derive(Debug)]
pub struct EngineThreads(Vec<JoinHandle<()>>);

impl EngineThreads {
    /// Waits for every engine thread; `Err` if one of them panicked.
    pub fn join(self) -> std::thread::Result<()> {
        let mut result = Ok(());
        for thread in self.0 {
            if let Err(panic) = thread.join() {
                result = Err(panic);
            }
        }
        result
    }
}

impl Engine {
    /// Starts the engine threads and waits (without blocking the runtime) until every replica is
    /// loaded and warmed up. Returns the handle and the threads, to join after dropping every
    /// handle.
    pub async fn start(options: EngineOptions) -> anyhow::Result<(Engine, EngineThreads)> {
        let choice = options.device;
        let device = tokio::task::spawn_blocking(move || resolve_device(choice))
            .await
            .context("the device check panicked")??;
        let replicas = options
            .replicas
            .unwrap_or_else(|| default_engines(device.is_cuda()))
            .max(1);
        let threads = options
            .intra_op_threads
            .unwrap_or_else(|| default_intra_op_threads(replicas))
            .max(1);
        let (requests_tx, requests_rx) = mpsc::channel::<BatchRequest>(replicas);
        let requests: BatchRequests = Arc::new(Mutex::new(requests_rx));
        let mut handles = Vec::with_capacity(replicas);
        let mut readies = Vec::with_capacity(replicas);
        for index in 0..replicas {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (options, requests) = (options.clone(), requests.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("engine-{index}"))
                .spawn(
                    move || match prepare(&options, device, replicas, threads, index) {
                        Ok((model, info)) => {
                            let _ = ready_tx.send(Ok(info));
                            serve(&model, &requests);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    },
                );
            match spawned {
                Ok(handle) => handles.push(handle),
                // The threads already started see the channel close and end.
                Err(e) => return Err(anyhow!(e).context("cannot spawn an engine thread")),
            }
            readies.push(ready_rx);
        }
        let mut info = None;
        for ready in readies {
            match ready.await {
                Ok(Ok(i)) => info = Some(i),
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("an engine thread panicked while loading the model"),
            }
        }
        let info = info.context("no engine thread started")?;
        Ok((
            Engine {
                requests: requests_tx,
                info,
            },
            EngineThreads(handles),
        ))
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Runs `n` images laid out one after the other in `data`, on the first free replica.
    pub async fn run(&self, data: Vec<u8>, n: usize) -> Result<BatchOutput, EngineError> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send(BatchRequest { data, n, reply })
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

/// Engine threads start one at a time: `at::set_num_threads` (called by us, and by libtorch on a
/// thread's first parallel operation) also resets process-wide state (oneDNN's primitive cache,
/// the pthreadpool), which must not happen while another replica runs. A starting replica holds
/// this lock for writing until its first run is done; every batch holds it for reading. At start
/// no batch runs yet; during a hot swap (a new model version loading beside the serving one)
/// batches wait for the new replica's load and first run, then both run side by side (its
/// warm-up runs under the read lock, beside the serving batches).
static LIBTORCH_STATE: RwLock<()> = RwLock::new(());

/// On an engine thread: threads, model, warm-up. Replica `index` of `replicas`.
fn prepare(
    options: &EngineOptions,
    device: Device,
    replicas: usize,
    threads: usize,
    index: usize,
) -> anyhow::Result<(Model, EngineInfo)> {
    let startup = LIBTORCH_STATE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Per thread: OpenMP's thread count is a setting of the calling thread.
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    let started = Instant::now();
    let bytes = options.model_bytes.as_deref().map(Vec::as_slice);
    let model = Model::load_bytes(&options.manifest, bytes, device, options.half)?;
    let max_batch = options.max_batch.unwrap_or(if device.is_cuda() {
        DEFAULT_MAX_BATCH_CUDA
    } else {
        DEFAULT_MAX_BATCH_CPU
    });
    tracing::info!(
        device = ?device,
        precision = model.precision(),
        half_requested = options.half,
        replica = index,
        replicas,
        intra_op_threads = threads,
        max_batch,
        model = %options.manifest.model_path().display(),
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded on {device:?} in {}",
        model.precision()
    );
    // One run even without warm-up: a thread's first parallel operation initialises libtorch's
    // per-thread state (`at::init_num_threads`, which calls `set_num_threads` again), and that
    // must happen here, under the startup lock.
    model
        .run_batch(&vec![0u8; model.image_len()], 1)
        .context("first run failed")?;
    drop(startup);
    let _batch = LIBTORCH_STATE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        replicas,
        intra_op_threads: threads,
        max_batch,
        image_len: model.image_len(),
        classes: model.classes(),
    };
    Ok((model, info))
}

/// On an engine thread: runs batches until every sender is dropped.
fn serve(model: &Model, requests: &BatchRequests) {
    loop {
        // The lock is held only while waiting for a batch, never while running one.
        let request = requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .blocking_recv();
        let Some(request) = request else { break };
        let started = Instant::now();
        let _batch = LIBTORCH_STATE
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A panic in a binding must fail the batch, not take the engine down.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            model.run_batch(&request.data, request.n)
        }))
        .unwrap_or_else(|panic| Err(anyhow!("libtorch panicked: {}", panic_message(&*panic))));
        let result = result
            .map(|logits| BatchOutput {
                logits,
                elapsed: started.elapsed(),
            })
            .map_err(|e| format!("{e:#}"));
        // The caller may have gone (shutdown); nothing to do then.
        let _ = request.reply.send(result);
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

    /// The tiny model's options on `device`.
    fn options(
        dir: &tempfile::TempDir,
        device: DeviceChoice,
        replicas: Option<usize>,
        intra_op_threads: Option<usize>,
        max_batch: Option<usize>,
        warmup_batches: usize,
    ) -> EngineOptions {
        EngineOptions {
            manifest: Manifest::load(dir.path().join("manifest.json")).expect("manifest"),
            model_bytes: None,
            device,
            half: false,
            replicas,
            intra_op_threads,
            max_batch,
            warmup_batches,
        }
    }

    /// Drops the last handle and waits for every engine thread to end cleanly.
    async fn stop(engine: Engine, threads: EngineThreads) {
        drop(engine);
        tokio::task::spawn_blocking(move || threads.join())
            .await
            .expect("join task")
            .expect("engine threads exit cleanly");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn engine_threads_run_batches_and_report_bad_ones() {
        let dir = tiny_model();
        let (engine, threads) =
            Engine::start(options(&dir, DeviceChoice::Cpu, Some(2), Some(1), None, 1))
                .await
                .expect("engine starts");
        let info = engine.info().clone();
        assert_eq!(
            (info.device, info.replicas, info.intra_op_threads),
            (Device::Cpu, 2, 1)
        );
        assert_eq!((info.max_batch, info.classes), (4, 10));
        let out = engine
            .run(vec![3; 2 * info.image_len], 2)
            .await
            .expect("batch");
        assert_eq!(out.logits.len(), 2);
        assert_eq!(out.logits[0], out.logits[1]);
        // More batches at once than replicas: every one is answered, with its own result.
        let runs = (0..8u8).map(|i| {
            let engine = engine.clone();
            let image_len = info.image_len;
            async move { engine.run(vec![i * 30; image_len], 1).await }
        });
        let outs = futures::future::join_all(runs).await;
        for (i, out) in outs.iter().enumerate() {
            let single = engine
                .run(vec![i as u8 * 30; info.image_len], 1)
                .await
                .expect("batch");
            assert_eq!(out.as_ref().expect("batch").logits, single.logits, "{i}");
        }
        let err = engine.run(vec![3; 5], 1).await.unwrap_err();
        assert!(matches!(err, EngineError::Failed(_)), "{err}");
        stop(engine, threads).await;
    }

    #[tokio::test]
    async fn replicas_and_threads_default_to_the_cores_on_cpu() {
        let dir = tiny_model();
        let (engine, threads) =
            Engine::start(options(&dir, DeviceChoice::Cpu, None, None, Some(2), 0))
                .await
                .expect("engine starts");
        let info = engine.info().clone();
        assert_eq!(
            (info.replicas, info.intra_op_threads),
            (crate::config::default_threads(), 1)
        );
        stop(engine, threads).await;
    }

    #[tokio::test]
    async fn engine_refuses_a_missing_cuda_device() {
        let dir = tiny_model();
        let result = Engine::start(options(
            &dir,
            DeviceChoice::Cuda(64),
            None,
            Some(1),
            Some(2),
            0,
        ))
        .await;
        let err = result.err().expect("no 65 GPUs here");
        assert!(err.to_string().contains("cuda:64"), "{err}");
    }
}
