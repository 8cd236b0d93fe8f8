//! A running stack: one nats-server ([`Stack`]) or a 3-node cluster ([`NatsCluster`]), and the
//! tiers ([`Tiers`], plus the replicas beyond the first), held the same way whichever it is.

use std::time::Duration;

use async_nats::jetstream;
use clothesline_tests::cluster::NatsCluster;
use clothesline_tests::nats::NatsServer;
use clothesline_tests::stack::{Kind, Stack, StackOptions, Tier, Tiers};
use protocol::names::*;
use tierkit::provision::provision;

/// How long nats-server may take to exit after SIGTERM.
const NATS_GRACE: Duration = Duration::from_secs(15);

pub enum Nats {
    One(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// Every server's client URL, comma separated.
    pub fn url(&self) -> String {
        match self {
            Self::One(s) => s.url(),
            Self::Cluster(c) => c.urls(),
        }
    }

    /// The monitoring URL of the first server.
    pub fn monitor_url(&self) -> String {
        match self {
            Self::One(s) => format!("http://127.0.0.1:{}", s.monitor_port),
            Self::Cluster(c) => c.nodes[0].monitor_url(""),
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::One(s) => s.pid().into_iter().collect(),
            Self::Cluster(c) => c.nodes.iter().filter_map(|n| n.pid()).collect(),
        }
    }

    /// The store folder of each server.
    pub fn stores(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.store.path().display().to_string()],
            Self::Cluster(c) => c
                .nodes
                .iter()
                .map(|n| n.store_path().display().to_string())
                .collect(),
        }
    }

    /// A JetStream context on a client that may connect to any server.
    pub async fn js(&self) -> anyhow::Result<jetstream::Context> {
        let addrs = tierkit::runtime::parse_server_addrs(&self.url())?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await?;
        Ok(jetstream::new(client))
    }
}

pub struct Running {
    pub nats: Nats,
    pub tiers: Tiers,
    /// The ingresses and gpu-workers beyond the first.
    pub more_ingresses: Vec<Tier>,
    pub more_workers: Vec<Tier>,
}

/// How many of each, on which NATS.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub cluster: bool,
    pub ingresses: usize,
    pub workers: usize,
}

impl Running {
    /// Starts NATS, provisions, starts the tiers and waits until every one is ready.
    pub async fn start(opts: StackOptions, shape: Shape) -> anyhow::Result<Self> {
        let (nats, tiers) = if shape.cluster {
            let cluster = NatsCluster::start_logged(3, opts.log_dir.as_deref()).await;
            let js = jetstream::new(cluster.client().await);
            provision(&js, &opts.topology.clone().with_replicas(3)).await?;
            let tiers = Tiers::start(&cluster.urls(), &opts).await;
            (Nats::Cluster(cluster), tiers)
        } else {
            let (server, tiers) = Stack::start(opts).await.into_parts();
            (Nats::One(server), tiers)
        };
        let mut running = Self {
            nats,
            tiers,
            more_ingresses: vec![],
            more_workers: vec![],
        };
        for i in 1..shape.ingresses {
            let tier = running.tiers.launcher.start(Kind::Ingress, i).await;
            running.more_ingresses.push(tier);
        }
        for i in 1..shape.workers {
            let tier = running.tiers.launcher.start(Kind::Worker, i).await;
            running.more_workers.push(tier);
        }
        Ok(running)
    }

    /// The ingresses, the preprocessors and the gpu-workers, in that order.
    pub fn ingresses(&self) -> impl Iterator<Item = &Tier> {
        std::iter::once(&self.tiers.ingress).chain(&self.more_ingresses)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Tier> {
        std::iter::once(&self.tiers.worker).chain(&self.more_workers)
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Tier> {
        std::iter::once(&mut self.tiers.ingress)
            .chain(&mut self.more_ingresses)
            .chain(&mut self.tiers.preprocessors)
            .chain(std::iter::once(&mut self.tiers.worker))
            .chain(&mut self.more_workers)
    }

    /// The name of a tier that has exited, if one has.
    pub fn exited(&mut self) -> Option<String> {
        self.all_mut()
            .find_map(|t| t.has_exited().map(|s| format!("{} ({s})", t.name)))
    }

    /// SIGTERM to every tier at once, each waited for at most `grace` (SIGKILLed past it); then
    /// the same for NATS. As a deployment drains: a tier hands work back and flushes through
    /// NATS while it stops. Whether everything exited by itself.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        let mut clean = true;
        for tier in self.all_mut() {
            if tier.has_exited().is_none() {
                tier.sigterm();
            }
        }
        for tier in self.all_mut() {
            if !tier.stopped(grace).await {
                eprintln!(
                    "{} did not exit within {grace:?} of SIGTERM: killed",
                    tier.name
                );
                clean = false;
            }
        }
        let nats_clean = match &mut self.nats {
            Nats::One(s) => s.stop(NATS_GRACE).await,
            Nats::Cluster(c) => c.stop(NATS_GRACE).await,
        };
        if !nats_clean {
            eprintln!("nats-server did not exit within {NATS_GRACE:?} of SIGTERM: killed");
        }
        clean && nats_clean
    }
}

/// What the work queues hold: messages in both streams, and pending and unacknowledged
/// deliveries of both consumers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Queues {
    pub messages: u64,
    pub pending: u64,
    pub unacked: u64,
}

impl Queues {
    pub async fn read(js: &jetstream::Context) -> Option<Self> {
        let mut q = Self::default();
        for (stream, consumer) in [
            (REQUESTS_STREAM, PREPROCESSOR_CONSUMER),
            (TENSORS_STREAM, GPU_WORKER_CONSUMER),
        ] {
            let mut s = js.get_stream(stream).await.ok()?;
            q.messages += s.info().await.ok()?.state.messages;
            let mut c: jetstream::consumer::PullConsumer = s.get_consumer(consumer).await.ok()?;
            let info = c.info().await.ok()?;
            q.pending += info.num_pending;
            q.unacked += info.num_ack_pending as u64;
        }
        Some(q)
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.pending == 0 && self.unacked == 0
    }
}

/// Waits until both work queues are empty, at most `within`; what they held last.
pub async fn wait_drained(js: &jetstream::Context, within: Duration) -> Queues {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = Queues::default();
    loop {
        if let Some(q) = Queues::read(js).await {
            last = q;
            if q.is_empty() {
                return q;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the work queues of the stack at `nats_url` are drained; `None` past `within`.
pub async fn drained(nats_url: &str, within: Duration) -> anyhow::Result<Option<Queues>> {
    let addrs = tierkit::runtime::parse_server_addrs(nats_url)?;
    let js = jetstream::new(async_nats::connect(addrs).await?);
    let q = wait_drained(&js, within).await;
    Ok(q.is_empty().then_some(q))
}
