//! `bench pipeline` (scripts/bench.sh): the pipeline's figures, side by side, in one run:
//!
//! 1. the in-process model ceiling (gpu-worker's example `model_bench`, images/s at batch sizes
//!    1-8), before and after the pipeline runs (the report's ratio uses their mean);
//! 2. the preprocessing ceiling per core (preprocessor's example `preprocess_bench`);
//! 3. the load generator's own CPU at 1000 req/s against its noop server (a 5 ms tick, then one
//!    wake-up per request);
//! 4. the pipeline end to end: `/predict` with URLs, open loop at increasing rates until two
//!    steps in a row are saturated ([`saturated`]), then closed loop (with the tiers' CPU
//!    seconds around it, `tier_cpu.txt`); `/v1/classify` with uploads, closed loop; the same
//!    over NATS when the ingress answers on its service subject.
//!
//! Then `clothesline-loadtest report pipeline` (and `benchmarks/pipeline.svg`) and `section`.

use std::path::PathBuf;

use clap::Args;

use super::context::{Bench, Out, num, strs};
use super::stack::Spec;
use super::{Common, examples, machine, procs};

#[derive(Debug, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    common: Common,
    /// The open loop's rates (requests/s), space separated.
    #[arg(long, env = "BENCH_RATES", default_value = "10 20 30 40 50 60 80")]
    rates: String,
    /// Seconds of each step (after its warm-up).
    #[arg(long, env = "BENCH_STEP_SECS", default_value_t = 12)]
    step_secs: u64,
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 3)]
    warmup_secs: u64,
    /// The closed loops' requests in flight.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 16)]
    concurrency: usize,
    /// 1: measure over NATS too; 0: skip it.
    #[arg(long, env = "BENCH_NATS", default_value = "1")]
    nats: String,
    /// The latency chart.
    #[arg(long, default_value = "benchmarks/pipeline.svg")]
    chart: PathBuf,
}

/// An open-loop step is saturated when fewer successful answers per second came than 90% of the
/// offered rate, or over 1% of the answers were errors.
pub fn saturated(report: &serde_json::Value) -> bool {
    let errors = num(report, "errors");
    num(report, "ok_throughput_rps") < 0.9 * num(report, "rate")
        || errors > 0.01 * num(report, "completed").max(1.0)
}

/// Whether a sweep stops after these steps: the last two were saturated.
pub fn sweep_done(steps: &[bool]) -> bool {
    steps.len() >= 2 && steps[steps.len() - 2..].iter().all(|s| *s)
}

/// The load generator's CPU at 1000 req/s against its noop server: the default tick (5 ms at
/// this rate), then a wake-up for each request (`--tick 1ms`).
async fn noop_runs(bench: &Bench) -> anyhow::Result<()> {
    let (mut server, port) = bench.noop_server("noop").await?;
    for tick in ["default", "1ms"] {
        let mut args = strs(&["run", "--target", "predict", "--ingress"]);
        args.push(format!("http://127.0.0.1:{port}"));
        args.extend(["--images".into(), bench.path(&bench.images)]);
        args.extend(strs(&[
            "--rate",
            "1000",
            "--duration",
            "10s",
            "--warmup",
            "1s",
        ]));
        if tick != "default" {
            args.extend(["--tick".into(), tick.into()]);
        }
        args.extend(["--no-progress".into(), "--label".into()]);
        args.push(format!("noop-1000-tick-{tick}"));
        args.push("--json".into());
        args.push(bench.path(&bench.file(&format!("noop-tick-{tick}.json"))));
        bench.loadtest(&args, Out::Inherit, false).await?;
    }
    server.kill().await?;
    Ok(())
}

pub async fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let rates: Vec<String> = args.rates.split_whitespace().map(String::from).collect();
    for rate in &rates {
        anyhow::ensure!(
            rate.parse::<f64>().is_ok(),
            "BENCH_RATES: {rate} is not a number"
        );
    }
    let device = args.common.device.clone();
    let bench = Bench::init("bench", args.common.clone())?;
    let mut lines = machine::start_lines();
    lines.extend([
        ("mem", machine::mem()),
        ("loadavg_start", machine::loadavg(3)),
        ("commit", machine::commit()),
        ("device", device.clone()),
    ]);
    let machine_txt = bench.file("machine.txt");
    machine::write(&machine_txt, &lines, false)?;

    bench.log(
        "1/4 in-process model ceiling (gpu-worker model_bench; again after the pipeline runs)",
    );
    examples::model_bench(&bench, "model_bench.txt", &device).await?;
    bench.log("2/4 preprocessing ceiling (preprocessor preprocess_bench)");
    examples::preprocess_bench(&bench).await?;
    bench.log("3/4 load generator CPU at 1000 req/s against its noop server");
    noop_runs(&bench).await?;

    bench.log("4/4 the pipeline end to end: starting the stack on its own ports");
    let stack = bench.stack(&Spec::default()).await?;
    let runner = Runner {
        bench: &bench,
        args: &args,
        base: vec![
            "run".into(),
            "--ingress".into(),
            stack.ingress_url(),
            "--nats-url".into(),
            stack.nats_url.clone(),
        ],
    };
    let closed = |target: &str| {
        let mut a = strs(&["--target", target, "--concurrency"]);
        a.extend([args.concurrency.to_string(), "--duration".into()]);
        a.push(format!("{}s", args.step_secs));
        a
    };
    bench.log("HTTP /predict (URLs), open loop");
    runner
        .sweep("http-predict", &rates, &strs(&["--target", "predict"]))
        .await?;
    bench.log("HTTP /predict (URLs), closed loop");
    let before = stack.cpu()?;
    runner
        .run("http-predict-closed", &closed("predict"))
        .await?;
    let after = stack.cpu()?;
    let tier_cpu = format!(
        "nats ingress preprocessor gpu-worker\n{} \n{} \n",
        procs::joined(&before),
        procs::joined(&after)
    );
    std::fs::write(bench.file("tier_cpu.txt"), tier_cpu)?;
    bench.log("HTTP /v1/classify (uploads), closed loop");
    let mut upload = closed("classify");
    upload.push("--upload".into());
    runner.run("http-classify-upload-closed", &upload).await?;

    if args.nats == "1" {
        bench.log("NATS service subject: probing");
        if runner.nats_answers(&stack.nats_url).await {
            bench.log("NATS (URLs), open loop");
            runner
                .sweep("nats", &rates, &strs(&["--target", "nats"]))
                .await?;
            bench.log("NATS (URLs), closed loop");
            runner.run("nats-closed", &closed("nats")).await?;
        } else {
            bench.log("the ingress does not answer on the NATS service subject; skipping NATS");
        }
    }
    stack.stop(&bench).await;

    bench.log("in-process model ceiling again, to bracket the pipeline runs");
    examples::model_bench(&bench, "model_bench_after.txt", &device).await?;
    let end = [
        ("loadavg_end", machine::loadavg(3)),
        ("duration_s", bench.secs().to_string()),
    ];
    machine::write(&machine_txt, &end, true)?;
    bench.log("writing benchmarks/pipeline.svg and the pipeline section of BENCHMARKS.md");
    let chart = ["--chart".into(), bench.path(&args.chart)];
    bench.section("pipeline", &chart).await?;
    bench.log(format!(
        "done in {} s; raw results in {}",
        bench.secs(),
        bench.path(&bench.results)
    ));
    Ok(())
}

/// Load tests against one stack.
struct Runner<'a> {
    bench: &'a Bench,
    args: &'a PipelineArgs,
    /// `run --ingress URL --nats-url URL`.
    base: Vec<String>,
}

impl Runner<'_> {
    /// One load test, its JSON in `NAME.json`.
    async fn run(&self, name: &str, extra: &[String]) -> anyhow::Result<serde_json::Value> {
        let b = self.bench;
        b.log(format!("  {name}: {}", extra.join(" ")));
        let mut args = self.base.clone();
        args.extend(["--images".into(), b.path(&b.images), "--warmup".into()]);
        args.push(format!("{}s", self.args.warmup_secs));
        args.extend(strs(&["--timeout", "35s", "--label", name, "--json"]));
        args.push(b.path(&b.file(&format!("{name}.json"))));
        args.extend(extra.iter().cloned());
        b.loadtest(&args, Out::Inherit, false).await?;
        b.report(name)
    }

    /// Open loop at each rate until two steps in a row are saturated.
    async fn sweep(&self, prefix: &str, rates: &[String], extra: &[String]) -> anyhow::Result<()> {
        let mut steps = Vec::new();
        for rate in rates {
            let mut a = extra.to_vec();
            a.extend(["--rate".into(), rate.clone(), "--duration".into()]);
            a.push(format!("{}s", self.args.step_secs));
            let report = self.run(&format!("{prefix}-open-{rate}"), &a).await?;
            steps.push(saturated(&report));
            if sweep_done(&steps) {
                break;
            }
        }
        Ok(())
    }

    /// Whether one request on the ingress's NATS service subject is answered (`nats-probe.json`).
    async fn nats_answers(&self, nats_url: &str) -> bool {
        let b = self.bench;
        let probe = b.file("nats-probe.json");
        let mut args = strs(&[
            "run",
            "--target",
            "nats",
            "--nats-url",
            nats_url,
            "--images",
        ]);
        args.push(b.path(&b.images));
        args.extend(strs(&[
            "--requests",
            "1",
            "--timeout",
            "10s",
            "--no-progress",
            "--json",
        ]));
        args.push(b.path(&probe));
        let _ = b.loadtest(&args, Out::Null, false).await;
        b.report("nats-probe").is_ok_and(|r| num(&r, "ok") == 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_step_is_saturated_below_90_percent_or_over_1_percent_errors() {
        let step = |ok: f64, errors: u64, completed: u64| json!({"rate": 20.0, "ok_throughput_rps": ok, "errors": errors, "completed": completed});
        assert!(!saturated(&step(19.0, 0, 240)));
        assert!(saturated(&step(17.9, 0, 240)));
        assert!(!saturated(&step(20.0, 2, 240)));
        assert!(saturated(&step(20.0, 3, 240)));
        // No answers at all: one error is too many.
        assert!(saturated(&step(0.0, 1, 0)));
    }

    #[test]
    fn a_sweep_stops_after_two_saturated_steps_in_a_row() {
        assert!(!sweep_done(&[true]));
        assert!(!sweep_done(&[true, false]));
        assert!(!sweep_done(&[false, true, false, true]));
        assert!(sweep_done(&[false, true, true]));
    }
}
