//! The `ingress` section of BENCHMARKS.md from the results of `scripts/bench_ingress.sh`:
//! capacity, the HTTP front's added latency over NATS, ten times the capacity (with the default
//! in-flight bound and one sized to the capacity), and what cancellation saves.

use std::collections::BTreeMap;

use anyhow::Context;

use super::md::median;
use super::results::{Results, number, or_unknown};
use crate::report::Report;

pub fn markdown(results: &Results) -> anyhow::Result<String> {
    let machine = results.kv("machine.txt")?;
    let m = |k| or_unknown(&machine, k);
    let capacity = results.report("capacity")?.ok_throughput_rps;
    let mut out = vec![
        "## Ingress: added latency, overload, cancellation (`scripts/bench_ingress.sh`)".into(),
        String::new(),
        format!(
            "Machine: {} cores ({}), model on cpu; {}, commit {}; load average {} at the start, \
             {} at the end. nats-server, the three tiers (defaults, `--allow-private-addresses` \
             aside) and the load generator all on this machine; the run took {} s.",
            m("nproc"),
            m("cpu"),
            m("date"),
            m("commit"),
            m("loadavg_start"),
            m("loadavg_end"),
            m("duration_s")
        ),
        String::new(),
        format!("Capacity (closed loop, 16 in flight, 15 s): **{capacity:.1} answers/s**."),
        String::new(),
    ];
    out.extend(latency(results)?);
    out.extend(["", "### Ten times the capacity", ""].map(String::from));
    let default_bound = "Default in-flight bound (`--max-inflight 1024`)";
    out.extend(overload(
        results,
        "overload-default",
        default_bound,
        capacity,
    )?);
    if let Some(n) = results.text("inflight-sized.txt")? {
        let title = format!(
            "In-flight bound sized to about 3 s of work (`--max-inflight {}`)",
            n.trim()
        );
        out.extend(overload(results, "overload-sized", &title, capacity)?);
    }
    let default = results.report("overload-default")?;
    let admitted: u64 = ["200", "504"]
        .iter()
        .filter_map(|k| default.statuses.get(*k))
        .sum();
    let admitted_rate = admitted as f64 / default.window_s.max(1.0);
    out.push(format!(
        "Every request was answered within its deadline (200, 429 or 504; none left waiting), the \
         ingress's memory stayed bounded, and latency was normal in the first run after the load \
         stopped: the requests still queued had expired, and their cancellations let the workers \
         skip them. Goodput is the weak point: with 1024 requests in flight (minutes of work for \
         this machine) most of the work goes to requests that expire before they are answered, \
         so far fewer succeed than with a bound sized to the capacity. On this machine that work \
         (about {admitted_rate:.0} requests/s admitted, downloaded, decoded and stored as \
         tensors) also takes a core from the gpu-worker, whose spinning OpenMP threads then slow \
         down several times (section gpu-worker-cpu-sharing). Size `--max-inflight` to the \
         replicas behind an ingress (about capacity x acceptable queueing time)."
    ));
    out.push(String::new());
    out.extend(cancellation(results, capacity)?);
    out.push(String::new());
    out.push("Reproduce: `scripts/bench_ingress.sh` (about 10 minutes).".into());
    Ok(out.join("\n") + "\n")
}

fn statuses(r: &Report) -> String {
    super::join_counts(&r.statuses, ": ", ", ")
}

fn latency(results: &Results) -> anyhow::Result<Vec<String>> {
    let (mut rows, mut diffs) = (Vec::new(), Vec::new());
    for round in 1.. {
        let Some(http) = results.report_opt(&format!("latency-http-{round}"))? else {
            break;
        };
        let nats = results.report(&format!("latency-nats-{round}"))?;
        let (h, n) = (&http.latency_ms, &nats.latency_ms);
        diffs.push(h.p50 - n.p50);
        rows.push(format!(
            "| {round} | {} | {:.2} | {:.1} | {} | {:.2} | {:.1} | {:+.2} |",
            http.ok,
            h.p50,
            h.p99,
            nats.ok,
            n.p50,
            n.p99,
            h.p50 - n.p50
        ));
    }
    let mut lines: Vec<String> = [
        "### Added latency of the HTTP front over a NATS request",
        "",
        "Open loop at 5 requests/s (low load), `/predict` with a URL against a core-NATS request \
         on the service subject `clothesline.classify` with the same JSON, in alternating rounds \
         of 20 s. Both paths end in the same ingress process, JetStream stream and workers: the \
         difference of the medians is what the HTTP side (axum, the flat map) adds. Latencies in ms.",
        "",
        "| round | HTTP answers | HTTP p50 | HTTP p99 | NATS answers | NATS p50 | NATS p99 | HTTP - NATS p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    .map(String::from)
    .to_vec();
    lines.extend(rows);
    lines.push(String::new());
    if let Some(med) = median(&diffs) {
        let verdict = if med < 1.0 { "under" } else { "NOT under" };
        lines.push(format!(
            "**Median over the rounds of the p50 difference: {med:+.2} ms** ({verdict} the 1 ms \
             target). The p50 itself moves by more than that from round to round on this shared \
             machine (inference is 20-30 ms of it), so single rounds can come out negative."
        ));
    }
    Ok(lines)
}

fn overload(
    results: &Results,
    name: &str,
    title: &str,
    capacity: f64,
) -> anyhow::Result<Vec<String>> {
    let o = results.report(name)?;
    let rate = o
        .rate
        .with_context(|| format!("{name}.json: not an open-loop run"))?;
    let rss_before = results.numbers(&format!("{name}-rss-before.txt"))?;
    let rss = results.numbers(&format!("{name}-rss.txt"))?;
    let rss_after = results.numbers(&format!("{name}-rss-after.txt"))?;
    let lat = &o.latency_ms;
    let mut lines = vec![
        format!("#### {title}"),
        String::new(),
        format!(
            "Offered {rate:.0} requests/s (ten times the capacity of {capacity:.1}/s) for {:.0} s, \
             open loop, each request asking a 5 s deadline (`X-Request-Timeout-Ms: 5000`; the \
             load generator waits up to 15 s).",
            o.window_s
        ),
        String::new(),
        format!(
            "- sent and answered: {} (answers by status: {})",
            o.completed,
            statuses(&o)
        ),
        format!(
            "- latency over all answers: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            lat.p50, lat.p99, lat.max
        ),
        format!(
            "- not answered by the ingress within 15 s: {}",
            o.statuses.get("timeout").copied().unwrap_or(0)
        ),
    ];
    if !rss.is_empty() {
        lines.push(match (rss_before.first(), rss_after.first()) {
            (Some(before), Some(after)) => format!(
                "- ingress resident memory: {:.1} MiB before, at most {:.1} MiB during ({} \
                 samples, every 0.5 s), {:.1} MiB after",
                before / 1024.0,
                rss.iter().copied().fold(f64::MIN, f64::max) / 1024.0,
                rss.len(),
                after / 1024.0
            ),
            _ => String::new(),
        });
    }
    lines.extend(
        [
            "",
            "Right after: 5 s runs at 10 requests/s, one after the other:",
            "",
            "| run | starts after the overload | answers | statuses | p50 ms | p99 ms | max ms |",
            "|---:|---:|---:|---|---:|---:|---:|",
        ]
        .map(String::from),
    );
    for i in 1..=6 {
        let Some(r) = results.report_opt(&format!("{name}-recovery-{i}"))? else {
            break;
        };
        let l = &r.latency_ms;
        lines.push(format!(
            "| {i} | ~{} s | {} | {} | {:.0} | {:.0} | {:.0} |",
            5 * (i - 1),
            r.completed,
            statuses(&r),
            l.p50,
            l.p99,
            l.max
        ));
    }
    lines.push(String::new());
    Ok(lines)
}

/// One `cancel-{true,false}` run: its report and the tiers' counters once drained.
struct Cancel {
    run: Report,
    counters: BTreeMap<String, f64>,
}

impl Cancel {
    fn load(results: &Results, honor: &str) -> anyhow::Result<Option<Self>> {
        let Some(run) = results.report_opt(&format!("cancel-{honor}"))? else {
            return Ok(None);
        };
        let file = format!("cancel-{honor}.txt");
        let kv = results.kv(&file)?;
        let mut counters = BTreeMap::new();
        for key in [
            "worker_items",
            "worker_cancelled",
            "pre_cancelled",
            "cpu_worker",
            "cpu_pre",
        ] {
            let value = number(&kv, key).with_context(|| file.clone())?;
            counters.insert(key.to_string(), value);
        }
        Ok(Some(Self { run, counters }))
    }

    fn get(&self, key: &str) -> f64 {
        self.counters.get(key).copied().unwrap_or(0.0)
    }

    /// Inferences for callers who had given up.
    fn wasted(&self) -> f64 {
        (self.get("worker_items") - self.run.ok as f64).max(0.0)
    }
}

fn cancellation(results: &Results, capacity: f64) -> anyhow::Result<Vec<String>> {
    let on = Cancel::load(results, "true")?;
    let off = Cancel::load(results, "false")?;
    let mut lines = vec![
        "### What cancellation saves".to_string(),
        String::new(),
        format!(
            "Twice the capacity ({:.0} requests/s) for 30 s, open loop, callers giving up after 3 \
             s (the load generator drops the connection; the ingress publishes the id on \
             `clothesline.cancel`); the request deadline stays at the ingress's default (30 s). \
             The tiers' counters and CPU seconds are read once both consumers are drained. \
             *Inferences for nobody*: images the gpu-worker ran whose caller had already given up \
             (inferences minus answers the callers got).",
            2.0 * capacity
        ),
        String::new(),
        "| workers honour cancellations | requests | answered in time | gave up | inferences run | \
         inferences for nobody | tensors skipped (gpu-worker) | requests skipped (preprocessor) | \
         gpu-worker CPU s | preprocessor CPU s |"
            .to_string(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    for (honor, c) in [("true", &on), ("false", &off)] {
        let Some(c) = c else { continue };
        lines.push(format!(
            "| {honor} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
            c.run.completed,
            c.run.ok,
            c.run.statuses.get("timeout").copied().unwrap_or(0),
            c.get("worker_items"),
            c.wasted(),
            c.get("worker_cancelled"),
            c.get("pre_cancelled"),
            c.get("cpu_worker"),
            c.get("cpu_pre")
        ));
    }
    lines.push(String::new());
    if let (Some(on), Some(off)) = (&on, &off) {
        let (cpu_on, cpu_off) = (on.get("cpu_worker"), off.get("cpu_worker"));
        let less = if cpu_off != 0.0 {
            (1.0 - cpu_on / cpu_off) * 100.0
        } else {
            0.0
        };
        lines.push(format!(
            "With cancellations honoured the gpu-worker ran {:.0} images for callers who had gone, \
             against {:.0} without; its CPU time for the run fell from {cpu_off:.1} s to \
             {cpu_on:.1} s ({less:.0}% less), and callers got {} answers in time against {}. The \
             preprocessor keeps up at this rate, so requests wait in the tensors stream and the \
             gpu-worker is where the skipping happens. Answers in time do not grow: with \
             first-in first-out queues and one patience for every caller, each request waits \
             about as long as its caller is willing to; what cancellation buys is the CPU (or GPU) \
             otherwise spent on answers nobody reads, and a backlog that drains at once.",
            on.wasted(),
            off.wasted(),
            on.run.ok,
            off.run.ok
        ));
    }
    Ok(lines)
}
