//! The `pipeline` section of BENCHMARKS.md from the results of `scripts/bench.sh`: the machine,
//! the ratio pipeline throughput at saturation / in-process model ceiling, the model and
//! preprocessing ceilings (their own markdown tables, copied), the load generator's cost and one
//! row per pipeline run, with a chart of latency against throughput beside it.

use super::md::{g, mean, percent};
use super::results::Results;
use crate::report::Report;

/// The target ratio of pipeline throughput at saturation to the in-process ceiling.
pub const TARGET_RATIO: f64 = 0.85;

/// `http-predict-open-40` -> `http-predict`; `nats-closed` -> `nats`.
pub fn family(label: &str) -> &str {
    if let Some(rest) = label.strip_suffix("-closed") {
        return rest;
    }
    if let Some((rest, rate)) = label.rsplit_once('-')
        && let Some(rest) = rest.strip_suffix("-open")
        && !rate.is_empty()
        && rate.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return rest;
    }
    label
}

pub fn label(r: &Report) -> &str {
    r.label.as_deref().unwrap_or("")
}

/// A benchmark's printed output: its markdown table lines and its other non-empty lines.
fn split_tables(text: &str) -> (Vec<&str>, Vec<&str>) {
    let is_table = |l: &&str| l.trim().starts_with('|');
    let table = text.lines().filter(is_table).collect();
    let other = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_table(l))
        .collect();
    (table, other)
}

fn cells(line: &str) -> Vec<&str> {
    let line = line.trim();
    let line = line.strip_prefix('|').unwrap_or(line);
    let line = line.strip_suffix('|').unwrap_or(line);
    line.split('|').map(str::trim).collect()
}

/// The best (batch, images/s) row of model_bench's table: the first column whose heading says
/// images/s, with the batch column beside it.
pub fn best_images_per_s(text: &str) -> Option<(String, f64)> {
    let (table, _) = split_tables(text);
    if table.len() < 3 {
        return None;
    }
    let header: Vec<String> = cells(table[0]).iter().map(|c| c.to_lowercase()).collect();
    let col = header
        .iter()
        .position(|h| h.contains("images/s") || h.contains("img/s"))?;
    let batch = header.iter().position(|h| h.contains("batch")).unwrap_or(0);
    let mut best: Option<(String, f64)> = None;
    for line in &table[2..] {
        let row = cells(line);
        let (Some(b), Some(v)) = (row.get(batch), row.get(col)) else {
            continue;
        };
        let Ok(v) = v.replace(',', "").parse::<f64>() else {
            continue;
        };
        if best.as_ref().is_none_or(|(_, top)| v > *top) {
            best = Some((b.to_string(), v));
        }
    }
    best
}

/// What the section is made of.
pub struct Inputs {
    pub runs: Vec<Report>,
    /// (batch, images/s) of model_bench's best row, before and after the pipeline runs.
    pub ceilings: Vec<(String, f64)>,
    /// Where the chart is, as the markdown links it.
    pub chart: String,
}

impl Inputs {
    pub fn load(results: &Results, chart: &str) -> anyhow::Result<Self> {
        let mut ceilings = Vec::new();
        for file in ["model_bench.txt", "model_bench_after.txt"] {
            if let Some(best) = results.text(file)?.as_deref().and_then(best_images_per_s) {
                ceilings.push(best);
            }
        }
        Ok(Self {
            runs: results.labelled_reports()?,
            ceilings,
            chart: chart.to_string(),
        })
    }

    /// The mean of the ceilings; 0 when model_bench gave none.
    pub fn ceiling(&self) -> f64 {
        let values: Vec<f64> = self.ceilings.iter().map(|(_, v)| *v).collect();
        if values.is_empty() {
            0.0
        } else {
            mean(&values)
        }
    }
}

fn best<'a>(runs: &[&'a Report]) -> Option<&'a Report> {
    runs.iter()
        .copied()
        .fold(None, |best: Option<&Report>, r| match best {
            Some(b) if b.ok_throughput_rps >= r.ok_throughput_rps => Some(b),
            _ => Some(r),
        })
}

pub fn markdown(results: &Results, inputs: &Inputs) -> anyhow::Result<String> {
    let machine = results.kv_opt("machine.txt")?;
    let m = |k: &str, default: &'static str| machine.get(k).map_or(default, String::as_str);
    let (runs, ceiling) = (&inputs.runs, inputs.ceiling());
    let of = |families: &[&str]| -> Vec<&Report> {
        runs.iter()
            .filter(|r| families.contains(&family(label(r))))
            .collect()
    };
    let (best_http, best_nats) = (
        best(&of(&["http-predict", "http-classify-upload"])),
        best(&of(&["nats"])),
    );
    let mut out = vec![
        "## Pipeline end to end (`scripts/bench.sh`)".to_string(),
        String::new(),
        format!(
            "Machine: {} cores ({}), {}, model on {}; {}, commit {}. Shared and busy: load \
             average {} at the start, {} at the end (1, 5, 15 min). nats-server, the three tiers, \
             the load generator and its image server all run on this machine; the tiers run with \
             their default options (`--allow-private-addresses` aside). The whole run took {} s.",
            m("nproc", "?"),
            m("cpu", "?"),
            m("mem", "?"),
            m("device", "cpu"),
            m("date", "?"),
            m("commit", "?"),
            m("loadavg_start", "?"),
            m("loadavg_end", "?"),
            m("duration_s", "?")
        ),
        String::new(),
    ];
    if let Some(http) = best_http
        && ceiling > 0.0
    {
        out.extend(ratio(inputs, http, best_nats));
    }
    let model = results.text("model_bench.txt")?.unwrap_or_default();
    let (table, other) = split_tables(&model);
    out.push("### In-process model ceiling (`gpu-worker` example `model_bench`)".into());
    out.push(String::new());
    out.extend(other.iter().take(2).map(|l| format!("{l}  ")));
    out.push(String::new());
    out.extend(table.iter().map(|l| l.to_string()));
    out.push(String::new());
    if let Some((batch, v)) = inputs.ceilings.get(1) {
        out.push(format!(
            "After the pipeline runs, the best was {v:.1} images/s (batch {batch})."
        ));
        out.push(String::new());
    }
    let pre = results.text("preprocess_bench.txt")?;
    out.extend(preprocessing(pre.as_deref().unwrap_or("not run"), ceiling));
    out.extend(loadgen_cost(runs));
    out.extend(super::pipeline_runs::table(runs));
    if of(&["nats"]).is_empty() {
        out.push(
            "NATS: not measured (the ingress did not answer on its service subject in this run)."
                .into(),
        );
        out.push(String::new());
    }
    let cores = machine
        .get("nproc")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    out.extend(super::pipeline_runs::tier_cpu(results, runs, cores)?);
    out.push(String::new());
    out.push(format!(
        "![latency percentiles vs throughput]({})",
        inputs.chart
    ));
    out.push(String::new());
    out.push(
        "Reproduce: `scripts/bench.sh` (about 8-10 minutes; see its header for the knobs).".into(),
    );
    Ok(out.join("\n") + "\n")
}

fn ratio(inputs: &Inputs, http: &Report, nats: Option<&Report>) -> Vec<String> {
    let ceiling = inputs.ceiling();
    let values: Vec<f64> = inputs.ceilings.iter().map(|(_, v)| *v).collect();
    let r = http.ok_throughput_rps / ceiling;
    let mut verdict = if r >= TARGET_RATIO { "meets" } else { "misses" }.to_string();
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let spread = hi / lo.max(1e-9);
    if spread > 1.25 {
        verdict = format!(
            "**not conclusive**: the in-process ceiling moved {spread:.1}x between the two \
             measurements, so other work on the shared machine changed during the run; as \
             measured it {verdict}"
        );
    }
    let bracket: Vec<String> = inputs
        .ceilings
        .iter()
        .map(|(b, v)| format!("{v:.1} (batch {b})"))
        .collect();
    let mut out = vec![format!(
        "**Pipeline throughput at saturation / in-process ceiling = {:.1} / {ceiling:.1} = {}** \
         over HTTP (best run: `{}`; ceiling: the mean of model_bench's best images/s before and \
         after the pipeline runs, {}); {verdict} the {} target.",
        http.ok_throughput_rps,
        percent(r, 1),
        label(http),
        bracket.join(" and "),
        percent(TARGET_RATIO, 0)
    )];
    if let Some(n) = nats {
        out.push(format!(
            "Over NATS: {:.1} / {ceiling:.1} = {} (`{}`).",
            n.ok_throughput_rps,
            percent(n.ok_throughput_rps / ceiling, 1),
            label(n)
        ));
    }
    out.push(String::new());
    out
}

fn preprocessing(text: &str, ceiling: f64) -> Vec<String> {
    let (table, other) = split_tables(text);
    let mut out = vec![
        "### Preprocessing ceiling (`preprocessor` example `preprocess_bench`)".to_string(),
        String::new(),
    ];
    if table.is_empty() {
        let trimmed = text.trim();
        let skip = trimmed.chars().count().saturating_sub(1500);
        out.extend([
            "```".into(),
            trimmed.chars().skip(skip).collect(),
            "```".into(),
        ]);
        out.push(String::new());
        return out;
    }
    out.extend(other.iter().take(3).map(|l| format!("{l}  ")));
    out.push(String::new());
    out.extend(table.iter().map(|l| l.to_string()));
    out.push(String::new());
    let per_core = table
        .iter()
        .flat_map(|l| l.split("**").skip(1).step_by(2))
        .find_map(|bold| bold.strip_suffix("/s")?.parse::<f64>().ok());
    if let Some(rate) = per_core
        && ceiling > 0.0
    {
        out.push(format!(
            "At the model's ceiling ({ceiling:.0} images/s) preprocessing the validation JPEGs \
             needs {:.2} of a core ({rate:.0} images/s per core).",
            ceiling / rate
        ));
        out.push(String::new());
    }
    out
}

fn loadgen_cost(runs: &[Report]) -> Vec<String> {
    let mut noops: Vec<&Report> = runs
        .iter()
        .filter(|r| label(r).starts_with("noop"))
        .collect();
    noops.sort_by_key(|r| !label(r).ends_with("default"));
    let mut out = vec!["### Load generator cost".to_string(), String::new()];
    if noops.is_empty() {
        return out;
    }
    out.push(
        "`clothesline-loadtest` at 1000 req/s (open loop, `/predict` JSON bodies) against its own \
         `serve-noop` server in another process; CPU is the load generator's user + system time \
         over the whole run (warm-up included) from `/proc/self/stat`; target under 10% of one \
         core:"
            .into(),
    );
    out.push(String::new());
    out.push(
        "| scheduler tick | answers/s | CPU, % of one core | p50 ms | p99 ms | p99.9 ms |".into(),
    );
    out.push("|---|---:|---:|---:|---:|---:|".into());
    for r in noops {
        let tick = if r.tick_ms != 0.0 {
            format!("{} ms", g(r.tick_ms))
        } else {
            "none".into()
        };
        let what = if label(r).ends_with("default") {
            format!("{tick} (default)")
        } else {
            format!("{tick} (`--tick`)")
        };
        let cpu = r
            .loadgen_cpu
            .as_ref()
            .map_or(f64::NAN, |c| c.percent_of_one_core);
        let l = &r.latency_ms;
        out.push(format!(
            "| {what} | {:.0} | **{cpu:.1}%** | {:.2} | {:.2} | {:.2} |",
            r.ok_throughput_rps, l.p50, l.p99, l.p999
        ));
    }
    out.push(String::new());
    out.push(
        "A wake-up of the scheduler costs more CPU than the request it sends, so above 200 req/s \
         the default tick sends the requests due within 5 ms together; each is then up to one \
         tick late, which its latency (counted from its intended send time) includes. Pipeline \
         runs (at most 100 req/s here) have no tick: each request goes out at its own time."
            .into(),
    );
    out.push(String::new());
    out
}
