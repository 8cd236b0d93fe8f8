//! Each report against the markdown the Python scripts it replaces wrote from the same fixture
//! results (`loadtest/fixtures/reports/NAME/`, expected output in `NAME.expected`: markdown, but
//! not named `.md`, which .dockerignore keeps out of the image builds' context; the pipeline's
//! chart link is the one line that changed: an SVG instead of a PNG).

use std::path::{Path, PathBuf};

use super::results::Results;
use super::{chart, ingress, pipeline, plumbing, tracing};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reports")
}

fn results(name: &str) -> Results {
    Results::new(fixtures().join(name)).unwrap_or_else(|e| panic!("{e:#}"))
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(format!("{name}.expected")))
        .unwrap_or_else(|e| panic!("{name}.expected: {e}"))
}

/// Equal, or a panic that shows the first line that differs.
fn same(got: anyhow::Result<String>, name: &str) {
    let got = got.unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let want = expected(name);
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "{name}.md line {}", i + 1);
    }
    assert_eq!(got, want, "{name}.md: the same lines, but not as many");
}

fn copy_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let to = dir.path().join(path.file_name().unwrap_or_default());
        std::fs::copy(&path, to).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

fn error_of(r: anyhow::Result<String>) -> String {
    match r {
        Ok(md) => panic!("expected an error, got\n{md}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn pipeline_as_before() {
    let r = results("pipeline");
    let inputs =
        pipeline::Inputs::load(&r, "benchmarks/pipeline.svg").unwrap_or_else(|e| panic!("{e:#}"));
    // model_bench's best rows before and after (a "1,05.4" and a "bad" cell in the second).
    assert_eq!(
        inputs.ceilings,
        [("2".to_string(), 111.3), ("2".to_string(), 109.9)]
    );
    same(pipeline::markdown(&r, &inputs), "pipeline");
}

#[test]
fn ingress_as_before() {
    same(ingress::markdown(&results("ingress")), "ingress");
}

#[test]
fn plumbing_as_before() {
    same(plumbing::markdown(&results("plumbing")), "plumbing");
}

#[test]
fn tracing_as_before() {
    same(tracing::markdown(&results("tracing")), "tracing");
}

#[test]
fn chart_has_every_series() {
    let r = results("pipeline");
    let inputs = pipeline::Inputs::load(&r, "x.svg").unwrap_or_else(|e| panic!("{e:#}"));
    let svg = chart::svg(&inputs.runs, inputs.ceiling()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    for label in [
        "http-predict open loop",
        "nats open loop",
        "http-predict p99.9",
        "nats p50",
        "http-predict closed loop, 16 in flight: p99",
        "in-process model ceiling 111/s",
        "85% of the ceiling",
        "12.5/s",
    ] {
        assert!(svg.contains(label), "no {label:?} in the chart");
    }
    assert!(!svg.contains("noop"), "the noop runs are not in the chart");
    // No runs at all still makes a chart (axes only).
    assert!(chart::svg(&[], 0.0).is_ok_and(|s| s.contains("</svg>")));
}

#[test]
fn a_broken_report_is_an_error_naming_its_file() {
    let dir = copy_of("ingress");
    std::fs::write(dir.path().join("capacity.json"), "{\"label\": 1")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(error_of(ingress::markdown(&r)).contains("capacity.json: not a load test report"));
    std::fs::remove_file(dir.path().join("capacity.json")).unwrap_or_else(|e| panic!("{e}"));
    assert!(error_of(ingress::markdown(&r)).contains("capacity.json is missing"));
}

#[test]
fn missing_counters_are_an_error() {
    let dir = copy_of("ingress");
    std::fs::write(dir.path().join("cancel-true.txt"), "worker_items=x\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let e = error_of(ingress::markdown(&r));
    assert!(
        e.contains("cancel-true.txt") && e.contains("worker_items=x"),
        "{e}"
    );

    let dir = copy_of("tracing");
    std::fs::write(dir.path().join("cpu-on-2.txt"), "1 2 3\n").unwrap_or_else(|e| panic!("{e}"));
    let r = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(error_of(tracing::markdown(&r)).contains("cpu-on-2.txt: want 12 numbers, got 3"));

    let dir = copy_of("plumbing");
    std::fs::write(dir.path().join("null-after-url.cpu"), "after 1 2\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(error_of(plumbing::markdown(&r)).contains("null-after-url.cpu: no before line"));
}

#[test]
fn optional_parts_are_left_out() {
    // The pipeline without NATS, model_bench or preprocess_bench output.
    let dir = copy_of("pipeline");
    for file in [
        "nats-open-20.json",
        "nats-closed.json",
        "model_bench.txt",
        "model_bench_after.txt",
        "preprocess_bench.txt",
    ] {
        std::fs::remove_file(dir.path().join(file)).unwrap_or_else(|e| panic!("{e}"));
    }
    let r = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let inputs = pipeline::Inputs::load(&r, "c.svg").unwrap_or_else(|e| panic!("{e:#}"));
    let md = pipeline::markdown(&r, &inputs).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(md.contains("NATS: not measured"), "{md}");
    assert!(
        !md.contains("in-process ceiling ="),
        "no ceiling, no ratio: {md}"
    );
    assert!(md.contains("```\nnot run\n```"), "{md}");
    // Plumbing without the monolith or the null model: only what ran.
    let dir = copy_of("plumbing");
    for name in ["model-monolith-c1", "model-monolith-c16", "null-after-url"] {
        std::fs::remove_file(dir.path().join(format!("{name}.json")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let r = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let md = plumbing::markdown(&r).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !md.contains("Targets:") && !md.contains("| after-url |"),
        "{md}"
    );
    assert!(md.contains("| pipeline | 33.5 |"), "{md}");
}
