//! `clothesline-provision`: creates or updates the JetStream streams and consumers, and creates
//! the model buckets (see `clothesline-model`) when missing, then exits.
//! Idempotent; run it before (or after) starting the tiers, e.g. as a one-shot compose service.

use std::path::PathBuf;

use clap::Parser;
use tierkit::provision::{Topology, provision};
use tierkit::runtime::{LogArgs, NatsArgs};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Create or update clothesline's JetStream streams, consumers and results bucket"
)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Folder with the definitions (`*.stream.json`, `*.consumer.json`); the built-in ones otherwise.
    #[arg(long, env = "JETSTREAM_DEFINITIONS")]
    definitions: Option<PathBuf>,
    /// Stream and bucket replicas (3 on a clustered NATS).
    #[arg(long, env = "JETSTREAM_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// How long the answer to a request with a caller's id (`X-Request-Id`) is kept, in
    /// seconds: a retry with that id within it gets the same answer without a second inference.
    #[arg(long, env = "IDEMPOTENCY_WINDOW_SECS", default_value_t = tierkit::provision::DEFAULT_IDEMPOTENCY_WINDOW.as_secs())]
    idempotency_window_secs: u64,
    /// Give up after this many seconds without a NATS connection.
    #[arg(long, env = "PROVISION_TIMEOUT_SECS", default_value_t = 60)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    let topology = match &args.definitions {
        Some(dir) => Topology::from_dir(dir)?,
        None => Topology::builtin(),
    }
    .with_replicas(args.replicas)
    .with_idempotency_window(std::time::Duration::from_secs(args.idempotency_window_secs));
    let timeout = std::time::Duration::from_secs(args.timeout_secs);
    args.nats
        .run_job("clothesline-provision", timeout, |js| async move {
            provision(&js, &topology).await?;
            Ok(())
        })
        .await?;
    println!(
        "provisioned streams, consumers, the results bucket and the model buckets on {}",
        args.nats.url
    );
    Ok(())
}
