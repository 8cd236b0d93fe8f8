//! The `plumbing` section of BENCHMARKS.md from the results of `scripts/bench_plumbing.sh`: the
//! null model's CPU per answer by process, where one request's time goes at concurrency 1, and the
//! shipped model against the Flask monolith.

use std::collections::BTreeMap;

use anyhow::Context;

use super::results::{Results, numbers, or_unknown};
use crate::report::Report;

const PROCS: [&str; 4] = ["nats-server", "ingress", "preprocessor", "gpu-worker"];

/// The hops table's columns: a `timings` field (or the client's figures) and its heading.
const HOPS: [(&str, &str); 8] = [
    ("client_ms", "client"),
    ("total_ms", "ingress total"),
    ("request_queue_ms", "requests stream"),
    ("download_ms", "download"),
    ("preprocess_ms", "decode + resize"),
    ("tensor_queue_ms", "tensors stream + batch wait"),
    ("inference_ms", "inference"),
    ("unaccounted_ms", "the rest"),
];

pub fn markdown(results: &Results) -> anyhow::Result<String> {
    let machine = results.kv("machine.txt")?;
    let m = |k| or_unknown(&machine, k);
    let mut out = vec![
        "## Pipeline plumbing: its own CPU per image, and low-load latency (`scripts/bench_plumbing.sh`)\n".to_string(),
        format!(
            "Machine: {}, {} cores (`nproc`), shared with other engineers' builds and tests; {}, \
             commit {}, {}. Load average {} at the start, {} at the end; the run took {} s. \
             nats-server, the three tiers (release builds, defaults, `--allow-private-addresses` \
             aside), the load generator and its image server all run on this machine, the \
             measured processes at nice -10.\n",
            m("cpu"), m("nproc"), m("date"), m("commit"), m("nats"), m("loadavg_start"),
            m("loadavg_end"), m("secs")
        ),
    ];
    null_model(results, &mut out)?;
    for (tag, what) in [("null", "the null model"), ("model", "the shipped model")] {
        hops(results, tag, what, &mut out)?;
    }
    shipped_model(results, &mut out)?;
    out.push(
        "Reproduce: `scripts/bench_plumbing.sh` (about 6 minutes; see its header for the knobs)."
            .into(),
    );
    Ok(out.join("\n") + "\n")
}

/// A `NAME.cpu` file: `before`/`after` CPU seconds by process, and `decode_before` ... as a
/// histogram's sum and count.
fn cpu_file(results: &Results, name: &str) -> anyhow::Result<BTreeMap<String, Vec<f64>>> {
    let file = format!("{name}.cpu");
    let text = results
        .text(&file)?
        .with_context(|| format!("{} is missing", results.path(&file).display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, values) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let values = numbers(values).with_context(|| format!("{file}: {key}"))?;
        out.insert(key.to_string(), values);
    }
    Ok(out)
}

/// One run's CPU per answer: ms by process (zipped before/after), and the preprocessor's
/// decode and resize ms per image over the run when its histograms were read.
struct PerAnswer {
    run: Report,
    ms: Vec<f64>,
    decode: Option<f64>,
    resize: Option<f64>,
}

impl PerAnswer {
    fn load(results: &Results, name: &str) -> anyhow::Result<Self> {
        let run = results.report(name)?;
        let c = cpu_file(results, name)?;
        let get = |k: &str| c.get(k).with_context(|| format!("{name}.cpu: no {k} line"));
        let n = run.answered_all.max(1) as f64;
        let (before, after) = (get("before")?, get("after")?);
        let ms = after
            .iter()
            .zip(before)
            .map(|(a, b)| (a - b) * 1e3 / n)
            .collect();
        let hist = |kind: &str| match (
            c.get(&format!("{kind}_before")),
            c.get(&format!("{kind}_after")),
        ) {
            (Some(b), Some(a)) if b.len() == 2 && a.len() == 2 && a[1] > b[1] => {
                Some((a[0] - b[0]) * 1e3 / (a[1] - b[1]))
            }
            _ => None,
        };
        Ok(Self {
            decode: hist("decode"),
            resize: hist("resize"),
            run,
            ms,
        })
    }

    fn total(&self) -> f64 {
        self.ms.iter().sum()
    }
}

fn null_model(results: &Results, out: &mut Vec<String>) -> anyhow::Result<()> {
    let mut names = results.json_names("null-")?;
    names.sort_by_key(|n| (n.ends_with("-upload"), n.clone()));
    let Some(first) = names.first() else {
        return Ok(());
    };
    let concurrency = results.report(first)?.concurrency.unwrap_or(0);
    out.push("### Null model: what the pipeline itself costs\n".into());
    out.push(format!(
        "The gpu-worker serves `scripts/null_model.py`'s model: the shipped model's contract, input \
         and classes, but only a per-channel mean and a 3 -> 10 linear layer inside, so the CPU \
         below is the pipeline's. Closed loop of {concurrency} requests in flight; CPU from \
         /proc/PID/stat (user + system) before and after each run, divided by its answers; \
         *decode + resize* is the preprocessor's own measure of that work per image (its /metrics \
         histograms) over the same run. *before*/*after* rows (when present) are older and newer \
         binaries, alternating, on fresh stacks.\n"
    ));
    let procs: Vec<String> = PROCS.iter().map(|p| format!("{p} ms/answer")).collect();
    out.push(format!(
        "| run | answers/s | errors | p50 ms | p99 ms | {} | **total ms/answer** | decode + resize ms |",
        procs.join(" | ")
    ));
    out.push(format!(
        "|---|---:|---:|---:|---:|{}---:|---:|",
        "---:|".repeat(PROCS.len())
    ));
    for name in &names {
        let p = PerAnswer::load(results, name)?;
        let decode_resize = match (p.decode, p.resize) {
            (Some(d), Some(r)) => format!("{d:.3} + {r:.3}"),
            _ => "-".into(),
        };
        let ms: Vec<String> = p.ms.iter().map(|m| format!("{m:.3}")).collect();
        let l = &p.run.latency_ms;
        out.push(format!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {} | **{:.3}** | {decode_resize} |",
            name.strip_prefix("null-").unwrap_or(name),
            p.run.ok_throughput_rps,
            p.run.errors,
            l.p50,
            l.p99,
            ms.join(" | "),
            p.total()
        ));
    }
    out.push(String::new());
    out.push(
        "Profiles of the preprocessor and of nats-server under the URL load (top frames, text): \
         [benchmarks/plumbing/perf-preprocessor.txt](benchmarks/plumbing/perf-preprocessor.txt), \
         [benchmarks/plumbing/perf-nats.txt](benchmarks/plumbing/perf-nats.txt).\n"
            .into(),
    );
    Ok(())
}

/// `hops-TAG.json`: a closed loop of one with `--timings`, the medians in `timings_p50_ms`.
fn hops(results: &Results, tag: &str, what: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
    let Some(h) = results.report_opt(&format!("hops-{tag}"))? else {
        return Ok(());
    };
    let p50 = h
        .timings_p50_ms
        .as_ref()
        .with_context(|| format!("hops-{tag}.json has no timings_p50_ms (run with --timings)"))?;
    out.push(format!(
        "### Where one request's time goes at concurrency 1 ({what})\n"
    ));
    out.push(format!(
        "{} `POST /v1/classify` with URLs one after the other ({} errors); medians of each \
         answer's `timings` (each tier's own measure) and of the client's wall time; *the rest* is \
         the client's time minus the tiers' figures: HTTP, the ingress, the publish to the \
         requests stream, the tensor's publish and the reply's way back.\n",
        h.completed, h.errors
    ));
    let heads: Vec<&str> = HOPS.iter().map(|(_, head)| *head).collect();
    out.push(format!("| {} |", heads.join(" | ")));
    out.push(format!("|{}", "---:|".repeat(HOPS.len())));
    let cells: Vec<String> = HOPS
        .iter()
        .map(|(k, _)| p50.get(*k).map_or("-".into(), |v| format!("{v:.2}")))
        .collect();
    out.push(format!("| {} |\n", cells.join(" | ")));
    Ok(())
}

fn shipped_model(results: &Results, out: &mut Vec<String>) -> anyhow::Result<()> {
    let Some(p1) = results.report_opt("model-pipeline-c1")? else {
        return Ok(());
    };
    out.push("### The shipped model: pipeline against a Flask monolith\n".into());
    out.push(
        "`/predict` with URLs, closed loop, on the shipped model; the monolith is \
         `scripts/monolith` (Flask + gunicorn, PIL via `model/preprocess.py`, the same TorchScript \
         in process, one torch thread per worker). CPU is all of its processes (the stack's four, \
         or gunicorn's master and workers) per answer.\n"
            .into(),
    );
    out.push(
        "| server | c1 p50 ms | c1 p99 ms | c16 answers/s | c16 p50 ms | c16 p99 ms | c16 CPU ms/answer |"
            .into(),
    );
    out.push("|---|---:|---:|---:|---:|---:|---:|".into());
    for (tag, label) in [
        ("pipeline", "pipeline"),
        (
            "waiting",
            "pipeline, `--dispatch-when-idle false` (the batcher before)",
        ),
        (
            "monolith",
            "Flask monolith (gunicorn, `nproc` workers x 2 threads)",
        ),
    ] {
        let Some(c1) = results.report_opt(&format!("model-{tag}-c1"))? else {
            continue;
        };
        let mut cells = vec![
            format!("{:.1}", c1.latency_ms.p50),
            format!("{:.1}", c1.latency_ms.p99),
        ];
        let c16 = format!("model-{tag}-c16");
        if results.exists(&format!("{c16}.json")) {
            let p = PerAnswer::load(results, &c16)?;
            cells.push(format!("{:.1}", p.run.ok_throughput_rps));
            cells.push(format!("{:.1}", p.run.latency_ms.p50));
            cells.push(format!("{:.1}", p.run.latency_ms.p99));
            cells.push(format!("{:.1}", p.total()));
        } else {
            cells.extend(std::iter::repeat_n("-".to_string(), 4));
        }
        out.push(format!("| {label} | {} |", cells.join(" | ")));
    }
    out.push(String::new());
    if let Some(w) = results.report_opt("model-waiting-c1")? {
        out.push(format!(
            "Batcher at concurrency 1: p50 {:.1} ms waiting for a fuller batch, {:.1} ms \
             dispatching at once when nothing more is pending.\n",
            w.latency_ms.p50, p1.latency_ms.p50
        ));
    }
    let m1 = results.report_opt("model-monolith-c1")?;
    let m16 = results.report_opt("model-monolith-c16")?;
    let p16 = results.report_opt("model-pipeline-c16")?;
    if let (Some(m1), Some(m16), Some(p16)) = (m1, m16, p16) {
        let ok1 = p1.latency_ms.p50 <= m1.latency_ms.p50;
        let ratio = p16.ok_throughput_rps / m16.ok_throughput_rps.max(1e-9);
        let ok16 = ratio >= 1.1 && p16.latency_ms.p99 < m16.latency_ms.p99;
        let met = |ok| if ok { "met" } else { "missed" };
        out.push(format!(
            "Targets: concurrency-1 p50 at most the monolith's: {:.1} against {:.1} ms, **{}**; \
             concurrency 16 at least 1.1x its throughput with a lower p99: {ratio:.2}x, p99 {:.0} \
             against {:.0} ms, **{}**.\n",
            p1.latency_ms.p50,
            m1.latency_ms.p50,
            met(ok1),
            p16.latency_ms.p99,
            m16.latency_ms.p99,
            met(ok16)
        ));
    }
    Ok(())
}
