//! The whole pipeline as real processes: nats-server, provisioning, ingress, preprocessor and
//! gpu-worker, each on free ports, each waited for on its `/readyz`. Killed on drop. Each tier
//! logs (at `CLOTHESLINE_TEST_LOG`, default `info`) to a file of its own, whose end is printed
//! when a test fails with the tier still held; with `CLOTHESLINE_TEST_LOG` set, logs go to the
//! test's stderr instead.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tierkit::provision::{Topology, provision};

use crate::nats::NatsServer;
use crate::{free_port, paths, wait_until};

/// Options of a stack; `Default` is the shipped model on CPU.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub manifest: PathBuf,
    pub preprocessors: usize,
    /// Start the preprocessors with `--allow-private-addresses` (default), so they can fetch
    /// from servers on 127.0.0.1; `false` runs them with the production address policy.
    pub allow_private: bool,
    /// Extra arguments for each tier.
    pub ingress_args: Vec<String>,
    pub preprocessor_args: Vec<String>,
    pub worker_args: Vec<String>,
    /// Run NATS with the per-role users of `nats/auth.conf` (least privilege): the streams are
    /// provisioned as `provision`, each tier connects as its own user with its own inbox prefix.
    pub nats_auth: bool,
    /// NATS URLs put before the server's own in every tier's comma-separated `NATS_URL`
    /// (e.g. an address where nothing listens), to show that tiers take a list of servers.
    pub extra_nats_urls: Vec<String>,
    /// Extra environment of every tier (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            manifest: paths::manifest(),
            preprocessors: 1,
            allow_private: true,
            ingress_args: vec![],
            preprocessor_args: vec![],
            worker_args: vec![],
            nats_auth: false,
            extra_nats_urls: vec![],
            env: vec![],
        }
    }
}

impl StackOptions {
    /// The `NATS_URL` the tiers get: the extra URLs, then the server's, comma separated.
    fn tier_nats_url(&self, nats: &NatsServer) -> String {
        let mut urls = self.extra_nats_urls.clone();
        urls.push(nats.url());
        urls.join(",")
    }
}

/// Lines of a tier's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// A tier's process and the port of its HTTP endpoint (API or health/metrics).
pub struct Tier {
    pub name: String,
    pub port: u16,
    child: Child,
    /// Its stderr, when not inherited.
    log: Option<tempfile::NamedTempFile>,
}

impl Tier {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// What it logged so far; `None` when its log goes to the test's stderr.
    pub fn log_text(&self) -> Option<String> {
        let log = self.log.as_ref()?;
        std::fs::read_to_string(log.path()).ok()
    }

    /// Its process id (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes sends on scale-in or a rollout; then waits for the process to exit,
    /// at most `within` (it panics past that), and returns how it exited.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.exited(within).await
    }

    /// Sends SIGTERM and returns at once (to stop several processes at the same moment).
    pub fn sigterm(&self) {
        sigterm(&self.child);
    }

    /// Waits for the process to exit, at most `within` (it panics past that), and returns how it
    /// exited.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let what = format!("{} to exit after SIGTERM", self.name);
        let child = &mut self.child;
        wait_until(&what, within, || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        })
        .await
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            return;
        }
        let Some(log) = &self.log else { return };
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "--- {} log, last {} of {} lines ---\n{}\n--- end of {} log ---",
            self.name,
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.name
        );
    }
}

pub struct Stack {
    pub nats: NatsServer,
    pub ingress: Tier,
    pub preprocessors: Vec<Tier>,
    pub worker: Tier,
    pub http: reqwest::Client,
    opts: StackOptions,
}

fn spawn_worker(opts: &StackOptions, nats_url: &str, i: usize) -> Tier {
    let port = free_port();
    let mut args = vec![
        "--manifest".into(),
        opts.manifest.display().to_string(),
        "--http-addr".into(),
        format!("127.0.0.1:{port}"),
        "--device".into(),
        "cpu".into(),
    ];
    args.extend(opts.worker_args.iter().cloned());
    let name = if i == 0 {
        "gpu-worker".to_string()
    } else {
        format!("gpu-worker-{i}")
    };
    spawn(
        &name,
        "clothesline-gpu-worker",
        port,
        nats_url,
        &tier_env(opts, "gpu-worker"),
        &args,
    )
}

fn spawn_ingress(opts: &StackOptions, nats_url: &str, i: usize) -> Tier {
    let port = free_port();
    let mut args = vec!["--http-addr".into(), format!("127.0.0.1:{port}")];
    args.extend(opts.ingress_args.iter().cloned());
    let name = if i == 0 {
        "ingress".to_string()
    } else {
        format!("ingress-{i}")
    };
    spawn(
        &name,
        "clothesline-ingress",
        port,
        nats_url,
        &tier_env(opts, "ingress"),
        &args,
    )
}

fn spawn_preprocessor(opts: &StackOptions, nats_url: &str, i: usize) -> Tier {
    let port = free_port();
    let mut args = vec![
        "--manifest".into(),
        opts.manifest.display().to_string(),
        "--http-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    if opts.allow_private {
        args.push("--allow-private-addresses".into());
    }
    args.extend(opts.preprocessor_args.iter().cloned());
    spawn(
        &format!("preprocessor-{i}"),
        "clothesline-preprocessor",
        port,
        nats_url,
        &tier_env(opts, "preprocessor"),
        &args,
    )
}

/// The environment of the tier that connects as `user`: its NATS user with per-role users,
/// then the options' extra environment.
fn tier_env(opts: &StackOptions, user: &str) -> Vec<(String, String)> {
    let mut env = if opts.nats_auth {
        NatsServer::tier_env(user)
    } else {
        vec![]
    };
    env.extend(opts.env.iter().cloned());
    env
}

fn spawn(
    name: &str,
    bin: &str,
    port: u16,
    nats_url: &str,
    env: &[(String, String)],
    args: &[String],
) -> Tier {
    let level = std::env::var("CLOTHESLINE_TEST_LOG").unwrap_or_else(|_| "info".into());
    let log = if std::env::var_os("CLOTHESLINE_TEST_LOG").is_some() {
        None
    } else {
        tempfile::NamedTempFile::new().ok()
    };
    let stderr = match log.as_ref().and_then(|f| f.reopen().ok()) {
        Some(file) => Stdio::from(file),
        None if log.is_none() => Stdio::inherit(),
        None => Stdio::null(),
    };
    let child = Command::new(paths::bin(bin))
        .current_dir(paths::repo_root())
        .env("NATS_URL", nats_url)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", level)
        .env("NO_COLOR", "1")
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    Tier {
        name: name.to_string(),
        port,
        child,
        log,
    }
}

async fn wait_ready(http: &reqwest::Client, tier: &Tier) {
    let url = tier.url("/readyz");
    wait_until(
        &format!("{} to be ready", tier.name),
        Duration::from_secs(180),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        },
    )
    .await;
}

/// The three tiers as processes against NATS at a given URL (one server, or a cluster's list):
/// what [`Stack`] runs on its own server, and what cluster tests run on a
/// [`crate::cluster::NatsCluster`].
pub struct Tiers {
    pub ingress: Tier,
    pub preprocessors: Vec<Tier>,
    pub worker: Tier,
    pub http: reqwest::Client,
}

impl Tiers {
    /// Starts the gpu-worker, the preprocessors and the ingress against `nats_url` (streams
    /// already provisioned) and waits until each is ready.
    pub async fn start(nats_url: &str, opts: &StackOptions) -> Self {
        let worker = spawn_worker(opts, nats_url, 0);

        let preprocessors = (0..opts.preprocessors)
            .map(|i| spawn_preprocessor(opts, nats_url, i))
            .collect::<Vec<_>>();

        let ingress = spawn_ingress(opts, nats_url, 0);

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        wait_ready(&http, &ingress).await;
        for p in &preprocessors {
            wait_ready(&http, p).await;
        }
        wait_ready(&http, &worker).await;
        Self {
            ingress,
            preprocessors,
            worker,
            http,
        }
    }
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Self {
        let nats = if opts.nats_auth {
            NatsServer::start_with_auth().await
        } else {
            NatsServer::start().await
        };
        let js = async_nats::jetstream::new(nats.client().await);
        provision(&js, &Topology::builtin()).await.unwrap();
        let Tiers {
            ingress,
            preprocessors,
            worker,
            http,
        } = Tiers::start(&opts.tier_nats_url(&nats), &opts).await;
        Self {
            nats,
            ingress,
            preprocessors,
            worker,
            http,
            opts,
        }
    }

    /// Starts one more preprocessor, with the stack's options, and waits until it is ready.
    pub async fn add_preprocessor(&mut self) -> &Tier {
        let i = self.preprocessors.len();
        let tier = spawn_preprocessor(&self.opts, &self.opts.tier_nats_url(&self.nats), i);
        wait_ready(&self.http, &tier).await;
        self.preprocessors.push(tier);
        &self.preprocessors[i]
    }

    /// Starts another ingress (`i` names it), with the stack's options, and waits until it is
    /// ready; the caller holds it (SIGKILLed on drop).
    pub async fn add_ingress(&self, i: usize) -> Tier {
        let tier = spawn_ingress(&self.opts, &self.opts.tier_nats_url(&self.nats), i);
        wait_ready(&self.http, &tier).await;
        tier
    }

    /// Starts another gpu-worker, with the stack's options, and waits until it is ready; the
    /// caller holds it (SIGKILLed on drop).
    pub async fn add_worker(&self, i: usize) -> Tier {
        let tier = spawn_worker(&self.opts, &self.opts.tier_nats_url(&self.nats), i);
        wait_ready(&self.http, &tier).await;
        tier
    }

    /// `POST /predict {"url": url}`: the status and the JSON body.
    pub async fn predict(&self, url: &str) -> (u16, serde_json::Value) {
        let res = self
            .http
            .post(self.ingress.url("/predict"))
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }
}
