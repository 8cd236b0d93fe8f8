//! The worker bench's markdown report: the machine, the in-process table (all rounds together),
//! the worker's drain (all rounds together), the ratio to the best in-process batch size, and
//! each round on its own so the spread shows; and writing it into BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use clothesline_gpu_worker::Config;
use protocol::Manifest;

use crate::drain::Drain;
use crate::inprocess::{Plan, TABLE_HEADER, Throughput};
use crate::{Args, machine};

/// One round: the in-process sweep and the worker's drain, in the order they ran.
pub struct Round {
    pub worker_first: bool,
    pub inprocess: Vec<Throughput>,
    pub worker: Drain,
}

pub struct Report {
    cuda: bool,
    device: String,
    pub precision: &'static str,
    pub nats_version: String,
    engines: usize,
    threads: usize,
    max_batch: usize,
    max_delay: Duration,
    worker_args: Vec<String>,
    memory_storage: bool,
    model: String,
    shape: String,
    plan: Plan,
    planned_rounds: usize,
    images: usize,
    load_before: String,
    command: String,
    pub rounds: Vec<Round>,
}

impl Report {
    pub fn new(
        args: &Args,
        manifest: &Manifest,
        config: &Config,
        cuda: bool,
        plan: Plan,
        rounds: usize,
        images: usize,
    ) -> Self {
        let input = &manifest.input;
        Self {
            cuda,
            device: config.device.to_string(),
            precision: "fp32",
            nats_version: String::new(),
            engines: config.engines_for(cuda),
            threads: config.intra_op_threads_for(config.engines_for(cuda)),
            max_batch: config.max_batch_for(cuda),
            max_delay: config.max_batch_delay_for(cuda),
            worker_args: args.worker_args.clone(),
            memory_storage: args.memory_storage,
            model: format!("{} {}", manifest.name, manifest.version),
            shape: format!("[1, {}, {}, {}]", input.height, input.width, input.channels),
            plan,
            planned_rounds: rounds,
            images,
            load_before: machine::load_average(),
            command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            rounds: Vec::new(),
        }
    }

    /// The in-process runs of every round, by batch size.
    fn inprocess(&self) -> Vec<Throughput> {
        let mut all: Vec<Throughput> = Vec::new();
        for t in self.rounds.iter().flat_map(|r| &r.inprocess) {
            match all.iter_mut().find(|a| a.batch == t.batch) {
                Some(a) => a.merge(t),
                None => all.push(t.clone()),
            }
        }
        all
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.write(&mut md)
            .expect("writing to a String cannot fail");
        md
    }

    fn write(&self, w: &mut String) -> std::fmt::Result {
        let best_of = |ts: &[Throughput]| {
            ts.iter()
                .max_by(|a, b| a.images_per_s().total_cmp(&b.images_per_s()))
                .map(|t| (t.batch, t.images_per_s()))
                .unwrap_or((0, f64::NAN))
        };
        let inprocess = self.inprocess();
        let (best_batch, best) = best_of(&inprocess);
        let counted: usize = self.rounds.iter().map(|r| r.worker.counted).sum();
        let elapsed: Duration = self.rounds.iter().map(|r| r.worker.elapsed).sum();
        let worker = counted as f64 / elapsed.as_secs_f64();
        let mean_batch = self.rounds.iter().map(|r| r.worker.mean_batch).sum::<f64>()
            / self.rounds.len().max(1) as f64;
        let largest = self.rounds.iter().map(|r| r.worker.largest_batch).max();
        let to_first = self
            .rounds
            .iter()
            .map(|r| r.worker.to_first_reply)
            .sum::<Duration>()
            / self.rounds.len().max(1) as u32;
        let ratio = worker / best;
        let target = if self.cuda { 0.80 } else { 0.90 };
        let options = if self.worker_args.is_empty() {
            "its defaults".to_string()
        } else {
            format!("options `{}`", self.worker_args.join(" "))
        };

        writeln!(
            w,
            "### gpu-worker on {}, {}: in-process model vs the worker draining a stream\n",
            self.device, self.precision
        )?;
        writeln!(
            w,
            "- Date: {}; machine: {}",
            machine::date(),
            machine::describe(self.cuda)
        )?;
        writeln!(
            w,
            "- Load average (1/5/15 min) before: {}; after: {}",
            self.load_before,
            machine::load_average()
        )?;
        writeln!(
            w,
            "- Model: {}; {} engine(s) of {} intra-op thread(s) each, in-process and in the worker; {}",
            self.model, self.engines, self.threads, self.nats_version
        )?;
        writeln!(
            w,
            "- Command: `cargo run --release -p clothesline-gpu-worker --example worker_bench -- {}`",
            self.command
        )?;
        writeln!(
            w,
            "- {} rounds; each runs the model in-process at every batch size (`Model::run_batch` back to back, each replica on a thread of its own and all at once, like the worker's engines; at least {:?} and {} runs per size after {} warm-up runs) and the worker draining {} pre-filled tensors, in turn first; the figures add up over the rounds.\n",
            self.rounds.len(),
            self.plan.min_time,
            self.plan.min_runs,
            self.plan.warmup,
            self.images
        )?;

        writeln!(w, "In-process, all rounds:\n\n{TABLE_HEADER}")?;
        for t in &inprocess {
            writeln!(w, "{}", t.row())?;
        }
        writeln!(
            w,
            "\nThe worker (`clothesline_gpu_worker::run` in the bench's process: max batch {}, max batch delay {} ms, {options}) draining {} tensors per round from the tensors stream ({} storage; pseudo-random uint8 pixels of shape {}, reply subjects, no deadline), timed from its first reply to its last (images after the first batch / that time), all rounds:\n",
            self.max_batch,
            self.max_delay.as_millis(),
            self.images,
            if self.memory_storage {
                "memory"
            } else {
                "file"
            },
            self.shape
        )?;
        writeln!(
            w,
            "| images | mean start to first reply s | mean batch | largest batch | worker images/s | best in-process images/s (batch {best_batch}) | worker / best in-process |"
        )?;
        writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|")?;
        writeln!(
            w,
            "| {} | {:.2} | {mean_batch:.2} | {} | {worker:.1} | {best:.1} | **{:.0}%** |\n",
            self.images * self.rounds.len(),
            to_first.as_secs_f64(),
            largest.unwrap_or(0),
            ratio * 100.0
        )?;
        writeln!(
            w,
            "Target: at least {:.0}% of the best in-process figure: **{}**.\n",
            target * 100.0,
            if ratio >= target { "met" } else { "not met" }
        )?;

        writeln!(w, "Round by round:\n")?;
        writeln!(
            w,
            "| round | first | best in-process batch | its images/s | worker images/s | worker / best |"
        )?;
        writeln!(w, "|---:|---|---:|---:|---:|---:|")?;
        for (i, r) in self.rounds.iter().enumerate() {
            let (b, ips) = best_of(&r.inprocess);
            let wips = r.worker.images_per_s();
            writeln!(
                w,
                "| {} | {} | {b} | {ips:.1} | {wips:.1} | {:.0}% |",
                i + 1,
                if r.worker_first {
                    "worker"
                } else {
                    "in-process"
                },
                wips / ips * 100.0
            )?;
        }
        if self.rounds.len() < self.planned_rounds {
            writeln!(
                w,
                "\n(only {} of {} rounds ran)",
                self.rounds.len(),
                self.planned_rounds
            )?;
        }
        Ok(())
    }
}

/// `clothesline-loadtest section NAME -` (built by cargo if need be) with the report on stdin,
/// in the repository's root.
pub fn write_section(name: &str, md: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "run",
            "--release",
            "--locked",
            "-q",
            "-p",
            "clothesline-loadtest",
            "--",
        ])
        .args(["section", name, "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot run cargo run -p clothesline-loadtest -- section")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(md.as_bytes())?;
    ensure!(
        child.wait()?.success(),
        "clothesline-loadtest section {name} failed"
    );
    Ok(())
}
