//! Model throughput: loads a manifest's model and measures images/s at batch sizes 1, 2, 4, 8, 16
//! (warm-up, then at least N timed runs; see `common/inprocess.rs`), printed as a markdown table.
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
use clothesline_gpu_worker::{DeviceChoice, Model};
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
    /// Intra-op threads (CPU); default: libtorch's own.
    #[arg(long)]
    threads: Option<i32>,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    batch_sizes: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let manifest = Manifest::load(&args.manifest)?;
    let device = match args.device {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => Device::Cuda(n),
    };
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let model = Model::load(&manifest, device, args.half)?;
    println!(
        "model {} {} ({}), device {device:?}, {}, {} intra-op threads, at least {} timed runs after {} warm-up runs\n",
        manifest.name,
        manifest.version,
        manifest.model_path().display(),
        model.precision(),
        tch::get_num_threads(),
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
        println!("{}", inprocess::measure(&model, n, plan)?.row());
    }
    Ok(())
}
