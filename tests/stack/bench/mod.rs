//! `clothesline-stack bench pipeline|ingress|plumbing|tracing`: the benchmarks behind
//! `scripts/bench.sh`, `scripts/bench_ingress.sh`, `scripts/bench_plumbing.sh` and
//! `scripts/bench_tracing.sh` (which only build the release binaries, unless `BENCH_BIN` is set,
//! and run this). Each starts local stacks of its own (the harness's, as `up` does), runs
//! `clothesline-loadtest run` against them as a child process, and writes its raw results to a
//! folder (`BENCH_KEEP`, else a new temp folder): the files that `clothesline-loadtest report
//! NAME DIR` reads; then it runs that report and `clothesline-loadtest section` (the tracing one
//! prints its lines instead). Run from the repository root (the scripts `cd` there): the
//! examples, scripts/null_model.py, scripts/monolith and benchmarks/ are found from it.
//!
//! - [`context`]: the results folder, the log lines, the load generator;
//! - [`stack`]: a local stack, its endpoints, CPU seconds and metrics;
//! - [`procs`]: `/proc` (CPU seconds, resident memory, children, root) and Prometheus text;
//! - [`machine`]: the `machine.txt` lines (date, CPU, memory, load average, commit);
//! - one module per benchmark, [`pipeline`]'s examples and [`plumbing`]'s perf profiles and
//!   Flask monolith apart.

mod context;
mod examples;
mod ingress;
mod machine;
mod monolith;
mod perf;
mod pipeline;
mod plumbing;
mod procs;
mod stack;
mod tracing;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// The pipeline's figures (scripts/bench.sh): model and preprocessing ceilings, the load
    /// generator's cost, the open-loop sweep and closed loops over HTTP and NATS.
    Pipeline(pipeline::PipelineArgs),
    /// The ingress's scenarios (scripts/bench_ingress.sh): capacity, added latency, overload,
    /// cancellations.
    Ingress(ingress::IngressArgs),
    /// The pipeline's own cost with a null model, perf profiles, hops, and the pipeline against
    /// a Flask monolith (scripts/bench_plumbing.sh).
    Plumbing(plumbing::PlumbingArgs),
    /// Throughput and CPU per answer with tracing off and on (scripts/bench_tracing.sh).
    Tracing(tracing::TracingArgs),
}

/// What every benchmark takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Folder of the release binaries, or of binaries already built (e.g. target/debug for a
    /// dry run; the examples then run in that profile too).
    #[arg(long, env = "BENCH_BIN", default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Folder of images (`<class>/<file>`); default: the validation split of
    /// `CLOTHESLINE_DATASET`, else of ../shared/datasets/clothing-dataset-small.
    #[arg(long, env = "BENCH_IMAGES")]
    pub images: Option<PathBuf>,
    /// A folder for the raw results (its earlier *.json and *.txt removed); default: a new temp
    /// folder.
    #[arg(long, env = "BENCH_KEEP")]
    pub keep: Option<PathBuf>,
    /// The gpu-worker's device.
    #[arg(long, env = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// The tiers' `RUST_LOG`.
    #[arg(long, env = "RUST_LOG", default_value = "warn")]
    pub log_level: String,
    /// The model manifest (default: the shipped one); the plumbing benchmark picks its own.
    #[arg(long, env = "MODEL_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// A folder laid out like nats/jetstream/ (default: the built-in definitions).
    #[arg(long, env = "DEFINITIONS")]
    pub definitions: Option<PathBuf>,
}

/// Runs the benchmark; on SIGTERM or SIGINT it is dropped, and with it what it started (the
/// stacks' processes, the load generator, the servers: each killed on drop).
pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let bench = async {
        match args.which {
            Which::Pipeline(a) => pipeline::run(a).await,
            Which::Ingress(a) => ingress::run(a).await,
            Which::Plumbing(a) => plumbing::run(a).await,
            Which::Tracing(a) => tracing::run(a).await,
        }
    };
    let stopped_by = tokio::select! {
        done = bench => return done.map(|()| true),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("clothesline-stack bench: {stopped_by}: stopped");
    Ok(false)
}
