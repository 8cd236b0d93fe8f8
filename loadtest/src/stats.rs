//! What a run counts: an HDR histogram of latencies (µs, 3 significant digits), counts by status
//! and by error code, and accuracy (answers whose top label is the image's class folder).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::target::{Outcome, Status};

/// Longest latency the histogram tells apart (larger ones are clamped to it).
const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Debug, Clone)]
pub struct Recorder {
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<Status, u64>,
    pub error_codes: BTreeMap<String, u64>,
    pub completed: u64,
    pub ok: u64,
    /// Per class: (answers with a readable label, correct ones).
    pub by_class: Vec<(u64, u64)>,
    /// Successful answers for a labelled image whose label could not be read.
    pub unreadable: u64,
    /// When the last counted answer came.
    pub last_done: Option<Instant>,
    /// With `--timings`: each successful answer's `timings` figures, its client time
    /// (`client_ms`) and what the figures leave of it (`unaccounted_ms`), by name, in ms.
    pub timings: Option<BTreeMap<&'static str, Vec<f64>>>,
}

impl Recorder {
    pub fn new(classes: usize) -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|e| unreachable!("fixed bounds are valid: {e}")),
            statuses: BTreeMap::new(),
            error_codes: BTreeMap::new(),
            completed: 0,
            ok: 0,
            by_class: vec![(0, 0); classes],
            unreadable: 0,
            last_done: None,
            timings: None,
        }
    }

    /// Also keeps the answers' `timings` (see [`Recorder::timings`]).
    pub fn with_timings(mut self, on: bool) -> Self {
        self.timings = on.then(BTreeMap::new);
        self
    }

    /// Counts one answer; `expected` is the image's class when known.
    pub fn record(&mut self, latency: Duration, outcome: &Outcome, expected: Option<usize>) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
        *self.statuses.entry(outcome.status).or_default() += 1;
        if let Some(code) = &outcome.error_code {
            match self.error_codes.get_mut(code) {
                Some(n) => *n += 1,
                None => {
                    self.error_codes.insert(code.clone(), 1);
                }
            }
        }
        self.completed += 1;
        if outcome.status.is_ok() {
            self.ok += 1;
        }
        if let (Some(want), Some(got)) = (expected, outcome.predicted)
            && let Some(slot) = self.by_class.get_mut(want)
        {
            slot.0 += 1;
            slot.1 += u64::from(got == want);
        }
        if outcome.unreadable {
            self.unreadable += 1;
        }
        if let (Some(samples), Some(t)) = (&mut self.timings, &outcome.timings) {
            for (name, value) in t.fields() {
                if let Some(v) = value {
                    samples.entry(name).or_default().push(v);
                }
            }
            let client_ms = latency.as_secs_f64() * 1e3;
            samples.entry("client_ms").or_default().push(client_ms);
            samples
                .entry("unaccounted_ms")
                .or_default()
                .push(client_ms - t.inside());
        }
    }

    /// The median of each kept `timings` figure, in ms.
    pub fn timings_p50(&self) -> Option<BTreeMap<String, f64>> {
        let samples = self.timings.as_ref()?;
        Some(
            samples
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), crate::report::md::median(v)?)))
                .collect(),
        )
    }

    /// (answers with a readable label, correct ones) over all classes.
    pub fn accuracy_counts(&self) -> (u64, u64) {
        self.by_class
            .iter()
            .fold((0, 0), |(s, c), (s1, c1)| (s + s1, c + c1))
    }

    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.latency_us)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1e3;
        Self {
            min: ms(h.min()),
            mean: h.mean() / 1e3,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Status, code: Option<&str>, predicted: Option<usize>) -> Outcome {
        Outcome {
            status,
            error_code: code.map(String::from),
            predicted,
            unreadable: false,
            timings: None,
        }
    }

    #[test]
    fn medians_of_the_answers_timings() {
        let mut r = Recorder::new(0).with_timings(true);
        for (ms, inference) in [(30, 20.0), (40, 24.0), (50, 22.0)] {
            let mut o = outcome(Status::Http(200), None, None);
            o.timings = Some(crate::answer::Timings {
                inference_ms: Some(inference),
                preprocess_ms: Some(1.0),
                total_ms: Some(25.0),
                ..Default::default()
            });
            r.record(Duration::from_millis(ms), &o, None);
        }
        // A failure has no timings and is not counted in them.
        r.record(
            Duration::from_millis(1),
            &outcome(Status::Timeout, None, None),
            None,
        );
        let p50 = r.timings_p50().unwrap_or_default();
        assert_eq!(p50.get("inference_ms"), Some(&22.0));
        assert_eq!(p50.get("client_ms"), Some(&40.0));
        // 30 - 21, 40 - 25, 50 - 23: the median of 9, 15, 27.
        assert_eq!(p50.get("unaccounted_ms"), Some(&15.0));
        assert_eq!(p50.get("download_ms"), None);
        assert_eq!(Recorder::new(0).timings_p50(), None);
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut r = Recorder::new(0);
        // 1..=1000 ms, once each.
        for ms in 1..=1000u64 {
            r.record(
                Duration::from_millis(ms),
                &outcome(Status::Http(200), None, None),
                None,
            );
        }
        let s = r.latency();
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-3;
        assert!(close(s.min, 1.0), "{s:?}");
        assert!(close(s.p50, 500.0), "{s:?}");
        assert!(close(s.p90, 900.0), "{s:?}");
        assert!(close(s.p99, 990.0), "{s:?}");
        assert!(close(s.p999, 999.0), "{s:?}");
        assert!(close(s.max, 1000.0), "{s:?}");
        assert!(close(s.mean, 500.5), "{s:?}");
    }

    #[test]
    fn empty_and_huge() {
        let mut r = Recorder::new(0);
        assert_eq!(r.latency().max, 0.0);
        let o = outcome(Status::Timeout, None, None);
        r.record(Duration::from_secs(100_000), &o, None);
        r.record(Duration::ZERO, &o, None);
        assert_eq!(r.completed, 2);
        assert!(r.latency().max >= 3_599_000.0);
    }

    #[test]
    fn counts_statuses_codes_and_accuracy() {
        let mut r = Recorder::new(3);
        let d = Duration::from_millis(5);
        r.record(d, &outcome(Status::Http(200), None, Some(0)), Some(0));
        r.record(d, &outcome(Status::Http(200), None, Some(2)), Some(1));
        r.record(d, &outcome(Status::Http(200), None, Some(1)), Some(1));
        r.record(d, &outcome(Status::Http(200), None, None), None);
        let over = outcome(Status::Http(429), Some("overloaded"), None);
        r.record(d, &over, Some(2));
        r.record(d, &over, Some(2));
        let mut unreadable = outcome(Status::Http(200), None, None);
        unreadable.unreadable = true;
        r.record(d, &unreadable, Some(2));

        assert_eq!((r.completed, r.ok), (7, 5));
        assert_eq!(r.statuses[&Status::Http(200)], 5);
        assert_eq!(r.statuses[&Status::Http(429)], 2);
        assert_eq!(r.error_codes["overloaded"], 2);
        assert_eq!(r.by_class, [(1, 1), (2, 1), (0, 0)]);
        assert_eq!(r.accuracy_counts(), (3, 2));
        assert_eq!(r.unreadable, 1);
    }
}
