//! `clothesline-stack up`: starts the stack, writes its endpoints, prints `ready` (the one line
//! on stdout, so a script can block on it), and holds until SIGTERM or SIGINT, or until a tier
//! exits by itself; then stops the tiers and NATS last, each within its grace.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clothesline_tests::files::FileServer;
use tokio::signal::unix::{SignalKind, signal};

use crate::endpoints::{self, Extra};
use crate::options::StackArgs;
use crate::running::{Running, Shape};

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Where to write the endpoints (`KEY=value` lines).
    #[arg(long)]
    pub endpoints: PathBuf,
    /// A folder to serve over HTTP too (e.g. examples/images).
    #[arg(long)]
    pub serve: Option<PathBuf>,
    /// Where to serve it.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub serve_addr: SocketAddr,
    /// Seconds each process may take to exit after SIGTERM before it is killed (the tiers'
    /// grace period is 20 s by default, a few seconds more to leave).
    #[arg(long, default_value_t = 30)]
    pub stop_grace: u64,
}

/// Resolves on the first SIGTERM or SIGINT.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<bool> {
    // First, so that a signal during start-up stops what was started instead of orphaning it.
    let mut stop = StopSignal::install()?;
    let opts = args.stack.options()?;
    let log_dir = opts.log_dir.clone().unwrap_or_default();
    eprintln!("clothesline-stack: starting; logs in {}", log_dir.display());
    let shape = Shape {
        cluster: args.stack.cluster,
        ingresses: args.stack.ingresses,
        workers: args.stack.workers,
    };
    let mut stack = tokio::select! {
        started = Running::start(opts, shape) => started?,
        sig = stop.recv() => {
            eprintln!("clothesline-stack: {sig} while starting: stopped");
            return Ok(false);
        }
    };
    let served = match &args.serve {
        Some(dir) => Some(FileServer::serve_at(dir, args.serve_addr).await?),
        None => None,
    };
    let extra = Extra {
        log_dir: &log_dir,
        served: served.as_ref().map(|s| s.url("")),
    };
    endpoints::write(&args.endpoints, &endpoints::render(&stack, &extra))?;
    println!("ready");
    std::io::stdout().flush()?;

    let mut check = tokio::time::interval(Duration::from_secs(1));
    let died = loop {
        tokio::select! {
            sig = stop.recv() => {
                eprintln!("clothesline-stack: {sig}: stopping");
                break None;
            }
            _ = check.tick() => {
                if let Some(tier) = stack.exited() {
                    eprintln!("clothesline-stack: {tier} exited; stopping; logs in {}", log_dir.display());
                    break Some(tier);
                }
            }
        }
    };
    let clean = stack.stop(Duration::from_secs(args.stop_grace)).await;
    drop(served);
    let _ = std::fs::remove_file(&args.endpoints);
    Ok(clean && died.is_none())
}
