//! What the benchmarks read about processes from `/proc` (CPU seconds from `/proc/PID/stat`,
//! resident memory from `/proc/PID/status`, children, whether this runs as root), and a sample's
//! value in a tier's Prometheus text.

use anyhow::Context;

/// Clock ticks per second of `/proc/PID/stat`'s times (`getconf CLK_TCK`, 100 on Linux).
const TICKS: f64 = 100.0;

/// The fields after the command name (`pid (comm) state ppid ...`): the name may hold spaces
/// and parentheses, so they start after the last `)`. Index 0 is field 3, `state`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// CPU seconds (user + system, fields 14 and 15) in a `/proc/PID/stat` line.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let f = stat_fields(stat)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS)
}

/// The parent's pid (field 4) in a `/proc/PID/stat` line.
pub fn parse_ppid(stat: &str) -> Option<u32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

fn stat(pid: u32) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/stat");
    std::fs::read_to_string(&path).with_context(|| format!("read {path}"))
}

/// CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    parse_cpu_seconds(&stat(pid)?).with_context(|| format!("/proc/{pid}/stat: no CPU times"))
}

/// The processes whose parent is `pid` (as `pgrep -P`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat(child).ok().and_then(|s| parse_ppid(&s)) == Some(pid))
        .collect()
}

/// A `KEY: value ...` line's first value in `/proc/PID/status` text.
fn status_value<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()
}

/// Resident memory in KiB (`VmRSS`) in `/proc/PID/status` text.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status_value(status, "VmRSS")?.parse().ok()
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_rss_kib(&text).with_context(|| format!("{path}: no VmRSS"))
}

/// Whether `/proc/self/status` text says the real user is root.
pub fn parse_is_root(status: &str) -> bool {
    status_value(status, "Uid") == Some("0")
}

/// Whether this process runs as root (it may then give the measured processes nice -10).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| parse_is_root(&s))
}

/// A sample's value in Prometheus text (`name` or `name{labels}` exactly, as the tier writes
/// it); 0 when absent.
pub fn sample(text: &str, name: &str) -> f64 {
    clothesline_tests::origin::metric(text, name).unwrap_or(0.0)
}

/// The sum of every sample of a family with labels (`family{...} value`).
pub fn family_sum(text: &str, family: &str) -> f64 {
    let prefix = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0, which would be written as `-0`.
        + 0.0
}

/// Numbers as one space-separated line (`1.5 0.2 3`).
pub fn joined(values: &[f64]) -> String {
    values
        .iter()
        .map(f64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_utime_plus_stime_even_with_a_name_holding_spaces() {
        let stat = "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 800 0 0 0 \
                    123 77 0 0 20 0 9 0 1000 100000 500 18446744073709551615";
        assert_eq!(parse_cpu_seconds(stat), Some(2.0));
        assert_eq!(parse_ppid(stat), Some(1));
        assert_eq!(parse_cpu_seconds("4242 (x) S 1"), None);
    }

    #[test]
    fn rss_and_root_come_from_the_status_lines() {
        let status = "Name:\tnats-server\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t   20480 kB\n";
        assert_eq!(parse_rss_kib(status), Some(20480));
        assert!(!parse_is_root(status));
        assert!(parse_is_root("Uid:\t0\t0\t0\t0\n"));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn samples_match_the_whole_name_and_labels() {
        let text = "# HELP x\n\
                    gpu_worker_items_total 1300\n\
                    gpu_worker_items_total_other 7\n\
                    preprocessor_requests_total{outcome=\"ok\"} 2500\n\
                    preprocessor_requests_total{outcome=\"cancelled\"} 80\n\
                    ingress_requests_total{route=\"predict\",status=\"200\"} 10\n\
                    ingress_requests_total{route=\"predict\",status=\"503\"} 2.5\n";
        assert_eq!(sample(text, "gpu_worker_items_total"), 1300.0);
        assert_eq!(
            sample(text, "preprocessor_requests_total{outcome=\"cancelled\"}"),
            80.0
        );
        assert_eq!(sample(text, "gpu_worker_cancelled_total"), 0.0);
        assert_eq!(family_sum(text, "ingress_requests_total"), 12.5);
        assert_eq!(family_sum(text, "absent_total").to_string(), "0");
    }

    #[test]
    fn joined_numbers_read_back_as_the_reports_want() {
        assert_eq!(joined(&[1.0, 0.5, 35.3]), "1 0.5 35.3");
    }
}
