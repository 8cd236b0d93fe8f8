//! The whole pipeline as real processes: nats-server, provisioning, ingress, preprocessor and
//! gpu-worker, each on free ports (or the ports asked for), each waited for on its `/readyz`.
//! Killed on drop. Each tier logs (at `CLOTHESLINE_TEST_LOG`, default `info`) to a file of its
//! own, whose end is printed when a test fails with the tier still held; with
//! `CLOTHESLINE_TEST_LOG` set, logs go to the test's stderr instead; with a log folder, to
//! `<folder>/<tier>.log`. The same code starts the local stack of the scripts
//! (`clothesline-stack up`, tests/stack/).

use std::path::PathBuf;
use std::time::Duration;

use tierkit::provision::{Topology, provision};

use crate::nats::{NatsServer, ServerConfig};
use crate::tier::{Launch, wait_ready};
pub use crate::tier::{Tier, sigterm};
use crate::{free_port, paths};

/// Ports asked for (`None`: a free one): the first tier of each kind, and nats-server.
#[derive(Debug, Clone, Default)]
pub struct Ports {
    pub ingress: Option<u16>,
    pub preprocessor: Option<u16>,
    pub worker: Option<u16>,
    pub nats: Option<u16>,
    pub nats_monitor: Option<u16>,
}

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
    /// The folder of the tiers' binaries.
    pub bin_dir: PathBuf,
    /// A folder for the logs (`<tier>.log`, kept); `None`: temp files (see the module's doc).
    pub log_dir: Option<PathBuf>,
    /// The tiers' `RUST_LOG`.
    pub log_level: String,
    /// The gpu-worker's `--device`.
    pub device: String,
    /// The address the ingress listens on (`0.0.0.0` to be reached from elsewhere).
    pub ingress_host: String,
    pub ports: Ports,
    /// The streams, consumers and buckets provisioned.
    pub topology: Topology,
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
            bin_dir: paths::bin_dir(),
            log_dir: None,
            log_level: std::env::var("CLOTHESLINE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            device: "cpu".into(),
            ingress_host: "127.0.0.1".into(),
            ports: Ports::default(),
            topology: Topology::builtin(),
        }
    }
}

/// A kind of tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ingress,
    Preprocessor,
    Worker,
}

impl Kind {
    /// The name of its `i`th replica (its log file's name too).
    pub fn name(self, i: usize) -> String {
        match (self, i) {
            (Self::Ingress, 0) => "ingress".into(),
            (Self::Worker, 0) => "gpu-worker".into(),
            (Self::Ingress, i) => format!("ingress-{i}"),
            (Self::Worker, i) => format!("gpu-worker-{i}"),
            (Self::Preprocessor, i) => format!("preprocessor-{i}"),
        }
    }

    fn bin(self) -> &'static str {
        match self {
            Self::Ingress => "clothesline-ingress",
            Self::Preprocessor => "clothesline-preprocessor",
            Self::Worker => "clothesline-gpu-worker",
        }
    }

    /// The NATS user of `nats/auth.conf` it connects as.
    fn user(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Preprocessor => "preprocessor",
            Self::Worker => "gpu-worker",
        }
    }
}

/// Starts tiers with a stack's options against NATS at a given URL (one server, or a cluster's
/// list): every tier of [`Stack`] and [`Tiers`] is started here.
pub struct Launcher {
    pub opts: StackOptions,
    pub nats_url: String,
    pub http: reqwest::Client,
}

impl Launcher {
    /// `nats_url` is put after the options' extra URLs.
    pub fn new(opts: StackOptions, nats_url: &str) -> Self {
        let mut urls = opts.extra_nats_urls.clone();
        urls.push(nats_url.to_string());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Self {
            nats_url: urls.join(","),
            opts,
            http,
        }
    }

    /// Starts the `i`th replica of `kind`, and returns at once.
    pub fn spawn(&self, kind: Kind, i: usize) -> Tier {
        let o = &self.opts;
        let asked = match kind {
            Kind::Ingress => o.ports.ingress,
            Kind::Preprocessor => o.ports.preprocessor,
            Kind::Worker => o.ports.worker,
        };
        let port = asked.filter(|_| i == 0).unwrap_or_else(free_port);
        let host = match kind {
            Kind::Ingress => o.ingress_host.as_str(),
            _ => "127.0.0.1",
        };
        let mut args = vec!["--http-addr".into(), format!("{host}:{port}")];
        if kind != Kind::Ingress {
            args.extend(["--manifest".into(), o.manifest.display().to_string()]);
        }
        let extra = match kind {
            Kind::Ingress => &o.ingress_args,
            Kind::Preprocessor => &o.preprocessor_args,
            Kind::Worker => &o.worker_args,
        };
        match kind {
            Kind::Worker => args.extend(["--device".into(), o.device.clone()]),
            Kind::Preprocessor if o.allow_private => args.push("--allow-private-addresses".into()),
            _ => {}
        }
        args.extend(extra.iter().cloned());
        let mut env = if o.nats_auth {
            NatsServer::tier_env(kind.user())
        } else {
            vec![]
        };
        env.extend(o.env.iter().cloned());
        Launch {
            name: kind.name(i),
            bin: o.bin_dir.join(kind.bin()),
            port,
            nats_url: &self.nats_url,
            env,
            args,
            level: &o.log_level,
            log_dir: o.log_dir.as_deref(),
            cwd: &paths::repo_root(),
        }
        .spawn()
    }

    /// Starts the `i`th replica of `kind` and waits until it is ready.
    pub async fn start(&self, kind: Kind, i: usize) -> Tier {
        let mut tier = self.spawn(kind, i);
        wait_ready(&self.http, &mut tier).await;
        tier
    }
}

/// The three tiers as processes against NATS at a given URL (one server, or a cluster's list):
/// what [`Stack`] runs on its own server, and what cluster tests run on a
/// [`crate::cluster::NatsCluster`].
pub struct Tiers {
    pub ingress: Tier,
    pub preprocessors: Vec<Tier>,
    pub worker: Tier,
    pub http: reqwest::Client,
    pub launcher: Launcher,
}

impl Tiers {
    /// Starts the gpu-worker, the preprocessors and the ingress against `nats_url` (streams
    /// already provisioned) side by side, and waits until each is ready.
    pub async fn start(nats_url: &str, opts: &StackOptions) -> Self {
        let launcher = Launcher::new(opts.clone(), nats_url);
        let mut worker = launcher.spawn(Kind::Worker, 0);
        let mut preprocessors = (0..opts.preprocessors)
            .map(|i| launcher.spawn(Kind::Preprocessor, i))
            .collect::<Vec<_>>();
        let mut ingress = launcher.spawn(Kind::Ingress, 0);
        let http = launcher.http.clone();
        wait_ready(&http, &mut ingress).await;
        for p in &mut preprocessors {
            wait_ready(&http, p).await;
        }
        wait_ready(&http, &mut worker).await;
        Self {
            ingress,
            preprocessors,
            worker,
            http,
            launcher,
        }
    }
}

pub struct Stack {
    pub nats: NatsServer,
    pub ingress: Tier,
    pub preprocessors: Vec<Tier>,
    pub worker: Tier,
    pub http: reqwest::Client,
    pub launcher: Launcher,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Self {
        let mut config = if opts.nats_auth {
            ServerConfig::auth()
        } else {
            ServerConfig::default()
        };
        config.port = opts.ports.nats;
        config.monitor_port = opts.ports.nats_monitor;
        config.log = opts.log_dir.as_ref().map(|d| d.join("nats.log"));
        let nats = NatsServer::start_with(config).await;
        let js = async_nats::jetstream::new(nats.client().await);
        provision(&js, &opts.topology).await.unwrap();
        let Tiers {
            ingress,
            preprocessors,
            worker,
            http,
            launcher,
        } = Tiers::start(&nats.url(), &opts).await;
        Self {
            nats,
            ingress,
            preprocessors,
            worker,
            http,
            launcher,
        }
    }

    /// The server and the tiers, apart (to hold them with a cluster's the same way).
    pub fn into_parts(self) -> (NatsServer, Tiers) {
        let tiers = Tiers {
            ingress: self.ingress,
            preprocessors: self.preprocessors,
            worker: self.worker,
            http: self.http,
            launcher: self.launcher,
        };
        (self.nats, tiers)
    }

    /// Starts one more preprocessor, with the stack's options, and waits until it is ready.
    pub async fn add_preprocessor(&mut self) -> &Tier {
        let i = self.preprocessors.len();
        let tier = self.launcher.start(Kind::Preprocessor, i).await;
        self.preprocessors.push(tier);
        &self.preprocessors[i]
    }

    /// Starts another ingress (`i` names it), with the stack's options, and waits until it is
    /// ready; the caller holds it (SIGKILLed on drop).
    pub async fn add_ingress(&self, i: usize) -> Tier {
        self.launcher.start(Kind::Ingress, i).await
    }

    /// Starts another gpu-worker, with the stack's options, and waits until it is ready; the
    /// caller holds it (SIGKILLed on drop).
    pub async fn add_worker(&self, i: usize) -> Tier {
        self.launcher.start(Kind::Worker, i).await
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
