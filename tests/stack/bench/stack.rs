//! A benchmark's local stack ([`BenchStack`]): the harness's, as `clothesline-stack up` runs
//! it, with its endpoints, its processes' CPU seconds and its tiers' metrics.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;

use super::context::Bench;
use super::procs;
use crate::running::Running;

/// How long each process may take to exit after SIGTERM (as `up --stop-grace`).
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What a stack adds to the common options.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub manifest: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    pub ingress_args: Vec<String>,
    pub preprocessor_args: Vec<String>,
    pub worker_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A running stack and its endpoints.
pub struct BenchStack {
    running: Running,
    pub nats_url: String,
    pub ingress_port: u16,
    pub preprocessor_port: u16,
    pub worker_port: u16,
    /// nats-server, the ingress, the preprocessor, the gpu-worker.
    pub pids: [u32; 4],
    http: reqwest::Client,
}

impl BenchStack {
    pub fn new(running: Running) -> anyhow::Result<Self> {
        let t = &running.tiers;
        let nats_pid = *running.nats.pids().first().context("nats-server's pid")?;
        let pre = t.preprocessors.first().context("no preprocessor")?;
        Ok(Self {
            nats_url: running.nats.url(),
            ingress_port: t.ingress.port,
            preprocessor_port: pre.port,
            worker_port: t.worker.port,
            pids: [nats_pid, t.ingress.pid(), pre.pid(), t.worker.pid()],
            http: t.http.clone(),
            running,
        })
    }

    pub fn ingress_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingress_port)
    }

    pub fn ingress_pid(&self) -> u32 {
        self.pids[1]
    }

    /// CPU seconds so far of nats-server, the ingress, the preprocessor, the gpu-worker.
    pub fn cpu(&self) -> anyhow::Result<[f64; 4]> {
        let mut out = [0.0; 4];
        for (slot, pid) in out.iter_mut().zip(self.pids) {
            *slot = procs::cpu_seconds(pid)?;
        }
        Ok(out)
    }

    /// The Prometheus text of the tier listening on `port`.
    pub async fn metrics(&self, port: u16) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let res = self.http.get(&url).send().await?.error_for_status()?;
        Ok(res.text().await?)
    }

    /// nice -10 for its four processes when this runs as root; nothing otherwise.
    pub fn boost(&self) {
        if procs::is_root() {
            let pids = self.pids.map(|p| p.to_string());
            let _ = std::process::Command::new("renice")
                .args(["-n", "-10", "-p"])
                .args(pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops the tiers, then nats-server, each within its grace; whether all exited by itself.
    pub async fn stop(mut self, bench: &Bench) -> bool {
        let clean = self.running.stop(STOP_GRACE).await;
        if !clean {
            bench.log(format!(
                "the stack did not stop cleanly; logs in {}",
                bench.path(&bench.logs)
            ));
        }
        clean
    }
}
