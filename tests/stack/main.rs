//! `clothesline-stack`: the local stack of the integration harness (tests/src/stack.rs,
//! tests/src/cluster.rs), as a command for the scripts (`scripts/up.sh`, `scripts/chaos.sh`, the
//! `scripts/bench*.sh`):
//!
//! - `up`: nats-server (or a 3-node cluster, streams at 3 replicas), provisioning, the tiers;
//!   writes their endpoints as `KEY=value` lines, prints `ready`, and holds until SIGTERM or
//!   SIGINT; then stops the tiers, then NATS, each within its grace;
//! - `chaos`: a steady load while tiers and NATS servers are SIGKILLed and restarted; reports
//!   what every caller got and writes the Markdown section of RELIABILITY.md;
//! - `bench pipeline|ingress|plumbing|tracing`: the benchmarks of the `scripts/bench*.sh`
//!   (tests/stack/bench/), each on stacks of its own; raw results for `clothesline-loadtest
//!   report`, then their section of BENCHMARKS.md;
//! - `ports N`: N free TCP ports, no two alike;
//! - `drained`: waits until the work queues of a running stack are drained.

mod bench;
mod chaos;
mod endpoints;
mod options;
mod report;
mod running;
mod up;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "clothesline-stack",
    about = "The local clothesline stack, for the scripts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the stack, write its endpoints, hold until SIGTERM/SIGINT.
    Up(up::UpArgs),
    /// The chaos run: load, SIGKILLs and restarts, the report.
    Chaos(chaos::ChaosArgs),
    /// A benchmark: its stacks, its load tests, its raw results, its section of BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Print N free TCP ports of 127.0.0.1, one per line, no two alike.
    Ports {
        #[arg(default_value_t = 1)]
        count: usize,
    },
    /// Wait until both work queues of a running stack are drained (nothing pending, nothing
    /// unacknowledged); exit 1 if they are not within the timeout.
    Drained {
        /// The stack's NATS (NATS_URL of the endpoints).
        #[arg(long)]
        nats_url: String,
        /// Seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ports { count } = cli.command {
        for _ in 0..count {
            println!("{}", clothesline_tests::free_port());
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("clothesline-stack: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Chaos(args) => chaos::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Drained { nats_url, timeout } => {
                let within = Duration::from_secs(timeout);
                let drained = running::drained(&nats_url, within).await?;
                if drained.is_none() {
                    eprintln!("the work queues did not drain within {within:?}");
                }
                Ok(drained.is_some())
            }
            Command::Ports { .. } => Ok(true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("clothesline-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}
