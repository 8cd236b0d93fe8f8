//! Model throughput: loads a manifest's model and measures images/s at batch sizes 1, 2, 4, 8, 16
//! (warm-up, then at least N timed runs; see `common/inprocess.rs`), printed as a markdown table.
//! Like the worker, it runs one replica per core with one thread each on CPU by default
//! (`--engines`, `--threads`), all replicas at once, and adds up their images/s.
//! A benchmark, not a test: run it with a release build on the machine of interest, e.g.
//!
//! ```text
//! source scripts/deps.sh
//! cargo run --release -p clothesline-gpu-worker --example model_bench -- \
//!     --manifest /tmp/tiny-model/manifest.json --device cpu --runs 20
//! ```

// Shared with worker_bench, which uses all of it.
#[allow(dead_code)]
#[path = "common/inprocess.rs"]
mod inprocess;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clothesline_gpu_worker::{DeviceChoice, Model, config};
use protocol::Manifest;
use tch::Device;

#[derive(Debug, Parser)]
#[command(about = "images/s of a manifest's model at batch sizes 1..16")]
struct Args {
    /// The model manifest.
    #[arg(long, default_value = protocol::manifest::DEFAULT_MANIFEST)]
    manifest: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// fp16 (CUDA only).
    #[arg(long)]
    half: bool,
    /// Timed runs per batch size (at least).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Timed seconds per batch size (at least).
    #[arg(long, default_value_t = 0.0)]
    min_seconds: f64,
    /// Untimed runs per batch size first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Model replicas run side by side, each on a thread of its own; default: the worker's
    /// (1 on CUDA, one per core on CPU).
    #[arg(long)]
    engines: Option<usize>,
    /// Intra-op threads of each replica (CPU); default: the worker's (the cores shared out).
    #[arg(long)]
    threads: Option<usize>,
    /// Leave glibc's malloc settings alone (the worker tunes them: see `malloc.rs`).
    #[arg(long)]
    no_malloc_tuning: bool,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    batch_sizes: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let malloc_tuned =
        !args.no_malloc_tuning && clothesline_gpu_worker::malloc::keep_freed_memory();
    let manifest = Manifest::load(&args.manifest)?;
    let device = match args.device {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => Device::Cuda(n),
    };
    let engines = args
        .engines
        .unwrap_or_else(|| config::default_engines(device.is_cuda()))
        .max(1);
    let threads = args
        .threads
        .unwrap_or_else(|| config::default_intra_op_threads(engines));
    let threads = i32::try_from(threads).unwrap_or(i32::MAX);
    tch::set_num_threads(threads);
    let models = (0..engines)
        .map(|_| Model::load(&manifest, device, args.half))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "model {} {} ({}), device {device:?}, {}, {engines} replica(s) of {threads} intra-op thread(s) side by side, malloc tuned: {malloc_tuned}, at least {} timed runs after {} warm-up runs\n",
        manifest.name,
        manifest.version,
        manifest.model_path().display(),
        models[0].precision(),
        args.runs,
        args.warmup,
    );
    println!("{}", inprocess::TABLE_HEADER);
    let plan = inprocess::Plan {
        warmup: args.warmup,
        min_runs: args.runs,
        min_time: Duration::from_secs_f64(args.min_seconds.max(0.0)),
    };
    for &n in &args.batch_sizes {
        println!(
            "{}",
            inprocess::measure_replicas(&models, threads, n, plan)?.row()
        );
    }
    Ok(())
}
