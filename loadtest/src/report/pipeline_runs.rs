//! The pipeline section's runs table and where the CPU went during the HTTP closed-loop run.

use super::md::{g, ms, percent};
use super::pipeline::{family, label};
use super::results::{Results, numbers};
use crate::report::Report;

/// Error codes of error answers, then failures that have no answer (`timeout`, ...), as
/// `code count` pairs.
fn why(r: &Report) -> Vec<String> {
    let mut why: Vec<(&str, u64)> = r
        .error_codes
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    for (k, v) in &r.statuses {
        let answerless =
            !k.starts_with(|c: char| c.is_ascii_digit()) && k != "nats_ok" && k != "nats_error";
        if !answerless {
            continue;
        }
        match why.iter_mut().find(|(code, _)| code == k) {
            Some(slot) => slot.1 = *v,
            None => why.push((k, *v)),
        }
    }
    why.into_iter().map(|(k, v)| format!("{k} {v}")).collect()
}

fn row(r: &Report) -> String {
    let offered = match (r.mode.as_str(), r.rate) {
        ("open", Some(rate)) => format!("{}/s", g(rate)),
        _ => format!("{} in flight", r.concurrency.unwrap_or(0)),
    };
    let accuracy = match &r.accuracy {
        Some(a) if a.scored > 0 => {
            format!("{} ({}/{})", percent(a.accuracy, 1), a.correct, a.scored)
        }
        _ => "-".into(),
    };
    let why = why(r);
    let errors = if why.is_empty() {
        r.errors.to_string()
    } else {
        format!("{} ({})", r.errors, why.join(", "))
    };
    let cpu = r
        .loadgen_cpu
        .as_ref()
        .map_or("-".into(), |c| format!("{:.1}%", c.percent_of_one_core));
    let l = &r.latency_ms;
    format!(
        "| {} ({}) | {offered} | {:.1} | {errors} | {} | {} | {} | {} | {} | {accuracy} | {cpu} |",
        family(label(r)),
        r.source,
        r.ok_throughput_rps,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    )
}

/// The runs table: HTTP /predict, uploads, NATS; open loop by rate before closed loop.
pub fn table(runs: &[Report]) -> Vec<String> {
    let order = |r: &Report| match family(label(r)) {
        "http-predict" => 0,
        "http-classify-upload" => 1,
        "nats" => 2,
        _ => 9,
    };
    let mut sorted: Vec<&Report> = runs
        .iter()
        .filter(|r| !label(r).starts_with("noop"))
        .collect();
    sorted.sort_by(|a, b| {
        (order(a), a.mode != "open")
            .cmp(&(order(b), b.mode != "open"))
            .then(a.rate.unwrap_or(0.0).total_cmp(&b.rate.unwrap_or(0.0)))
    });
    let mut out = vec![
        "### Pipeline runs".to_string(),
        String::new(),
        "Open loop: requests sent at a fixed rate whatever the answers do, latency from each \
         request's intended send time (queueing shows). Closed loop: a fixed number in flight. \
         Each run counts answers after a warm-up; images are the validation split, served by the \
         load generator on 127.0.0.1 (URLs) or sent as the request body (uploads), so the \
         accuracy column is an end-to-end check. Latencies in ms."
            .into(),
        String::new(),
        "| target | offered | ok/s | errors | p50 | p90 | p99 | p99.9 | max | accuracy | loadgen CPU |"
            .into(),
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|".into(),
    ];
    out.extend(sorted.into_iter().map(row));
    out.push(String::new());
    out
}

/// CPU by process during the HTTP closed-loop run, from `tier_cpu.txt` (process names, then
/// CPU seconds before and after) and the load generator's own report.
pub fn tier_cpu(results: &Results, runs: &[Report], cores: usize) -> anyhow::Result<Vec<String>> {
    let text = results.text("tier_cpu.txt")?.unwrap_or_default();
    let lines: Vec<&str> = text.split('\n').collect();
    let closed = runs.iter().find(|r| label(r) == "http-predict-closed");
    let (Some(closed), true) = (closed, lines.len() >= 3) else {
        return Ok(Vec::new());
    };
    let Some(loadgen) = &closed.loadgen_cpu else {
        return Ok(Vec::new());
    };
    let (before, after) = (numbers(lines[1])?, numbers(lines[2])?);
    let wall = loadgen.wall_s;
    let mut used: Vec<(&str, f64)> = lines[0]
        .split_whitespace()
        .zip(before.iter().zip(&after))
        .map(|(name, (b, a))| (name, a - b))
        .collect();
    used.push((
        "load generator + image server",
        loadgen.user_s + loadgen.system_s,
    ));
    let total: f64 = used.iter().map(|(_, u)| u).sum();
    let answers = match closed.answered_all {
        0 => closed.completed,
        n => n,
    }
    .max(1);
    let parts: Vec<String> = used
        .iter()
        .map(|(name, u)| {
            format!(
                "{name} {u:.1} s ({} of a core, {:.1} ms per answer)",
                percent(u / wall, 0),
                u / answers as f64 * 1e3
            )
        })
        .collect();
    Ok(vec![format!(
        "CPU by process during the HTTP closed-loop run ({wall:.1} s wall and {answers} answers, \
         warm-up included): {}. Together {total:.1} of the {:.0} core-seconds of this {cores}-core \
         machine; the rest went to idle time and to other work on the shared machine.",
        parts.join("; "),
        wall * cores as f64
    )])
}
