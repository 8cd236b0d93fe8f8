//! `clothesline-stack chaos`: a steady open-loop load of `/predict` with URLs (the images served
//! on 127.0.0.1) while processes are SIGKILLed and started again; then what every caller got,
//! whether the work queues drained, and the Markdown section of RELIABILITY.md.
//!
//! One server: the preprocessor, the gpu-worker, then nats-server are SIGKILLed and started
//! again (nats-server on its port and store). `--cluster`: a 3-node cluster with both streams at
//! 3 replicas, every tier given the three URLs; the leaders of the requests stream, the tensors
//! stream and the gpu-worker's consumer are SIGKILLed in turn and started again, then every node
//! is restarted through lame-duck mode ([`leader_kills_and_rolling_restart`], as the cluster
//! test does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use clothesline_tests::cluster::leader_kills_and_rolling_restart;
use clothesline_tests::files::FileServer;
use clothesline_tests::load::{Body, Load, LoadSpec};
use clothesline_tests::origin::{metric, metrics_text};
use clothesline_tests::stack::Kind;

use crate::options::StackArgs;
use crate::report::{Events, Setup, Summary, machine_line, markdown};
use crate::running::{Nats, Running, Shape, wait_drained};

/// The deadline each request asks for, and how long its caller waits for an answer.
const DEADLINE: Duration = Duration::from_secs(30);
const CALLER_TIMEOUT: Duration = Duration::from_secs(45);
/// The consumers' ack wait unless `--ack-wait` says otherwise: what a killed tier held comes
/// back soon (30 s as shipped).
const ACK_WAIT_SECS: u64 = 5;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Folder of images (`<class>/<file>` or files at its top), served on 127.0.0.1.
    #[arg(long)]
    pub images: PathBuf,
    /// Requests per second.
    #[arg(long, default_value_t = 15.0)]
    pub rate: f64,
    /// One server: how long the load runs, in seconds (the faults are at 15-58 s).
    #[arg(long, default_value_t = 80)]
    pub duration: u64,
    /// Cluster: send at least this many requests (the load goes on after the faults until then).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Write the Markdown section here.
    #[arg(long)]
    pub section: Option<PathBuf>,
}

/// Every image under `dir` (sorted), as paths relative to it.
fn image_paths(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries =
            std::fs::read_dir(&folder).with_context(|| format!("read {}", folder.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
            {
                let rel = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                found.push(rel);
            }
        }
    }
    found.sort();
    anyhow::ensure!(!found.is_empty(), "no JPEG images in {}", dir.display());
    Ok(found)
}

pub async fn run(mut args: ChaosArgs) -> anyhow::Result<bool> {
    args.stack.allow_private_addresses = true;
    args.stack.ack_wait.get_or_insert(ACK_WAIT_SECS);
    let ack_wait = args.stack.ack_wait.unwrap_or(ACK_WAIT_SECS);
    let images = image_paths(&args.images)?;
    let files = FileServer::serve(&args.images).await;
    let urls = images.iter().map(|p| files.url(p)).collect();
    let shape = Shape {
        cluster: args.stack.cluster,
        ingresses: 1,
        workers: 1,
    };
    let mut stack = Running::start(args.stack.options()?, shape).await?;
    let js = stack.nats.js().await?;
    eprintln!("chaos: stack ready; load at {} requests/s", args.rate);
    let load = Load::start(LoadSpec {
        url: stack.tiers.ingress.url("/predict"),
        body: Body::Urls(urls),
        rate: args.rate,
        deadline: DEADLINE,
        timeout: CALLER_TIMEOUT,
    });
    let mut events = Events::default();
    let until = if args.stack.cluster {
        cluster_faults(&mut stack, &js, &load, &mut events).await;
        // At least the requests asked for, and a quiet tail after the last fault.
        let enough = Duration::from_secs_f64(args.requests as f64 / args.rate.max(0.01));
        enough.max(load.elapsed() + Duration::from_secs(15))
    } else {
        one_server_faults(&mut stack, &load, &mut events).await;
        Duration::from_secs(args.duration)
    };
    tokio::time::sleep_until(load.started + until).await;
    let outcomes = load.stop().await;
    eprintln!("chaos: load over; waiting for both work queues to drain");
    let queues = wait_drained(&js, Duration::from_secs(120)).await;
    let metrics = metrics_text(&stack.tiers.http, &stack.tiers.ingress.url("/metrics")).await;
    let duplicates = metric(&metrics, "ingress_unmatched_replies_total").unwrap_or(0.0);
    let summary = Summary::new(&outcomes, duplicates, queues.messages);
    stack.stop(Duration::from_secs(30)).await;

    let setup = setup(&args, ack_wait);
    let section = markdown(&setup, &events, &summary);
    eprintln!("{section}");
    if let Some(path) = &args.section {
        std::fs::write(path, &section)?;
    }
    Ok(summary.clean())
}

fn setup(args: &ChaosArgs, ack_wait: u64) -> Setup {
    let (title, stack) = if args.stack.cluster {
        (
            "Chaos run, 3-node NATS cluster (`scripts/chaos.sh --cluster`)",
            "a 3-node nats-server cluster on loopback (streams at 3 replicas, every tier given the three URLs)",
        )
    } else {
        ("Chaos run (`scripts/chaos.sh`)", "one nats-server")
    };
    Setup {
        title: title.into(),
        machine: machine_line(),
        what: format!(
            "all processes on this machine: {stack}, one process per tier; ack wait cut to \
             {ack_wait} s (30 s as shipped). Open loop at {} requests/s through `/predict` (URLs \
             of the validation images), each request with a {} s deadline, its caller waiting \
             up to {} s",
            args.rate,
            DEADLINE.as_secs(),
            CALLER_TIMEOUT.as_secs()
        ),
    }
}

/// The single-server faults, each at its time since the load started.
async fn one_server_faults(stack: &mut Running, load: &Load, events: &mut Events) {
    let at = |secs: u64| tokio::time::sleep_until(load.started + Duration::from_secs(secs));
    at(15).await;
    events.note(load.elapsed(), "SIGKILL preprocessor".into());
    stack.tiers.preprocessors[0].kill();
    at(18).await;
    events.note(load.elapsed(), "start preprocessor".into());
    stack.tiers.preprocessors[0] = stack.tiers.launcher.start(Kind::Preprocessor, 0).await;
    at(35).await;
    events.note(load.elapsed(), "SIGKILL gpu-worker".into());
    stack.tiers.worker.kill();
    at(38).await;
    events.note(load.elapsed(), "start gpu-worker".into());
    stack.tiers.worker = stack.tiers.launcher.start(Kind::Worker, 0).await;
    let Nats::One(nats) = &mut stack.nats else {
        return;
    };
    at(55).await;
    events.note(load.elapsed(), "SIGKILL nats-server".into());
    nats.kill();
    at(58).await;
    events.note(
        load.elapsed(),
        "start nats-server (same store and port)".into(),
    );
    nats.start_again().await;
}

/// The cluster's faults, after 10 s of load, as they come.
async fn cluster_faults(
    stack: &mut Running,
    js: &async_nats::jetstream::Context,
    load: &Load,
    events: &mut Events,
) {
    let Nats::Cluster(cluster) = &mut stack.nats else {
        return;
    };
    tokio::time::sleep_until(load.started + Duration::from_secs(10)).await;
    let started = load.started;
    leader_kills_and_rolling_restart(cluster, js, &mut |e| events.note(started.elapsed(), e)).await;
}
