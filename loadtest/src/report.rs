//! The final report: the same fields as text (stdout) and as JSON (`--json`); below it, the
//! markdown sections of the benchmark scripts made from such reports (`report`, `section`).

pub mod chart;
pub mod command;
pub mod ingress;
pub mod md;
pub mod pipeline;
pub mod pipeline_runs;
pub mod plumbing;
pub mod results;
pub mod section;
pub mod tracing;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;
use crate::cpu::Usage;
use crate::images::ImageSet;
use crate::run::Window;
use crate::schedule::{Mode, Plan, per_second};
use crate::stats::{LatencySummary, Recorder};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub label: Option<String>,
    /// `predict`, `classify` or `nats`.
    pub target: String,
    pub endpoint: String,
    /// `url` (downloaded from the built-in image server) or `upload` (bytes in the request).
    pub source: String,
    /// `open` (fixed rate) or `closed` (fixed concurrency).
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub warmup_s: f64,
    /// Open loop: the scheduler's tick (requests due within one are sent together).
    #[serde(default)]
    pub tick_ms: f64,
    /// From the first counted request's (intended) send time to the last counted answer.
    pub window_s: f64,
    /// Counted answers, successful ones, the rest.
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    /// Answers of the whole run, the warm-up's included (to relate a server's CPU time to).
    #[serde(default)]
    pub answered_all: u64,
    /// Counted answers per second over the window, and successful ones.
    pub throughput_rps: f64,
    pub ok_throughput_rps: f64,
    /// By HTTP status (`200`, `429`, ...), NATS outcome (`nats_ok`, `nats_error`) or failure
    /// (`timeout`, `connect_error`, `no_responders`, `transport_error`).
    pub statuses: BTreeMap<String, u64>,
    /// By the stable error code of error answers.
    pub error_codes: BTreeMap<String, u64>,
    /// Latency in ms (open loop: from each request's intended send time).
    pub latency_ms: LatencySummary,
    pub accuracy: Option<Accuracy>,
    /// The load generator's own CPU use over the whole run, warm-up included.
    pub loadgen_cpu: Option<Usage>,
    /// With `--timings`: the medians (ms) of the successful answers' `timings`, of the client's
    /// time (`client_ms`) and of what the tiers' figures leave of it (`unaccounted_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings_p50_ms: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Successful answers for images in a class folder whose label could be read.
    pub scored: u64,
    pub correct: u64,
    pub accuracy: f64,
    /// Successful answers whose label could not be read.
    pub unreadable: u64,
    /// Per class: [scored, correct].
    pub by_class: BTreeMap<String, [u64; 2]>,
}

impl Report {
    pub fn new(
        args: &RunArgs,
        plan: &Plan,
        set: &ImageSet,
        r: &Recorder,
        window: Window,
        cpu: Option<Usage>,
    ) -> Self {
        let length = window.length();
        let (scored, correct) = r.accuracy_counts();
        let accuracy = (!set.classes.is_empty()).then(|| Accuracy {
            scored,
            correct,
            accuracy: if scored > 0 {
                correct as f64 / scored as f64
            } else {
                0.0
            },
            unreadable: r.unreadable,
            by_class: set
                .classes
                .iter()
                .cloned()
                .zip(r.by_class.iter().map(|&(s, c)| [s, c]))
                .collect(),
        });
        let (mode, rate, concurrency) = match plan.mode {
            Mode::Open { rate } => ("open", Some(rate), None),
            Mode::Closed { concurrency } => ("closed", None, Some(concurrency)),
        };
        Self {
            label: args.label.clone(),
            target: args.target.name().into(),
            endpoint: args.endpoint(),
            source: if args.upload { "upload" } else { "url" }.into(),
            mode: mode.into(),
            rate,
            concurrency,
            warmup_s: plan.warmup.as_secs_f64(),
            tick_ms: plan.tick.as_secs_f64() * 1e3,
            window_s: length.as_secs_f64(),
            completed: r.completed,
            ok: r.ok,
            errors: r.completed - r.ok,
            answered_all: r.completed,
            throughput_rps: per_second(r.completed, length),
            ok_throughput_rps: per_second(r.ok, length),
            statuses: r.statuses.iter().map(|(s, n)| (s.key(), *n)).collect(),
            error_codes: r.error_codes.clone(),
            latency_ms: r.latency(),
            accuracy,
            loadgen_cpu: cpu,
            timings_p50_ms: r.timings_p50(),
        }
    }

    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let pace = match (self.rate, self.concurrency) {
            (Some(rate), _) if self.tick_ms > 0.0 => {
                format!("open loop at {rate} req/s (tick {} ms)", self.tick_ms)
            }
            (Some(rate), _) => format!("open loop at {rate} req/s"),
            (_, Some(c)) => format!("closed loop, {c} in flight"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{} ({}, {}) {pace}, warm-up {:.1} s, counted over {:.2} s",
            self.endpoint, self.target, self.source, self.warmup_s, self.window_s
        );
        let _ = writeln!(
            s,
            "answers     {} ({} ok, {} errors)\nthroughput  {:.2} req/s ({:.2} ok/s)",
            self.completed, self.ok, self.errors, self.throughput_rps, self.ok_throughput_rps
        );
        let _ = writeln!(s, "statuses    {}", join_counts(&self.statuses, ": ", ", "));
        if !self.error_codes.is_empty() {
            let codes = join_counts(&self.error_codes, ": ", ", ");
            let _ = writeln!(s, "error codes {codes}");
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency ms  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, min {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.min
        );
        if let Some(a) = &self.accuracy {
            let unreadable = match a.unreadable {
                0 => String::new(),
                n => format!(", {n} answers without a readable label"),
            };
            let _ = if a.scored > 0 {
                writeln!(
                    s,
                    "accuracy    {:.1}% ({}/{}){unreadable}",
                    a.accuracy * 100.0,
                    a.correct,
                    a.scored,
                )
            } else {
                writeln!(s, "accuracy    -{unreadable}")
            };
        }
        if let Some(c) = &self.loadgen_cpu {
            let _ = writeln!(
                s,
                "loadgen cpu {:.1}% of one core ({:.2} s user + {:.2} s system over {:.1} s)",
                c.percent_of_one_core, c.user_s, c.system_s, c.wall_s
            );
        }
        s
    }
}

/// `200: 4, 503: 1` (with `between` `: ` and `sep` `, `).
pub fn join_counts(counts: &BTreeMap<String, u64>, between: &str, sep: &str) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k}{between}{n}"))
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;
