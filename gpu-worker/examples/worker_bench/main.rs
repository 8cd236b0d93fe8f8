//! Worker benchmark: in one run, side by side, (a) the model's throughput in-process at each batch
//! size and (b) the gpu-worker's throughput draining a pre-filled tensors stream at its default
//! settings, and the ratio of (b) to the best of (a). A benchmark, not a test:
//!
//! ```text
//! source scripts/deps.sh
//! cargo run --release -p clothesline-gpu-worker --example worker_bench -- \
//!     --device cpu --manifest model/manifest.json --section gpu-worker-cpu
//! ```
//!
//! It starts its own nats-server (PATH or /usr/sbin) and provisions the shipped topology (the
//! tensors stream enlarged to hold a round). Then, for each of R rounds: it publishes M tensors
//! of pseudo-random uint8 pixels of the model's input shape (the pixel values do not change the
//! work a CNN does) with reply subjects and no deadline; runs the model in-process at each batch
//! size (on a thread of its own, like the worker's engine); and starts `clothesline_gpu_worker::run` in this process with the configuration the
//! binary would get from the same command line and environment (`--worker-arg` adds options),
//! timing the drain from the first reply to the last (`drain.rs`). Rounds alternate which of the
//! two goes first, and the figures add up over rounds, so on a shared machine both sides sample
//! the same changing load. The report (`report.rs`) is markdown on stdout, in `--out`, and with
//! `--section NAME` in BENCHMARKS.md.

#[path = "../common/inprocess.rs"]
mod inprocess;

mod drain;
mod machine;
mod report;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Parser;
use clothesline_gpu_worker::{Config, DeviceChoice, Model};
use protocol::Manifest;
use tch::Device;
use tierkit::runtime::NatsArgs;

use crate::inprocess::{Plan, Throughput};
use crate::report::{Report, Round};

#[derive(Debug, Parser)]
#[command(about = "in-process model throughput vs the gpu-worker draining a pre-filled stream")]
pub struct Args {
    /// The model manifest.
    #[arg(long, default_value = protocol::manifest::DEFAULT_MANIFEST)]
    manifest: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// fp16 (CUDA only), in-process and in the worker.
    #[arg(long)]
    half: bool,
    /// In-process batch sizes; default 1,2,4,8,16 on CPU, 1,8,32,128,256 on CUDA.
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Rounds; default 8 on CPU, 3 on CUDA.
    #[arg(long)]
    rounds: Option<usize>,
    /// Timed seconds per in-process batch size and round (at least); default 1.
    #[arg(long)]
    min_seconds: Option<f64>,
    /// Tensors the worker drains per round; default 150 on CPU, 10000 on CUDA.
    #[arg(long)]
    images: Option<usize>,
    /// Keep the tensors stream in memory instead of on disk (the shipped definition: file).
    #[arg(long)]
    memory_storage: bool,
    /// An extra worker option, as on its command line (repeat it), e.g. `--worker-arg=--max-batch=8`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// Give up on a drain after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the report into this section of BENCHMARKS.md (`clothesline-loadtest section`).
    #[arg(long)]
    section: Option<String>,
}

fn main() -> anyhow::Result<()> {
    // As the worker's binary does, for the in-process runs and the worker alike.
    clothesline_gpu_worker::malloc::keep_freed_memory();
    let args = Args::parse();
    let manifest = Manifest::load(&args.manifest)?;
    let device = match args.device {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => Device::Cuda(n),
    };
    let cuda = device.is_cuda();

    // The worker's configuration, as its binary would parse it (environment included).
    let mut argv = vec!["clothesline-gpu-worker".to_string(), "--device".into()];
    argv.push(match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    });
    if args.half {
        argv.push("--half".into());
    }
    argv.extend(args.worker_args.iter().cloned());
    let mut config = Config::try_parse_from(&argv).context("worker options")?;
    config.manifest = args.manifest.clone();
    config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    if std::env::var_os("RUST_LOG").is_none() {
        config.log.filter = "warn,clothesline_gpu_worker=info".into();
    }
    config.log.init();

    let sizes = if !args.batch_sizes.is_empty() {
        args.batch_sizes.clone()
    } else if cuda {
        vec![1, 8, 32, 128, 256]
    } else {
        vec![1, 2, 4, 8, 16]
    };
    let plan = Plan {
        warmup: if cuda { 10 } else { 2 },
        min_runs: 3,
        min_time: Duration::from_secs_f64(args.min_seconds.unwrap_or(1.0)),
    };
    let rounds = args.rounds.unwrap_or(if cuda { 3 } else { 8 }).max(1);
    let n = args.images.unwrap_or(if cuda { 10_000 } else { 150 });
    let max_batch = config.max_batch_for(cuda);
    ensure!(
        n > max_batch,
        "--images must be more than the worker's max batch ({max_batch})"
    );
    let mut report = Report::new(&args, &manifest, &config, cuda, plan, rounds, n);

    // The same runtime as the binary's `#[tokio::main]`: one worker thread per core.
    let rt = tokio::runtime::Runtime::new()?;
    let nats = stream::NatsServer::start()?;
    report.nats_version = nats.version.clone();
    config.nats = NatsArgs::local(nats.url());
    let reply_to = format!("clothesline.replies.worker-bench-{}", std::process::id());
    let (js, mut replies) = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await?;
        let replies = client.subscribe(reply_to.clone()).await?;
        client.flush().await?;
        let js = async_nats::jetstream::new(client);
        let topology = stream::topology(n, manifest.input_len(), args.memory_storage);
        tierkit::provision::provision(&js, &topology).await?;
        anyhow::Ok((js, replies))
    })?;

    // In-process with the worker's engines and intra-op threads (it sets the same when it starts):
    // each replica on a thread of its own, all at once, like the worker's engines.
    let engines = config.engines_for(cuda);
    let threads = i32::try_from(config.intra_op_threads_for(engines)).unwrap_or(i32::MAX);
    tch::set_num_threads(threads);
    let models = (0..engines)
        .map(|_| Model::load(&manifest, device, args.half))
        .collect::<anyhow::Result<Vec<_>>>()?;
    report.precision = models[0].precision();
    let timeout = Duration::from_secs(args.timeout_s);
    for r in 0..rounds {
        let took = rt.block_on(stream::publish(&js, &manifest, n, &reply_to))?;
        eprintln!(
            "worker_bench: round {}: {n} tensors published in {took:.1?}",
            r + 1
        );
        let worker_first = r % 2 == 1;
        let sweep = |models: &[Model]| -> anyhow::Result<Vec<Throughput>> {
            let mut table = Vec::new();
            for &size in &sizes {
                let t = inprocess::measure_replicas(models, threads, size, plan)?;
                eprintln!("worker_bench: round {}: in-process {}", r + 1, t.row());
                table.push(t);
            }
            Ok(table)
        };
        let mut table = if worker_first {
            vec![]
        } else {
            sweep(&models)?
        };
        let drained = rt.block_on(drain::drain(config.clone(), &mut replies, n, timeout))?;
        eprintln!(
            "worker_bench: round {}: worker {:.1} images/s, {drained:?}",
            r + 1,
            drained.images_per_s()
        );
        ensure!(drained.errors == 0, "{} error replies", drained.errors);
        if worker_first {
            table = sweep(&models)?;
        }
        report.rounds.push(Round {
            worker_first,
            inprocess: table,
            worker: drained,
        });
    }
    drop(models);

    let md = report.markdown();
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if let Some(section) = &args.section {
        report::write_section(section, &md)?;
    }
    Ok(())
}
