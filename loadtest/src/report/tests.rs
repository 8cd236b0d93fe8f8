//! The report's figures, its JSON form and its text form.

use std::time::{Duration, Instant};

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};
use crate::images::Image;
use crate::target::{Outcome, Status};

fn args(extra: &[&str]) -> RunArgs {
    let mut all = vec!["x", "run", "--images", "/x", "--label", "step-1"];
    all.extend_from_slice(extra);
    match Cli::try_parse_from(all)
        .unwrap_or_else(|e| panic!("{e}"))
        .command
    {
        Command::Run(a) => *a,
        _ => panic!("not run"),
    }
}

fn set() -> ImageSet {
    let image = |class| Image {
        path: "p".into(),
        class,
        bytes: Default::default(),
        content_type: "image/jpeg",
    };
    ImageSet {
        images: vec![image(Some(0)), image(Some(1))],
        classes: vec!["hat".into(), "pants".into()],
    }
}

fn outcome(status: Status, code: Option<&str>, predicted: Option<usize>) -> Outcome {
    Outcome {
        status,
        error_code: code.map(String::from),
        predicted,
        unreadable: false,
        timings: None,
    }
}

fn sample() -> Report {
    let a = args(&["--rate", "20", "--warmup", "1s", "--target", "classify"]);
    let plan = a.plan().unwrap_or_else(|e| panic!("{e}"));
    let mut r = Recorder::new(2);
    for ms in [10, 20, 30] {
        let o = outcome(Status::Http(200), None, Some(0));
        r.record(Duration::from_millis(ms), &o, Some(0));
    }
    let o = outcome(Status::Http(200), None, Some(0));
    r.record(Duration::from_millis(40), &o, Some(1));
    let o = outcome(Status::Http(503), Some("queue_full"), None);
    r.record(Duration::from_millis(50), &o, Some(1));
    let start = Instant::now();
    let window = Window {
        start,
        end: start + Duration::from_millis(2500),
    };
    Report::new(&a, &plan, &set(), &r, window, None)
}

#[test]
fn figures() {
    let r = sample();
    assert_eq!(r.label.as_deref(), Some("step-1"));
    assert_eq!((r.target.as_str(), r.source.as_str()), ("classify", "url"));
    assert_eq!(
        (r.mode.as_str(), r.rate, r.concurrency),
        ("open", Some(20.0), None)
    );
    assert_eq!((r.completed, r.ok, r.errors), (5, 4, 1));
    assert!((r.window_s - 2.5).abs() < 1e-9);
    assert!((r.throughput_rps - 2.0).abs() < 1e-9);
    assert!((r.ok_throughput_rps - 1.6).abs() < 1e-9);
    assert_eq!(r.statuses.get("200"), Some(&4));
    assert_eq!(r.statuses.get("503"), Some(&1));
    assert_eq!(r.error_codes.get("queue_full"), Some(&1));
    let a = r.accuracy.as_ref().unwrap_or_else(|| panic!("no accuracy"));
    assert_eq!((a.scored, a.correct), (4, 3));
    assert!((a.accuracy - 0.75).abs() < 1e-9);
    assert_eq!(a.by_class.get("hat"), Some(&[3, 3]));
    assert_eq!(a.by_class.get("pants"), Some(&[1, 0]));
    assert!((r.latency_ms.max - 50.0).abs() < 0.1);
}

#[test]
fn json_has_every_field_and_reads_back() {
    let r = sample();
    let json = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
    for key in [
        "label",
        "target",
        "endpoint",
        "source",
        "mode",
        "rate",
        "concurrency",
        "warmup_s",
        "tick_ms",
        "window_s",
        "completed",
        "ok",
        "errors",
        "answered_all",
        "throughput_rps",
        "ok_throughput_rps",
        "statuses",
        "error_codes",
        "latency_ms",
        "accuracy",
        "loadgen_cpu",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
    let back: Report = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, r);
}

#[test]
fn text_says_the_same() {
    let text = sample().render_text();
    for needle in [
        "open loop at 20 req/s",
        "answers     5 (4 ok, 1 errors)",
        "throughput  2.00 req/s (1.60 ok/s)",
        "statuses    200: 4, 503: 1",
        "error codes queue_full: 1",
        "p99.9",
        "accuracy    75.0% (3/4)",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
}

#[test]
fn no_accuracy_without_classes() {
    let a = args(&["--concurrency", "2", "--requests", "3"]);
    let plan = a.plan().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let window = Window { start, end: start };
    let r = Report::new(
        &a,
        &plan,
        &ImageSet::default(),
        &Recorder::new(0),
        window,
        None,
    );
    assert_eq!(r.accuracy, None);
    assert_eq!((r.mode.as_str(), r.concurrency), ("closed", Some(2)));
    assert_eq!(r.throughput_rps, 0.0);
}
