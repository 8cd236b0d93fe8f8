//! What a chaos run shows: every request's outcome summed up, the faults in time, the machine;
//! as text and as the Markdown section of RELIABILITY.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use clothesline_tests::load::Outcome;

/// The faults, each at its time since the load started.
#[derive(Debug, Default)]
pub struct Events(pub Vec<(Duration, String)>);

impl Events {
    pub fn note(&mut self, at: Duration, what: String) {
        eprintln!("chaos: at {:.0} s: {what}", at.as_secs_f64());
        self.0.push((at, what));
    }
}

/// Every request's outcome, summed up.
#[derive(Debug, Default)]
pub struct Summary {
    pub sent: usize,
    pub answered: usize,
    pub ok: usize,
    /// Answers other than 200, by `status code` (e.g. `503 unavailable`).
    pub not_ok: BTreeMap<String, usize>,
    /// Requests with no answer within the callers' timeout.
    pub lost: usize,
    /// Replies that found no waiting caller at the ingress (a second answer, or a late one).
    pub duplicates: f64,
    /// Messages left in both streams once drained (or given up on).
    pub left: u64,
    pub max_latency: Duration,
    /// When the answers other than 200 were sent: the first and the last, in seconds.
    pub not_ok_window: Option<(f64, f64)>,
}

impl Summary {
    pub fn new(outcomes: &[Outcome], duplicates: f64, left: u64) -> Self {
        let mut s = Self {
            sent: outcomes.len(),
            duplicates,
            left,
            ..Self::default()
        };
        for o in outcomes {
            s.max_latency = s.max_latency.max(o.latency);
            match o.status {
                0 => s.lost += 1,
                200 => s.ok += 1,
                status => {
                    let key = format!("{status} {}", o.code.as_deref().unwrap_or("-"));
                    *s.not_ok.entry(key).or_default() += 1;
                    let t = o.sent.as_secs_f64();
                    let (first, last) = s.not_ok_window.unwrap_or((t, t));
                    s.not_ok_window = Some((first.min(t), last.max(t)));
                }
            }
        }
        s.answered = s.sent - s.lost;
        s
    }

    pub fn non_200(&self) -> usize {
        self.not_ok.values().sum()
    }

    /// Whether the run met the target: every request answered 200, nothing left. (A caller
    /// gets one answer whatever happens; replies produced twice are reported beside.)
    pub fn clean(&self) -> bool {
        self.ok == self.sent && self.left == 0
    }
}

/// The machine and the code the run was on.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let date = output("date", &["-u", "+%Y-%m-%dT%H:%MZ"]);
    let commit = output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["diff", "--quiet", "HEAD"])
        .status()
        .is_ok_and(|s| !s.success());
    let nats = output(
        &clothesline_tests::paths::nats_server().to_string_lossy(),
        &["--version"],
    );
    format!(
        "{date}, commit {commit}{}, {cpu}, {cores} cores, load average {} at the end, {nats}",
        if dirty { "+changes" } else { "" },
        load.join(" ")
    )
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// How the run was set up, for the section's first paragraph.
pub struct Setup {
    pub title: String,
    pub machine: String,
    /// One sentence: the stack, the ack wait, the load.
    pub what: String,
}

/// The Markdown section.
pub fn markdown(setup: &Setup, events: &Events, s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", setup.title);
    let _ = writeln!(out, "{}; {}. Meanwhile:\n", setup.machine, setup.what);
    for (at, what) in &events.0 {
        let _ = writeln!(out, "- at {:.0} s: {what}", at.as_secs_f64());
    }
    let not_ok = if s.not_ok.is_empty() {
        "none".to_string()
    } else {
        s.not_ok
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\n| sent | answered | 200 | other answers (status code: count) | lost (no answer) | duplicate replies at the ingress | left in the streams | max latency |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {not_ok} | **{}** | {:.0} | {} | {:.1} s |",
        s.sent,
        s.answered,
        s.ok,
        s.lost,
        s.duplicates,
        s.left,
        s.max_latency.as_secs_f64()
    );
    let verdict = if s.clean() {
        "**met**".to_string()
    } else {
        format!(
            "**not met**: {} answers other than 200, {} lost, {} left",
            s.non_200(),
            s.lost,
            s.left
        )
    };
    let _ = writeln!(
        out,
        "\nTarget: every request answered 200, none lost, the streams empty at the end: \
         {verdict}. No caller got two answers (one HTTP response each); {:.0} replies were \
         produced a second time (work redelivered after a failure ran again) and dropped by the \
         ingress.",
        s.duplicates
    );
    if let Some((first, last)) = s.not_ok_window {
        let _ = writeln!(
            out,
            "\nThe {} answers other than 200 were to requests sent between {first:.0} s and {last:.0} s.",
            s.non_200()
        );
    }
    let _ = writeln!(
        out,
        "\n*Duplicate replies at the ingress* counts replies that found no waiting caller \
         (`ingress_unmatched_replies_total`): a second answer to the same request, or a late one \
         for a caller already answered; an HTTP caller never sees either, it gets exactly one \
         response."
    );
    out
}
