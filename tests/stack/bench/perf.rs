//! The plumbing benchmark's profiles: `perf record` of the preprocessor and of nats-server under
//! the null-model URL load, and `perf report`'s flat profile as compact text in
//! `benchmarks/plumbing/perf-{preprocessor,nats}.txt`. Skipped, with a line saying so, when perf
//! is not installed.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::context::{Bench, Out, strs};
use super::machine;
use super::stack::BenchStack;

/// Where the profiles go.
pub const OUT: &str = "benchmarks/plumbing";

/// Whether a program is on PATH.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

/// `perf report --stdio` text without its blank lines, comments and tips, each line without
/// perf's trailing `- -` and `IPC [IPC Coverage]` columns, cut at 150 characters.
pub fn compact(report: &str) -> Vec<String> {
    let noise = ["header-only", "Tip:", "Event count", "Lost Samples"];
    report
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("# ."))
        .filter(|l| !(l.starts_with('#') && l[1..].trim_start_matches(' ').is_empty()))
        .filter(|l| !noise.iter().any(|n| l.contains(n)))
        .map(|l| {
            let l = strip_tail(l, &["-", "-"]);
            let l = strip_tail(l, &["[IPC Coverage]", "IPC"]);
            l.chars().take(150).collect()
        })
        .collect()
}

/// `line` without `parts` (last first), each with the blanks before it, when it ends so.
fn strip_tail<'a>(line: &'a str, parts: &[&str]) -> &'a str {
    let mut rest = line;
    for part in parts {
        match rest.trim_end().strip_suffix(part) {
            Some(r) => rest = r,
            None => return line,
        }
    }
    rest.trim_end()
}

async fn perf_top(data: &Path, sort: &str, limit: &str) -> Vec<String> {
    let out = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(data)
        .args([
            "--stdio",
            "--no-children",
            "--sort",
            sort,
            "--percent-limit",
            limit,
        ])
        .args(["-g", "none"])
        .stderr(Stdio::null())
        .output()
        .await;
    out.map(|o| compact(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// perf's top frames of the preprocessor and nats-server under the URL load at `concurrency`,
/// each recorded for half of `step_secs`.
pub async fn profile(
    bench: &Bench,
    stack: &BenchStack,
    concurrency: usize,
    step_secs: u64,
) -> anyhow::Result<()> {
    if !on_path("perf") {
        bench.log("perf not installed (apt-get install linux-perf): no profiles");
        return Ok(());
    }
    let secs = step_secs / 2;
    let mut args = strs(&["run", "--ingress"]);
    args.extend([
        stack.ingress_url(),
        "--images".into(),
        bench.path(&bench.images),
    ]);
    args.extend([
        "--concurrency".into(),
        concurrency.to_string(),
        "--duration".into(),
    ]);
    args.extend([format!("{}s", secs + 4), "--no-progress".into()]);
    let mut load = bench.spawn_loadtest(&args, Out::Null, true)?;
    // The load reaches its steady state before the profiles start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = |who: &str, pid: u32| {
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-F", "999", "-g", "-o"])
            .arg(bench.file(&format!("perf-{who}.data")))
            .args(["-p", &pid.to_string(), "--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        async move { cmd.status().await }
    };
    let (pre, nats) = tokio::join!(
        record("preprocessor", stack.pids[2]),
        record("nats", stack.pids[0])
    );
    let _ = (pre, nats, load.wait().await);
    std::fs::create_dir_all(OUT)?;
    let cpu = machine::cpu();
    for who in ["preprocessor", "nats"] {
        let data = bench.file(&format!("perf-{who}.data"));
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# perf top frames: {who} under the null-model URL load, {concurrency} in flight"
        );
        let _ = writeln!(
            text,
            "# {cpu}, {} cores, {}, load average {}",
            machine::nproc(),
            machine::now(),
            machine::loadavg(3)
        );
        let _ = writeln!(
            text,
            "# perf record -F 999 -g -p PID for {secs} s; perf report --no-children, by object, \
             then by symbol"
        );
        for line in perf_top(&data, "dso", "0.5").await {
            let _ = writeln!(text, "{line}");
        }
        text.push('\n');
        for line in perf_top(&data, "dso,symbol", "0.7").await.iter().take(45) {
            let _ = writeln!(text, "{line}");
        }
        std::fs::write(Path::new(OUT).join(format!("perf-{who}.txt")), text)?;
    }
    bench.log(format!("profiles in {OUT}/"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_reports_lose_their_noise_and_trailing_columns() {
        let report = "# To display the perf.data header info, please use --header-only\n\
                      #\n\
                      # Total Lost Samples: 0\n\
                      # Event count (approx.): 123\n\
                      # ........  ......\n\
                      \n\
                      # Overhead  Shared Object\n\
                      \x20   41.20%  libc.so.6      -      -   \n\
                      \x20   12.00%  [kernel]   IPC   [IPC Coverage]  \n\
                      \x20    3.00%  nats-server  a-b\n\
                      # Tip: use perf top\n";
        assert_eq!(
            compact(report),
            [
                "# Overhead  Shared Object",
                "    41.20%  libc.so.6",
                "    12.00%  [kernel]",
                "     3.00%  nats-server  a-b",
            ]
        );
        let long = "x".repeat(200);
        assert_eq!(compact(&long)[0].len(), 150);
    }
}
