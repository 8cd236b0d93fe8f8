//! `clothesline-model`: publishes model versions to NATS and changes which one serves, without
//! restarting anything (#17). Each command prints what it changed and exits non-zero on refusal,
//! so it fits a CI/CD step or a Kubernetes Job:
//!
//! ```text
//! clothesline-model publish model/manifest.json   # upload file + manifest, sha256 checked
//! clothesline-model list
//! clothesline-model canary 2.0.0 --weight 20
//! clothesline-model promote 2.0.0
//! clothesline-model rollback
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use protocol::Manifest;
use protocol::models::{MODELS_BUCKET, Policy};
use tierkit::models::Registry;
use tierkit::runtime::{LogArgs, NatsArgs};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Publish clothesline model versions to NATS; promote, canary, roll back"
)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Bucket replicas when the buckets are created here (3 on a clustered NATS).
    #[arg(long, env = "JETSTREAM_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// Give up after this many seconds.
    #[arg(long, env = "PROVISION_TIMEOUT_SECS", default_value_t = 60)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Uploads the manifest's model file and the manifest (sha256 verified before and after).
    Publish { manifest: PathBuf },
    /// Lists the published versions and the serving policy.
    List,
    /// Makes a published version serve every request (ends a canary).
    Promote { version: String },
    /// Sends a share of the requests to a published version.
    Canary {
        version: String,
        /// Percent of the requests, 0-100.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        weight: u8,
    },
    /// Ends the canary, or, without one, returns to the previous version.
    Rollback,
}

fn show(p: Option<&Policy>) -> String {
    p.map_or_else(
        || "none (the tiers serve the model shipped with them)".into(),
        Policy::describe,
    )
}

async fn execute(registry: &Registry, command: Command) -> anyhow::Result<()> {
    let changed = match command {
        Command::Publish { manifest } => {
            let m = Manifest::load(&manifest)?;
            let new = registry.publish(&m).await?;
            if new {
                println!(
                    "published {} {} (sha256 {}, input {}x{}, {} classes) to {MODELS_BUCKET}",
                    m.name,
                    m.version,
                    m.sha256,
                    m.input.height,
                    m.input.width,
                    m.classes.len()
                );
            } else {
                println!(
                    "{} {} was already published with this file: nothing changed",
                    m.name, m.version
                );
            }
            return Ok(());
        }
        Command::List => {
            for m in registry.list().await? {
                println!(
                    "{}\t{}\tsha256 {}\tinput {}x{}\t{} classes",
                    m.version,
                    m.name,
                    m.sha256,
                    m.input.height,
                    m.input.width,
                    m.classes.len()
                );
            }
            println!("policy: {}", show(registry.policy().await?.as_ref()));
            return Ok(());
        }
        Command::Promote { version } => registry.promote(&version).await?,
        Command::Canary { version, weight } => registry.canary(&version, weight).await?,
        Command::Rollback => registry.rollback().await?,
    };
    let (old, new) = changed;
    println!("policy was: {}", show(old.as_ref()));
    println!("policy now: {}", new.describe());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    let timeout = std::time::Duration::from_secs(args.timeout_secs);
    let (replicas, command) = (args.replicas, args.command);
    args.nats
        .run_job("clothesline-model", timeout, |js| async move {
            let registry = Registry::create(&js, replicas).await?;
            execute(&registry, command).await
        })
        .await
}
