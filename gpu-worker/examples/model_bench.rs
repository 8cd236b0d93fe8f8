//! Model throughput: loads a manifest's model and measures images/s at batch sizes 1, 2, 4, 8, 16
//! (warm-up, then the median of N timed runs), printed as a markdown table. A benchmark, not a
//! test: run it with a release build on the machine of interest, e.g.
//!
//! ```text
//! source scripts/deps.sh
//! cargo run --release -p clothesline-gpu-worker --example model_bench -- \
//!     --manifest /tmp/tiny-model/manifest.json --device cpu --runs 20
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Timed runs per batch size (the median is reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
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
        "model {} {} ({}), device {device:?}, {}, {} intra-op threads, median of {} runs after {} warm-up runs\n",
        manifest.name,
        manifest.version,
        manifest.model_path().display(),
        model.precision(),
        tch::get_num_threads(),
        args.runs,
        args.warmup,
    );
    println!("| batch | median ms/batch | ms/image | images/s |");
    println!("|---:|---:|---:|---:|");
    for &n in &args.batch_sizes {
        // Different images per slot, so nothing is trivially constant.
        let data: Vec<u8> = (0..n * model.image_len())
            .map(|i| (i % 251) as u8)
            .collect();
        for _ in 0..args.warmup {
            model.run_batch(&data, n)?;
        }
        let mut times: Vec<Duration> = (0..args.runs.max(1))
            .map(|_| {
                let t = Instant::now();
                model.run_batch(&data, n).map(|_| t.elapsed())
            })
            .collect::<anyhow::Result<_>>()?;
        times.sort();
        let median = times[times.len() / 2].as_secs_f64();
        println!(
            "| {n} | {:.2} | {:.2} | {:.0} |",
            median * 1e3,
            median * 1e3 / n as f64,
            n as f64 / median
        );
    }
    Ok(())
}
