//! `bench ingress` (scripts/bench_ingress.sh): the ingress under its own scenarios:
//!
//! 1. capacity: what the stack serves, closed loop (the reference for "10x");
//! 2. added latency: `/predict` over HTTP against a request to the NATS service subject, open
//!    loop at a low rate, alternating rounds, so the two paths see the same machine;
//! 3. overload: ten times the capacity, open loop, each caller asking a deadline; the ingress's
//!    memory is sampled every 0.5 s, and short runs at a low rate right after show how soon
//!    latency is normal again; once with the default in-flight bound and once with one sized to
//!    the capacity (3 s of work, at least 8);
//! 4. cancellation: twice the capacity with callers that give up after 3 s, the workers
//!    honouring cancellations and ignoring them (`--honor-cancellations false`): the tiers' work
//!    counters and CPU seconds once drained (`cancel-true.txt`, `cancel-false.txt`).
//!
//! Then `clothesline-loadtest report ingress` and `section`.

use std::io::Write as _;
use std::time::Duration;

use clap::Args;

use super::context::{Bench, Out, num, strs};
use super::stack::{BenchStack, Spec};
use super::{Common, machine, procs};

#[derive(Debug, Args)]
pub struct IngressArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of each overload and cancellation run.
    #[arg(long, env = "BENCH_OVERLOAD_SECS", default_value_t = 30)]
    overload_secs: u64,
    /// Rounds of the added-latency runs (HTTP, then NATS, each round).
    #[arg(long, env = "BENCH_LATENCY_ROUNDS", default_value_t = 4)]
    latency_rounds: usize,
}

/// The in-flight bound sized to the capacity: 3 s of work, at least 8.
pub fn sized_inflight(capacity: f64) -> u64 {
    ((3.0 * capacity).round() as u64).max(8)
}

/// One load test against `stack`, its JSON in `NAME.json`, its output in `logs/NAME.txt` (its
/// last 6 lines on stderr).
async fn load(
    bench: &Bench,
    stack: &BenchStack,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    bench.log(format!("  {name}: {}", extra.join(" ")));
    let mut args = strs(&["run", "--ingress"]);
    args.extend([
        stack.ingress_url(),
        "--nats-url".into(),
        stack.nats_url.clone(),
    ]);
    args.extend(["--images".into(), bench.path(&bench.images)]);
    args.extend(strs(&["--no-progress", "--label", name, "--json"]));
    args.push(bench.path(&bench.file(&format!("{name}.json"))));
    args.extend(strs(extra));
    let log = bench.logs.join(format!("{name}.txt"));
    bench
        .loadtest(&args, Out::Stdout(log.clone()), false)
        .await?;
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(6)..] {
        eprintln!("{line}");
    }
    bench.report(name)
}

/// Until both work queues are empty (at most 3 minutes).
async fn drained(bench: &Bench, stack: &BenchStack) -> anyhow::Result<()> {
    let within = Duration::from_secs(180);
    if crate::running::drained(&stack.nats_url, within)
        .await?
        .is_none()
    {
        bench.log("the queues did not drain in 3 minutes");
    }
    Ok(())
}

/// The tiers' work counters and CPU seconds, as `KEY=VALUE` lines in `NAME.txt`.
async fn counters(bench: &Bench, stack: &BenchStack, name: &str) -> anyhow::Result<()> {
    let worker = stack.metrics(stack.worker_port).await?;
    let pre = stack.metrics(stack.preprocessor_port).await?;
    let outcome = |o: &str| {
        procs::sample(
            &pre,
            &format!("preprocessor_requests_total{{outcome=\"{o}\"}}"),
        )
    };
    let cpu = stack.cpu()?;
    let lines = [
        (
            "worker_items",
            procs::sample(&worker, "gpu_worker_items_total"),
        ),
        (
            "worker_cancelled",
            procs::sample(&worker, "gpu_worker_cancelled_total"),
        ),
        (
            "worker_expired",
            procs::sample(&worker, "gpu_worker_expired_total"),
        ),
        ("pre_ok", outcome("ok")),
        ("pre_cancelled", outcome("cancelled")),
        ("pre_error", outcome("error")),
        ("cpu_nats", cpu[0]),
        ("cpu_ingress", cpu[1]),
        ("cpu_pre", cpu[2]),
        ("cpu_worker", cpu[3]),
    ]
    .map(|(k, v)| (k, v.to_string()));
    machine::write(&bench.file(&format!("{name}.txt")), &lines, false)
}

/// Ten times the capacity for `secs`, then six recovery runs at 10/s; the ingress's resident
/// memory before, every 0.5 s during (`NAME-rss.txt`) and after, once drained.
async fn overload(
    bench: &Bench,
    stack: &BenchStack,
    name: &str,
    capacity: f64,
    secs: u64,
) -> anyhow::Result<()> {
    let pid = stack.ingress_pid();
    let rss = |suffix: &str| bench.file(&format!("{name}-rss{suffix}.txt"));
    std::fs::write(rss("-before"), format!("{}\n", procs::rss_kib(pid)?))?;
    let mut samples = std::fs::File::create(rss(""))?;
    let sampler = tokio::spawn(async move {
        while let Ok(kib) = procs::rss_kib(pid) {
            let _ = writeln!(samples, "{kib}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let rate = (10.0 * capacity).round().to_string();
    let secs = format!("{secs}s");
    let timeouts = ["--deadline", "5s", "--timeout", "15s"];
    let result = async {
        let over = ["--target", "predict", "--rate", &rate, "--duration", &secs];
        load(bench, stack, name, &[&over[..], &timeouts].concat()).await?;
        for i in 1..=6 {
            let recovery = ["--target", "predict", "--rate", "10", "--duration", "5s"];
            let name = format!("{name}-recovery-{i}");
            load(bench, stack, &name, &[&recovery[..], &timeouts].concat()).await?;
        }
        anyhow::Ok(())
    }
    .await;
    sampler.abort();
    result?;
    drained(bench, stack).await?;
    std::fs::write(rss("-after"), format!("{}\n", procs::rss_kib(pid)?))?;
    Ok(())
}

pub async fn run(args: IngressArgs) -> anyhow::Result<()> {
    let bench = Bench::init("bench-ingress", args.common.clone())?;
    let mut lines = machine::start_lines();
    lines.extend([
        ("loadavg_start", machine::loadavg(3)),
        ("commit", machine::commit()),
    ]);
    let machine_txt = bench.file("machine.txt");
    machine::write(&machine_txt, &lines, false)?;

    bench.log("1/4 capacity and 2/4 added latency (default stack)");
    let stack = bench.stack(&Spec::default()).await?;
    let closed = ["--target", "predict", "--concurrency", "16"];
    let capacity = load(
        &bench,
        &stack,
        "capacity",
        &[&closed[..], &["--duration", "15s", "--warmup", "3s"]].concat(),
    )
    .await?;
    let capacity = num(&capacity, "ok_throughput_rps");
    bench.log(format!("capacity: {capacity} answers/s"));
    for r in 1..=args.latency_rounds {
        for target in ["http", "nats"] {
            let t = if target == "http" { "predict" } else { "nats" };
            let low = [
                "--target",
                t,
                "--rate",
                "5",
                "--duration",
                "20s",
                "--warmup",
                "2s",
            ];
            load(&bench, &stack, &format!("latency-{target}-{r}"), &low).await?;
        }
    }
    bench.log("3/4 overload at ten times the capacity, default in-flight bound");
    overload(
        &bench,
        &stack,
        "overload-default",
        capacity,
        args.overload_secs,
    )
    .await?;
    stack.stop(&bench).await;

    bench.log("3/4 overload again, in-flight bound sized to the capacity (3 s of work)");
    let inflight = sized_inflight(capacity);
    std::fs::write(bench.file("inflight-sized.txt"), format!("{inflight}\n"))?;
    let spec = Spec {
        ingress_args: vec!["--max-inflight".into(), inflight.to_string()],
        ..Spec::default()
    };
    let stack = bench.stack(&spec).await?;
    overload(
        &bench,
        &stack,
        "overload-sized",
        capacity,
        args.overload_secs,
    )
    .await?;
    stack.stop(&bench).await;

    for honor in ["true", "false"] {
        bench.log(format!(
            "4/4 callers giving up after 3 s at twice the capacity, --honor-cancellations {honor}"
        ));
        let flag = strs(&["--honor-cancellations", honor]);
        let spec = Spec {
            worker_args: flag.clone(),
            preprocessor_args: flag,
            ..Spec::default()
        };
        let stack = bench.stack(&spec).await?;
        let rate = (2.0 * capacity).round().to_string();
        let secs = format!("{}s", args.overload_secs);
        let give_up = [
            "--target",
            "predict",
            "--rate",
            &rate,
            "--duration",
            &secs,
            "--timeout",
            "3s",
        ];
        let name = format!("cancel-{honor}");
        load(&bench, &stack, &name, &give_up).await?;
        drained(&bench, &stack).await?;
        counters(&bench, &stack, &name).await?;
        stack.stop(&bench).await;
    }

    let end = [
        ("loadavg_end", machine::loadavg(3)),
        ("duration_s", bench.secs().to_string()),
    ];
    machine::write(&machine_txt, &end, true)?;
    bench.log("writing the ingress section of BENCHMARKS.md");
    bench.section("ingress", &[]).await?;
    bench.log(format!(
        "done in {} s; raw results in {}",
        bench.secs(),
        bench.path(&bench.results)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sized_bound_is_three_seconds_of_work_and_at_least_eight() {
        assert_eq!(sized_inflight(43.0), 129);
        assert_eq!(sized_inflight(42.9), 129);
        assert_eq!(sized_inflight(1.5), 8);
        assert_eq!(sized_inflight(0.0), 8);
    }
}
