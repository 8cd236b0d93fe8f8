//! The tracing cost lines of `scripts/bench_tracing.sh` (issue #18): successful answers per second
//! with tracing off and on in alternating rounds, CPU per answer by process, and the ratio on/off.
//! Reads `machine.txt` (`cpu`, `nproc`, `loadavg_end`), `tracing-{off,on}-I.json` and
//! `cpu-{off,on}-I.txt` (CPU seconds of nats-server, ingress, preprocessor, gpu-worker and the
//! sink, and the ingress's answers so far: before, then after the loop).

use anyhow::Context;

use super::md::{mean, median};
use super::results::{Results, or_unknown};

const MODES: [&str; 2] = ["off", "on"];

/// CPU ms per answer of nats-server, ingress, preprocessor, gpu-worker and the sink in one loop.
fn cpu_ms(results: &Results, mode: &str, i: usize) -> anyhow::Result<[f64; 5]> {
    let file = format!("cpu-{mode}-{i}.txt");
    let v = results.numbers(&file)?;
    anyhow::ensure!(v.len() == 12, "{file}: want 12 numbers, got {}", v.len());
    let (before, after) = v.split_at(6);
    let answers = after[5] - before[5];
    anyhow::ensure!(answers > 0.0, "{file}: no answers between before and after");
    let mut out = [0.0; 5];
    for (k, slot) in out.iter_mut().enumerate() {
        *slot = (after[k] - before[k]) * 1000.0 / answers;
    }
    Ok(out)
}

pub fn markdown(results: &Results) -> anyhow::Result<String> {
    let machine = results.kv("machine.txt")?;
    let rounds = (1..)
        .take_while(|i| results.exists(&format!("tracing-off-{i}.json")))
        .count();
    anyhow::ensure!(rounds > 0, "no tracing-off-1.json: no round ran");
    let mut rps: [Vec<f64>; 2] = Default::default();
    let mut cpu: [Vec<[f64; 5]>; 2] = Default::default();
    for (m, mode) in MODES.iter().enumerate() {
        for i in 1..=rounds {
            let name = format!("tracing-{mode}-{i}");
            rps[m].push(results.report(&name)?.ok_throughput_rps);
            cpu[m].push(cpu_ms(results, mode, i).with_context(|| name.clone())?);
        }
    }
    let means = [mean(&rps[0]), mean(&rps[1])];
    let mut out = vec![
        format!(
            "Tracing cost, scripts/bench_tracing.sh, {}, {} cores, load average {} at the end:",
            or_unknown(&machine, "cpu"),
            or_unknown(&machine, "nproc"),
            or_unknown(&machine, "loadavg_end")
        ),
        String::new(),
        "| tracing | successful answers/s per round | mean |".into(),
        "| --- | --- | --- |".into(),
    ];
    for (m, label) in ["off (no endpoint)", "on, 100% sampled, OTLP/HTTP"]
        .iter()
        .enumerate()
    {
        let each: Vec<String> = rps[m].iter().map(|r| format!("{r:.1}")).collect();
        out.push(format!(
            "| {label} | {} | {:.1} |",
            each.join(", "),
            means[m]
        ));
    }
    out.extend([
        String::new(),
        "CPU ms per answer over each loop, mean of the rounds (the sink's counted apart: a \
         collector would run elsewhere):"
            .into(),
        String::new(),
        "| tracing | nats-server | ingress | preprocessor | gpu-worker | tiers + nats | OTLP sink |"
            .into(),
        "| --- | --- | --- | --- | --- | --- | --- |".into(),
    ]);
    let mut tiers = [0.0; 2];
    for (m, mode) in MODES.iter().enumerate() {
        let cols: Vec<f64> = (0..5)
            .map(|k| cpu[m].iter().map(|r| r[k]).sum::<f64>() / rounds as f64)
            .collect();
        tiers[m] = cols[..4].iter().sum();
        let shown: Vec<String> = cols[..4].iter().map(|c| format!("{c:.2}")).collect();
        out.push(format!(
            "| {mode} | {} | {:.2} | {:.2} |",
            shown.join(" | "),
            tiers[m],
            cols[4]
        ));
    }
    let pairs: Vec<f64> = rps[0]
        .iter()
        .zip(&rps[1])
        .map(|(off, on)| on / off)
        .collect();
    let mut sorted = pairs.clone();
    sorted.sort_by(f64::total_cmp);
    let shown: Vec<String> = sorted.iter().map(|r| format!("{r:.3}")).collect();
    out.extend([
        String::new(),
        format!(
            "CPU per answer on/off (tiers + nats): {:.3}; on a CPU-bound machine throughput \
             scales as its inverse: {:.3}",
            tiers[1] / tiers[0],
            tiers[0] / tiers[1]
        ),
        String::new(),
        format!(
            "Ratio on/off: {:.3} of the means; per round (on / the off just before it), sorted: \
             {}, median {:.3} (target: at least 0.97)",
            means[1] / means[0],
            shown.join(", "),
            median(&pairs).unwrap_or(f64::NAN)
        ),
    ]);
    Ok(out.join("\n") + "\n")
}
