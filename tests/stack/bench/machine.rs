//! The machine's lines of `machine.txt` (`KEY=value`, as the reports read them): the date, the
//! cores, the CPU model, the memory, the load average, the commit.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// `YYYY-MM-DDTHH:MMZ` of a Unix time (as `date -u +%Y-%m-%dT%H:%MZ`).
pub fn utc_minute(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01 (no dates before it here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60
    )
}

pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_minute(secs)
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `Model name:` of `lscpu`'s output.
pub fn parse_lscpu_model(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map(|v| v.trim().to_string())
}

/// The CPU's model name (`lscpu`, else `/proc/cpuinfo`), or empty.
pub fn cpu() -> String {
    let lscpu = Command::new("lscpu").output().ok();
    let from_lscpu = lscpu.and_then(|o| parse_lscpu_model(&String::from_utf8_lossy(&o.stdout)));
    from_lscpu
        .or_else(|| {
            let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Total memory in whole GiB from `/proc/meminfo` text (as `free -g`), e.g. `23 GiB`.
pub fn parse_mem(meminfo: &str) -> Option<String> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(format!("{} GiB", kib / (1024 * 1024)))
}

pub fn mem() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem(&t))
        .unwrap_or_default()
}

/// The first `n` fields of `/proc/loadavg` (1, 5 and 15 minutes).
pub fn loadavg(n: usize) -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The short commit of the checkout, `+changes` when the tree differs from it.
pub fn commit() -> String {
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let clean = Command::new("git")
        .args(["diff", "--quiet"])
        .status()
        .is_ok_and(|s| s.success());
    if clean { head } else { head + "+changes" }
}

/// The lines `KEY=value`, one a line.
pub fn render(lines: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{k}={v}");
    }
    out
}

/// Writes `lines` to `path` (a new file), or adds them at its end.
pub fn write(path: &Path, lines: &[(&str, String)], append: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    file.write_all(render(lines).as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// The lines the pipeline, ingress and plumbing benchmarks start `machine.txt` with.
pub fn start_lines() -> Vec<(&'static str, String)> {
    vec![
        ("date", now()),
        ("nproc", nproc().to_string()),
        ("cpu", cpu()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_minutes_are_calendar_dates() {
        assert_eq!(utc_minute(0), "1970-01-01T00:00Z");
        // 2026-11-28 04:20:59 UTC
        assert_eq!(utc_minute(1_795_839_659), "2026-11-28T04:20Z");
        // A leap day.
        assert_eq!(utc_minute(1_709_164_800), "2024-02-29T00:00Z");
    }

    #[test]
    fn lscpu_and_meminfo_are_read_as_free_and_sed_did() {
        let lscpu = "Architecture:  x86_64\nModel name:            AMD EPYC 7B13\nThread(s): 2\n";
        assert_eq!(parse_lscpu_model(lscpu).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(parse_lscpu_model("Architecture: arm"), None);
        let meminfo = "MemTotal:       24523480 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_mem(meminfo).as_deref(), Some("23 GiB"));
    }

    #[test]
    fn the_file_is_key_value_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("machine.txt");
        write(
            &path,
            &[("nproc", "2".into()), ("cpu", "AMD EPYC".into())],
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        write(&path, &[("secs", "5".into())], true).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "nproc=2\ncpu=AMD EPYC\nsecs=5\n");
    }
}
