//! `bench plumbing` (scripts/bench_plumbing.sh, issue #15): the pipeline's own cost with the
//! model taken out, and the pipeline against a one-process Flask monolith:
//!
//! 1. the null model (scripts/null_model.py, run with the torch venv's Python: the shipped
//!    model's contract, almost no compute) on a fresh stack; closed loops of `/predict` with
//!    URLs and of `/v1/classify` with uploads; `NAME.cpu`: each process's CPU seconds before
//!    and after, and the preprocessor's decode and resize histograms' sums and counts;
//!    with `BENCH_BIN_BEFORE`, older binaries too, alternating (`null-before1-url`, ...);
//! 2. perf's top frames of the preprocessor and nats-server under that load ([`super::perf`]);
//! 3. where the time of one request goes at concurrency 1 (`run --timings`, `hops-null.json`);
//! 4. unless `BENCH_SKIP_MODEL=1`, the shipped model: the pipeline, the pipeline with
//!    `--dispatch-when-idle false`, and the monolith ([`super::monolith`]), `/predict` with URLs
//!    at concurrency 1 and 16.
//!
//! Every measured process (the tiers, the load generator, the monolith) runs at nice -10 when
//! this runs as root. Then `clothesline-loadtest report plumbing` (printed) and `section`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use clap::Args;

use super::context::{Bench, Out, num, strs};
use super::monolith::Monolith;
use super::stack::{BenchStack, Spec};
use super::{Common, machine, perf, procs};

#[derive(Debug, Args)]
pub struct PlumbingArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, env = "BENCH_STEP_SECS", default_value_t = 20)]
    step_secs: u64,
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 3)]
    warmup_secs: u64,
    /// The null-model loops' requests in flight.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// Requests of the hops runs.
    #[arg(long, env = "BENCH_HOPS", default_value_t = 200)]
    hops: usize,
    /// A folder of older release binaries: step 1 runs them too, alternating.
    #[arg(long, env = "BENCH_BIN_BEFORE")]
    bin_before: Option<PathBuf>,
    /// 1: skip step 4 (the shipped model and the monolith).
    #[arg(long, env = "BENCH_SKIP_MODEL", default_value = "0")]
    skip_model: String,
}

/// What a load runs against: a stack, or the monolith.
enum Target<'a> {
    Stack(&'a BenchStack),
    Monolith(&'a Monolith),
}

impl Target<'_> {
    fn url(&self) -> String {
        match self {
            Self::Stack(s) => s.ingress_url(),
            Self::Monolith(m) => format!("http://127.0.0.1:{}", m.port),
        }
    }

    /// `WHEN cpu...` (the stack's four processes, or the monolith's together), and for a stack
    /// the preprocessor's `decode_WHEN sum count` and `resize_WHEN sum count`.
    async fn cpu_state(&self, when: &str) -> anyhow::Result<String> {
        let stack = match self {
            Self::Monolith(m) => return Ok(format!("{when} {}\n", m.cpu()?)),
            Self::Stack(s) => s,
        };
        let mut out = format!("{when} {}\n", procs::joined(&stack.cpu()?));
        let text = stack.metrics(stack.preprocessor_port).await?;
        for step in ["decode", "resize"] {
            let h = format!("preprocessor_{step}_seconds");
            let sum = procs::sample(&text, &format!("{h}_sum"));
            let count = procs::sample(&text, &format!("{h}_count"));
            out.push_str(&format!("{step}_{when} {sum} {count}\n"));
        }
        Ok(out)
    }
}

struct Plumbing {
    bench: Bench,
    args: PlumbingArgs,
}

impl Plumbing {
    /// `run --ingress URL --images DIR` and `extra`, nice -10 when root.
    fn load_args(&self, target: &Target<'_>, extra: &[String]) -> Vec<String> {
        let b = &self.bench;
        let mut a = strs(&["run", "--ingress"]);
        a.extend([target.url(), "--images".into(), b.path(&b.images)]);
        a.extend(extra.iter().cloned());
        a
    }

    /// One load test of `step_secs`; the CPU state before and after it in `NAME.cpu`.
    async fn cpu_run(&self, target: &Target<'_>, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let b = &self.bench;
        let cpu_file = b.file(&format!("{name}.cpu"));
        let mut state = target.cpu_state("before").await?;
        let mut a = strs(&["--warmup", "0s", "--duration"]);
        a.push(format!("{}s", self.args.step_secs));
        a.extend(strs(&["--no-progress", "--label", name, "--json"]));
        a.push(b.path(&b.file(&format!("{name}.json"))));
        a.extend(strs(extra));
        let log = b.logs.join(format!("{name}.txt"));
        b.loadtest(&self.load_args(target, &a), Out::Both(log), true)
            .await?;
        state.push_str(&target.cpu_state("after").await?);
        std::fs::write(cpu_file, state)?;
        let r = b.report(name)?;
        let p50 = r.pointer("/latency_ms/p50").cloned().unwrap_or_default();
        b.log(format!(
            "{name}: {} ok/s, p50 {p50} ms, errors {}",
            (num(&r, "ok_throughput_rps") * 10.0).round() / 10.0,
            num(&r, "errors")
        ));
        Ok(())
    }

    /// Where the time of one request goes: `POST /v1/classify` with URLs at concurrency 1,
    /// the answers' `timings` (`hops-TAG.json`).
    async fn hops(&self, target: &Target<'_>, tag: &str) -> anyhow::Result<()> {
        let b = &self.bench;
        let name = format!("hops-{tag}");
        let mut a = strs(&["--target", "classify", "--concurrency", "1", "--requests"]);
        a.push(self.args.hops.to_string());
        a.extend(strs(&[
            "--timings",
            "--no-progress",
            "--label",
            &name,
            "--json",
        ]));
        a.push(b.path(&b.file(&format!("{name}.json"))));
        let log = b.logs.join(format!("{name}.txt"));
        b.loadtest(&self.load_args(target, &a), Out::Both(log), true)
            .await
    }

    /// A fresh stack serving `manifest` from `bin`'s binaries, its processes boosted.
    async fn stack(
        &self,
        manifest: PathBuf,
        bin: &Path,
        worker_args: &[&str],
    ) -> anyhow::Result<BenchStack> {
        let spec = Spec {
            manifest: Some(manifest),
            bin_dir: Some(bin.to_path_buf()),
            worker_args: strs(worker_args),
            ..Spec::default()
        };
        let stack = self.bench.stack(&spec).await?;
        stack.boost();
        Ok(stack)
    }

    /// Steps 1 (and 2, 3 for this tree's binaries, `tag` "after") on a fresh stack.
    async fn null_round(&self, tag: &str, bin: &Path) -> anyhow::Result<()> {
        let b = &self.bench;
        let manifest = b.results.join("null-model/manifest.json");
        let stack = self.stack(manifest, bin, &[]).await?;
        let target = Target::Stack(&stack);
        let c = self.args.concurrency.to_string();
        let mut warm = strs(&["--concurrency", &c, "--duration"]);
        warm.extend([
            format!("{}s", self.args.warmup_secs),
            "--no-progress".into(),
        ]);
        b.loadtest(&self.load_args(&target, &warm), Out::Null, true)
            .await?;
        let url = ["--target", "predict", "--concurrency", &c];
        self.cpu_run(&target, &format!("null-{tag}-url"), &url)
            .await?;
        let upload = ["--target", "classify", "--upload", "--concurrency", &c];
        self.cpu_run(&target, &format!("null-{tag}-upload"), &upload)
            .await?;
        if tag == "after" {
            perf::profile(b, &stack, self.args.concurrency, self.args.step_secs).await?;
            self.hops(&target, "null").await?;
        }
        stack.stop(b).await;
        Ok(())
    }

    /// `/predict` with URLs at concurrency 1, then 16.
    async fn latency_runs(&self, target: &Target<'_>, tag: &str) -> anyhow::Result<()> {
        let c1 = ["--target", "predict", "--concurrency", "1"];
        self.cpu_run(target, &format!("model-{tag}-c1"), &c1)
            .await?;
        let c16 = ["--target", "predict", "--concurrency", "16"];
        self.cpu_run(target, &format!("model-{tag}-c16"), &c16)
            .await
    }

    /// Step 4: the shipped model, the pipeline (twice) against the monolith.
    async fn shipped_model(&self) -> anyhow::Result<()> {
        let (b, bin) = (&self.bench, &self.bench.bin);
        let manifest = std::path::absolute("model/manifest.json")?;
        b.log("shipped model: the pipeline");
        let stack = self.stack(manifest.clone(), bin, &[]).await?;
        self.latency_runs(&Target::Stack(&stack), "pipeline")
            .await?;
        self.hops(&Target::Stack(&stack), "model").await?;
        stack.stop(b).await;
        b.log("shipped model: the pipeline, batcher always waiting (--dispatch-when-idle false)");
        let stack = self
            .stack(manifest.clone(), bin, &["--dispatch-when-idle", "false"])
            .await?;
        let c1 = ["--target", "predict", "--concurrency", "1"];
        self.cpu_run(&Target::Stack(&stack), "model-waiting-c1", &c1)
            .await?;
        stack.stop(b).await;
        b.log("shipped model: the Flask monolith");
        let monolith = Monolith::start(b, &manifest).await?;
        let result = self
            .latency_runs(&Target::Monolith(&monolith), "monolith")
            .await;
        monolith.stop().await;
        result
    }
}

pub async fn run(args: PlumbingArgs) -> anyhow::Result<()> {
    let bench = Bench::init("plumbing", args.common.clone())?;
    let nats = std::process::Command::new(clothesline_tests::paths::nats_server())
        .arg("--version")
        .output()?;
    let mut lines = machine::start_lines();
    lines.extend([
        ("loadavg_start", machine::loadavg(3)),
        ("commit", machine::commit()),
        (
            "nats",
            String::from_utf8_lossy(&nats.stdout).trim().to_string(),
        ),
        (
            "before_bin",
            args.bin_before
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    ]);
    let machine_txt = bench.file("machine.txt");
    machine::write(&machine_txt, &lines, false)?;

    bench.log("null model");
    let status = tokio::process::Command::new(clothesline_tests::paths::python())
        .arg("scripts/null_model.py")
        .arg(bench.results.join("null-model"))
        .stdout(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "scripts/null_model.py: {status}");

    let p = Plumbing { bench, args };
    let after = p.bench.bin.clone();
    if let Some(before) = p.args.bin_before.clone() {
        let before = std::path::absolute(before)?;
        for round in 1..=2 {
            p.bench.log(format!(
                "null model, round {round}: before ({}), then after",
                before.display()
            ));
            p.null_round(&format!("before{round}"), &before).await?;
            let tag = if round == 2 {
                "after".into()
            } else {
                format!("after{round}")
            };
            p.null_round(&tag, &after).await?;
        }
    } else {
        p.bench.log("null model");
        p.null_round("after", &after).await?;
    }
    if p.args.skip_model != "1" {
        p.shipped_model().await?;
    }

    let end = [
        ("loadavg_end", machine::loadavg(3)),
        ("secs", p.bench.secs().to_string()),
    ];
    machine::write(&machine_txt, &end, true)?;
    p.bench.section("plumbing", &[]).await?;
    print!("{}", std::fs::read_to_string(p.bench.file("section.md"))?);
    p.bench.log(format!(
        "done in {}s; raw results in {}",
        p.bench.secs(),
        p.bench.path(&p.bench.results)
    ));
    Ok(())
}
