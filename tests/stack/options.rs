//! The options of a stack on the command line (`up` and `chaos` share them), turned into the
//! harness's [`StackOptions`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clothesline_tests::paths;
use clothesline_tests::stack::{Ports, StackOptions};
use tierkit::provision::Topology;

#[derive(Debug, Args)]
pub struct StackArgs {
    /// A 3-node NATS cluster (routes on loopback, JetStream on each, streams at 3 replicas);
    /// every tier gets all three URLs.
    #[arg(long)]
    pub cluster: bool,
    #[arg(long, default_value_t = 1)]
    pub ingresses: usize,
    #[arg(long, default_value_t = 1)]
    pub preprocessors: usize,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Folder of the tiers' binaries (e.g. target/release); default: this binary's folder.
    #[arg(long, env = "CLOTHESLINE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The model manifest.
    #[arg(long, env = "MODEL_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// The gpu-worker's device (cpu, cuda, auto).
    #[arg(long, env = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// A folder laid out like nats/jetstream/ (default: the built-in definitions).
    #[arg(long)]
    pub definitions: Option<PathBuf>,
    /// The consumers' ack wait in seconds (default: the definitions').
    #[arg(long)]
    pub ack_wait: Option<u64>,
    /// Let the preprocessors fetch from private and loopback addresses (127.0.0.1).
    #[arg(long)]
    pub allow_private_addresses: bool,
    /// An argument for every ingress (repeat; `--ingress-arg=--max-inflight --ingress-arg=40`).
    #[arg(long = "ingress-arg", allow_hyphen_values = true)]
    pub ingress_args: Vec<String>,
    /// An argument for every preprocessor.
    #[arg(long = "preprocessor-arg", allow_hyphen_values = true)]
    pub preprocessor_args: Vec<String>,
    /// An argument for every gpu-worker.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// `KEY=value` set in every tier's environment (beside this process's own, which they
    /// inherit).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// The address the (first) ingress listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub ingress_host: String,
    /// Ports of the first tier of each kind and of nats-server (default: free ones).
    #[arg(long)]
    pub ingress_port: Option<u16>,
    #[arg(long)]
    pub preprocessor_port: Option<u16>,
    #[arg(long)]
    pub worker_port: Option<u16>,
    #[arg(long)]
    pub nats_port: Option<u16>,
    #[arg(long)]
    pub nats_monitor_port: Option<u16>,
    /// Folder of the logs (`<tier>.log`, `nats.log`), kept; default: a new temp folder.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The tiers' `RUST_LOG`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl StackArgs {
    /// The harness's options, the log folder created.
    pub fn options(&self) -> anyhow::Result<StackOptions> {
        let mut topology = match &self.definitions {
            Some(dir) => Topology::from_dir(dir)?,
            None => Topology::builtin(),
        };
        if let Some(secs) = self.ack_wait {
            topology.preprocessor.ack_wait = Duration::from_secs(secs);
            topology.gpu_worker.ack_wait = Duration::from_secs(secs);
        }
        let env = self
            .env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--env {kv}: not KEY=value"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(StackOptions {
            manifest: self.manifest.clone().unwrap_or_else(paths::manifest),
            preprocessors: self.preprocessors.max(1),
            allow_private: self.allow_private_addresses,
            ingress_args: self.ingress_args.clone(),
            preprocessor_args: self.preprocessor_args.clone(),
            worker_args: self.worker_args.clone(),
            env,
            bin_dir: self.bin_dir()?,
            log_dir: Some(self.log_dir()?),
            log_level: self.log_level.clone(),
            device: self.device.clone(),
            ingress_host: self.ingress_host.clone(),
            ports: Ports {
                ingress: self.ingress_port,
                preprocessor: self.preprocessor_port,
                worker: self.worker_port,
                nats: self.nats_port,
                nats_monitor: self.nats_monitor_port,
            },
            topology,
            ..StackOptions::default()
        })
    }

    fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this binary's folder")?
                .to_path_buf(),
        };
        let dir = std::path::absolute(&dir)?;
        let worker = dir.join("clothesline-gpu-worker");
        anyhow::ensure!(
            worker.exists(),
            "{} not found: build with `cargo build --workspace --bins` (or --release)",
            worker.display()
        );
        Ok(dir)
    }

    fn log_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = match &self.log_dir {
            Some(dir) => dir.clone(),
            None => tempfile::Builder::new()
                .prefix("clothesline-logs.")
                .tempdir()?
                .keep(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(std::path::absolute(&dir)?)
    }
}
