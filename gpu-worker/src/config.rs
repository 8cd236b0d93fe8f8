//! Command line and environment of the gpu-worker tier; every option has an environment variable.
//! The batching and engine defaults depend on the device, so they are resolved once it is known
//! whether CUDA is there ([`Config::max_batch_for`], [`Config::max_batch_delay_for`],
//! [`Config::engines_for`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use tierkit::runtime::{LogArgs, NatsArgs};

/// Default largest batch on CPU: beyond a few images a CPU gains little throughput per image
/// and every image of the batch waits for the slowest.
pub const DEFAULT_MAX_BATCH_CPU: usize = 4;
/// Default largest batch on CUDA: a small CNN at 224x224 still gains throughput up to 32 and more,
/// and a batch of 32 takes a few milliseconds.
pub const DEFAULT_MAX_BATCH_CUDA: usize = 32;
/// Default wait for a fuller batch on CPU, in ms. One image takes ~10-30 ms on a few cores for an
/// EfficientNet-Lite0, so 5 ms costs at most a small fraction of the latency when the load is
/// light, and lets requests arriving together share a batch.
pub const DEFAULT_MAX_BATCH_DELAY_MS_CPU: u64 = 5;
/// Default wait for a fuller batch on CUDA, in ms. A batch runs in a few ms on a GPU, so waiting
/// longer than that would dominate the latency at light load; under load, batches fill while the
/// previous one runs anyway (the batcher keeps collecting), so the delay only matters when idle.
pub const DEFAULT_MAX_BATCH_DELAY_MS_CUDA: u64 = 2;

/// Where the model runs: `auto` (CUDA if available, else CPU), `cpu`, `cuda` (device 0), `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("device {s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "clothesline-gpu-worker",
    version,
    about = "Pulls preprocessed tensors, runs them through the model in batches, replies to the caller."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// The model manifest: model file, sha256, input and classes.
    #[arg(long, env = "MODEL_MANIFEST", default_value = protocol::manifest::DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "GPU_WORKER_HTTP_ADDR", default_value = "0.0.0.0:9092")]
    pub http_addr: SocketAddr,
    /// Where the model runs: auto (CUDA if available), cpu, cuda or cuda:N.
    #[arg(long, env = "DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Run the model in fp16 (CUDA autocast); ignored on CPU.
    #[arg(long, env = "GPU_WORKER_HALF")]
    pub half: bool,
    /// Largest batch; default 4 on CPU, 32 on CUDA.
    #[arg(long, env = "GPU_WORKER_MAX_BATCH",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: Option<u32>,
    /// Longest wait for a fuller batch when an engine is free, in ms; default 5 on CPU, 2 on CUDA.
    #[arg(long, env = "GPU_WORKER_MAX_BATCH_DELAY_MS",
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub max_batch_delay_ms: Option<u64>,
    /// Run a partial batch at once when an engine is free and the server has no more tensors
    /// pending for the worker (waiting could not fill it); `false` always waits the batch delay
    /// for a fuller one.
    #[arg(long, env = "GPU_WORKER_DISPATCH_WHEN_IDLE", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub dispatch_when_idle: bool,
    /// Model replicas in this process (engines), each on a thread of its own running one batch
    /// at a time; default 1 on CUDA, one per core on CPU.
    #[arg(long, env = "GPU_WORKER_ENGINES",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub engines: Option<u32>,
    /// Threads libtorch uses within one operation, per engine, on CPU; default: the cores shared
    /// out among the engines (1 with the CPU default of one engine per core).
    #[arg(long, env = "GPU_WORKER_INTRA_OP_THREADS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub intra_op_threads: Option<u32>,
    /// Warm-up runs at each batch size used (1 and max-batch) before the worker is ready.
    #[arg(long, env = "GPU_WORKER_WARMUP_BATCHES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub warmup_batches: u32,
    /// On shutdown, how long to wait for the batches in flight, in milliseconds.
    #[arg(long, env = "GPU_WORKER_SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
    /// After a model version is replaced (promote, rollback, canary end), how long it keeps
    /// answering the tensors already prepared for it, in ms, before it is freed.
    #[arg(long, env = "GPU_WORKER_MODEL_LINGER_MS", default_value_t = 10_000)]
    pub model_linger_ms: u64,
    /// Skip tensors whose caller went away (ids published on clothesline.cancel); `false` runs
    /// them anyway, e.g. to measure what cancellation saves.
    #[arg(long, env = "GPU_WORKER_HONOR_CANCELLATIONS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub honor_cancellations: bool,
}

/// The number of cores, at least 1.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Engines when not set: 1 on CUDA, one per core on CPU.
pub fn default_engines(cuda: bool) -> usize {
    if cuda { 1 } else { default_threads() }
}

/// Intra-op threads of each of `engines` engines when not set: the cores shared out, at least 1.
pub fn default_intra_op_threads(engines: usize) -> usize {
    (default_threads() / engines.max(1)).max(1)
}

impl Config {
    /// The defaults with `nats_url` and `manifest`, on CPU, health server on a free local port:
    /// for tests.
    pub fn local(nats_url: impl Into<String>, manifest: impl Into<PathBuf>) -> Self {
        let mut config = Self::parse_from(["clothesline-gpu-worker"]);
        config.nats = NatsArgs::local(nats_url);
        config.manifest = manifest.into();
        config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.device = DeviceChoice::Cpu;
        config
    }

    /// The largest batch on `device`: the option, else the device's default.
    pub fn max_batch_for(&self, cuda: bool) -> usize {
        match self.max_batch {
            Some(n) => n as usize,
            None if cuda => DEFAULT_MAX_BATCH_CUDA,
            None => DEFAULT_MAX_BATCH_CPU,
        }
    }

    /// The longest wait for a fuller batch on `device`: the option, else the device's default.
    pub fn max_batch_delay_for(&self, cuda: bool) -> Duration {
        Duration::from_millis(match self.max_batch_delay_ms {
            Some(ms) => ms,
            None if cuda => DEFAULT_MAX_BATCH_DELAY_MS_CUDA,
            None => DEFAULT_MAX_BATCH_DELAY_MS_CPU,
        })
    }

    /// Engines on `device`: the option, else [`default_engines`].
    pub fn engines_for(&self, cuda: bool) -> usize {
        self.engines
            .map_or_else(|| default_engines(cuda), |n| n as usize)
    }

    /// Intra-op threads of each of `engines` engines: the option, else
    /// [`default_intra_op_threads`].
    pub fn intra_op_threads_for(&self, engines: usize) -> usize {
        self.intra_op_threads
            .map_or_else(|| default_intra_op_threads(engines), |n| n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn batching_defaults_follow_the_device() {
        let c = Config::local("nats://127.0.0.1:1", "m.json");
        assert_eq!((c.max_batch_for(false), c.max_batch_for(true)), (4, 32));
        assert_eq!(c.max_batch_delay_for(false), Duration::from_millis(5));
        assert_eq!(c.max_batch_delay_for(true), Duration::from_millis(2));
        assert_eq!(c.warmup_batches, 2);
        assert_eq!(
            (c.engines_for(true), c.engines_for(false)),
            (1, default_threads())
        );
        assert_eq!(c.intra_op_threads_for(1), default_threads());
        assert_eq!(c.intra_op_threads_for(default_threads()), 1);
        assert_eq!(c.intra_op_threads_for(10_000), 1);
        let c = Config::parse_from(["w", "--engines", "3", "--intra-op-threads", "2"]);
        assert_eq!((c.engines_for(true), c.intra_op_threads_for(3)), (3, 2));
        assert!(Config::try_parse_from(["w", "--engines", "0"]).is_err());
        let c = Config::parse_from([
            "w",
            "--device",
            "cuda:1",
            "--max-batch",
            "8",
            "--max-batch-delay-ms",
            "0",
            "--half",
        ]);
        assert_eq!(c.device, DeviceChoice::Cuda(1));
        assert!(c.half);
        assert_eq!((c.max_batch_for(true), c.max_batch_for(false)), (8, 8));
        assert_eq!(c.max_batch_delay_for(true), Duration::ZERO);
        assert!(Config::try_parse_from(["w", "--max-batch", "0"]).is_err());
    }
}
