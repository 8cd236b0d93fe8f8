//! `bench tracing` (scripts/bench_tracing.sh, issue #18): pipeline throughput with tracing off
//! (no `OTEL_EXPORTER_OTLP_ENDPOINT`) and on at 100% sampling (every span exported over
//! OTLP/HTTP to the load generator's noop server on 127.0.0.1, which answers every export),
//! alternating off/on `BENCH_ROUNDS` times on a fresh stack each, each a closed loop of
//! `/predict` with URLs. Per round `tracing-MODE-I.json` and `cpu-MODE-I.txt`: the CPU seconds
//! of nats-server, the ingress, the preprocessor, the gpu-worker and the sink, and the ingress's
//! answers so far, before and after the loop (warm-up included). Then prints the lines of
//! `clothesline-loadtest report tracing`.

use clap::Args;

use super::context::{Bench, Out, strs};
use super::stack::Spec;
use super::{Common, machine, procs};

#[derive(Debug, Args)]
pub struct TracingArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 2)]
    rounds: usize,
    #[arg(long, env = "BENCH_STEP_SECS", default_value_t = 30)]
    step_secs: u64,
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 5)]
    warmup_secs: u64,
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 16)]
    concurrency: usize,
}

/// The tiers' environment: the sink as the OTLP endpoint, every trace sampled; or no endpoint
/// (an empty one is none, whatever this process's environment holds).
pub fn tracing_env(on: bool, sink_port: u16) -> Vec<(String, String)> {
    let endpoint = if on {
        format!("http://127.0.0.1:{sink_port}")
    } else {
        String::new()
    };
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint)];
    if on {
        env.push(("OTEL_TRACES_SAMPLER".into(), "always_on".into()));
    } else {
        env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), String::new()));
    }
    env
}

pub async fn run(args: TracingArgs) -> anyhow::Result<()> {
    let bench = Bench::init("tracing", args.common.clone())?;
    let (mut sink, sink_port) = bench.noop_server("sink").await?;
    let sink_pid = sink
        .id()
        .ok_or_else(|| anyhow::anyhow!("the sink exited"))?;
    for i in 1..=args.rounds {
        for mode in ["off", "on"] {
            let spec = Spec {
                env: tracing_env(mode == "on", sink_port),
                ..Spec::default()
            };
            let stack = bench.stack(&spec).await?;
            let state = || async {
                let answers = procs::family_sum(
                    &stack.metrics(stack.ingress_port).await?,
                    "ingress_requests_total",
                );
                let mut v = stack.cpu()?.to_vec();
                v.extend([procs::cpu_seconds(sink_pid)?, answers]);
                anyhow::Ok(v)
            };
            let before = state().await?;
            let name = format!("tracing-{mode}-{i}");
            let mut a = strs(&["run", "--ingress"]);
            a.extend([
                stack.ingress_url(),
                "--images".into(),
                bench.path(&bench.images),
            ]);
            a.extend(strs(&["--target", "predict", "--concurrency"]));
            a.push(args.concurrency.to_string());
            a.extend(["--duration".into(), format!("{}s", args.step_secs)]);
            a.extend(["--warmup".into(), format!("{}s", args.warmup_secs)]);
            a.extend(strs(&[
                "--timeout",
                "35s",
                "--no-progress",
                "--label",
                &name,
                "--json",
            ]));
            a.push(bench.path(&bench.file(&format!("{name}.json"))));
            bench.loadtest(&a, Out::Inherit, false).await?;
            let after = state().await?;
            let line = format!("{} {}\n", procs::joined(&before), procs::joined(&after));
            std::fs::write(bench.file(&format!("cpu-{mode}-{i}.txt")), line)?;
            stack.stop(&bench).await;
        }
    }
    sink.kill().await?;
    let lines = [
        ("cpu", machine::cpu()),
        ("nproc", machine::nproc().to_string()),
        ("loadavg_end", machine::loadavg(1)),
    ];
    machine::write(&bench.file("machine.txt"), &lines, false)?;
    let report = [
        "report".into(),
        "tracing".into(),
        bench.path(&bench.results),
    ];
    bench.loadtest(&report, Out::Inherit, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_on_names_the_sink_and_off_clears_any_endpoint() {
        let on = tracing_env(true, 4318);
        assert!(on.contains(&(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://127.0.0.1:4318".into()
        )));
        assert!(on.contains(&("OTEL_TRACES_SAMPLER".into(), "always_on".into())));
        let off = tracing_env(false, 4318);
        assert!(off.iter().all(|(_, v)| v.is_empty()), "{off:?}");
    }
}
