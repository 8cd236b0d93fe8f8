//! The load generator's own CPU time, from `/proc/self/stat` (user + system time of all its
//! threads, in clock ticks of 1/100 s), so a report says whether the generator could have been
//! the bottleneck. `None` where `/proc` is not there.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    pub fn read_self() -> Option<Self> {
        parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }
}

/// utime and stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 (state) is the first after `)`
    let ticks = |f: Option<&str>| -> Option<Duration> {
        let t: u64 = f?.parse().ok()?;
        Some(Duration::from_millis(t * 1000 / USER_HZ))
    };
    Some(CpuTimes {
        user: ticks(fields.next())?,
        system: ticks(fields.next())?,
    })
}

/// CPU used over a stretch of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub user_s: f64,
    pub system_s: f64,
    pub wall_s: f64,
    /// (user + system) / wall, in percent of one core.
    pub percent_of_one_core: f64,
}

impl Usage {
    pub fn between(
        before: Option<CpuTimes>,
        after: Option<CpuTimes>,
        wall: Duration,
    ) -> Option<Self> {
        let (b, a) = (before?, after?);
        let user_s = a.user.saturating_sub(b.user).as_secs_f64();
        let system_s = a.system.saturating_sub(b.system).as_secs_f64();
        let wall_s = wall.as_secs_f64();
        let percent_of_one_core = if wall_s > 0.0 {
            (user_s + system_s) / wall_s * 100.0
        } else {
            0.0
        };
        Some(Self {
            user_s,
            system_s,
            wall_s,
            percent_of_one_core,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_even_with_odd_names() {
        let line =
            "4242 (load (test) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 37 0 0 20 0 3 0 99 0 0";
        let t = parse_stat(line).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!(t.user, Duration::from_millis(2500));
        assert_eq!(t.system, Duration::from_millis(370));
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn reads_this_process() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(CpuTimes::read_self().is_some());
        }
    }

    #[test]
    fn usage_in_percent_of_a_core() {
        let t = |u, s| {
            Some(CpuTimes {
                user: Duration::from_millis(u),
                system: Duration::from_millis(s),
            })
        };
        let u = Usage::between(t(100, 100), t(600, 300), Duration::from_secs(10));
        let u = u.unwrap_or_else(|| panic!("none"));
        assert!((u.percent_of_one_core - 7.0).abs() < 1e-9, "{u:?}");
        assert!((u.user_s - 0.5).abs() < 1e-9);
        assert_eq!(Usage::between(None, t(1, 1), Duration::from_secs(1)), None);
    }
}
