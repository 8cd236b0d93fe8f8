//! The schedule, as pure math: open loop sends request `i` at `start + i / rate` whatever happened
//! before (its latency counts from that intended time, so a slow answer cannot hold back the
//! requests behind it and hide its queueing: no coordinated omission); closed loop keeps
//! `concurrency` requests in flight. Also the duration syntax of the command line.

use std::time::Duration;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// A fixed arrival rate (requests per second).
    Open { rate: f64 },
    /// A fixed number of requests in flight.
    Closed { concurrency: usize },
}

/// When the measured part ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Requests(u64),
    Duration(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub mode: Mode,
    pub stop: Stop,
    /// Requests sent during this time at the start are not counted.
    pub warmup: Duration,
    /// Open loop: the scheduler wakes at multiples of this after the start and sends every
    /// request due by then, so fewer wake-ups carry more requests (zero: wake for each request).
    pub tick: Duration,
}

impl Plan {
    /// Requests counted after the warm-up, when known in advance.
    pub fn measured_total(&self) -> Option<u64> {
        match (self.mode, self.stop) {
            (Mode::Open { rate }, stop) => Some(measured_requests(stop, rate)),
            (Mode::Closed { .. }, Stop::Requests(n)) => Some(n),
            (Mode::Closed { .. }, Stop::Duration(_)) => None,
        }
    }
}

/// When open-loop request `i` is due, after the start.
pub fn offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// The open-loop tick when none is asked for: none up to 200 req/s, where each request has its
/// own wake-up anyway; 5 ms above (at most 200 wake-ups a second, several requests each).
pub fn auto_tick(rate: f64) -> Duration {
    if rate <= 200.0 {
        Duration::ZERO
    } else {
        Duration::from_millis(5)
    }
}

/// `d` rounded up to a multiple of `tick` (unchanged for a zero tick).
pub fn round_up(d: Duration, tick: Duration) -> Duration {
    if tick.is_zero() {
        return d;
    }
    let (d, t) = (d.as_nanos(), tick.as_nanos());
    Duration::from_nanos(u64::try_from(d.div_ceil(t) * t).unwrap_or(u64::MAX))
}

/// How many open-loop requests are due within the first `d` (those with `i / rate < d`).
pub fn count_in(d: Duration, rate: f64) -> u64 {
    (d.as_secs_f64() * rate).ceil() as u64
}

/// How many counted requests an open-loop run sends.
pub fn measured_requests(stop: Stop, rate: f64) -> u64 {
    match stop {
        Stop::Requests(n) => n,
        Stop::Duration(d) => count_in(d, rate),
    }
}

/// Requests per second over a window (0 for an empty window).
pub fn per_second(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        count as f64 / window.as_secs_f64()
    }
}

/// `30s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_even_intervals() {
        assert_eq!(offset(0, 40.0), Duration::ZERO);
        assert_eq!(offset(1, 40.0), Duration::from_millis(25));
        assert_eq!(offset(40, 40.0), Duration::from_secs(1));
        assert_eq!(offset(3, 1000.0), Duration::from_millis(3));
    }

    #[test]
    fn ticks_only_at_high_rates() {
        assert_eq!(auto_tick(80.0), Duration::ZERO);
        assert_eq!(auto_tick(200.0), Duration::ZERO);
        assert_eq!(auto_tick(1000.0), Duration::from_millis(5));
    }

    #[test]
    fn wake_ups_round_up_to_the_tick() {
        let ms = Duration::from_millis;
        assert_eq!(round_up(ms(0), ms(2)), ms(0));
        assert_eq!(round_up(ms(1), ms(2)), ms(2));
        assert_eq!(round_up(ms(2), ms(2)), ms(2));
        assert_eq!(round_up(Duration::from_micros(2001), ms(2)), ms(4));
        assert_eq!(round_up(ms(7), Duration::ZERO), ms(7));
        // At 1000 req/s with a 2 ms tick, requests 1 and 2 go out together at 2 ms.
        let wake = |i| round_up(offset(i, 1000.0), ms(2));
        assert_eq!(
            (wake(0), wake(1), wake(2), wake(3)),
            (ms(0), ms(2), ms(2), ms(4))
        );
    }

    #[test]
    fn counts_the_requests_due_within_a_time() {
        assert_eq!(count_in(Duration::ZERO, 50.0), 0);
        assert_eq!(count_in(Duration::from_secs(1), 50.0), 50); // i = 0..49
        assert_eq!(count_in(Duration::from_millis(1010), 50.0), 51); // i = 50 is at 1.0 s
        assert_eq!(count_in(Duration::from_secs(1), 2.5), 3); // 0, 0.4, 0.8
        // Every request counted is due before the end, the next one is not.
        let (d, rate) = (Duration::from_millis(1234), 37.0);
        let n = count_in(d, rate);
        assert!(offset(n - 1, rate) < d && offset(n, rate) >= d);
    }

    #[test]
    fn counted_totals_when_known() {
        let plan = |mode, stop| Plan {
            mode,
            stop,
            warmup: Duration::from_secs(2),
            tick: Duration::ZERO,
        };
        let open = Mode::Open { rate: 10.0 };
        let closed = Mode::Closed { concurrency: 4 };
        let secs = Stop::Duration(Duration::from_secs(5));
        assert_eq!(plan(open, secs).measured_total(), Some(50));
        assert_eq!(plan(open, Stop::Requests(7)).measured_total(), Some(7));
        assert_eq!(plan(closed, Stop::Requests(7)).measured_total(), Some(7));
        assert_eq!(plan(closed, secs).measured_total(), None);
    }

    #[test]
    fn per_second_over_a_window() {
        assert_eq!(per_second(30, Duration::from_secs(2)), 15.0);
        assert_eq!(per_second(30, Duration::ZERO), 0.0);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("").is_err());
    }
}
