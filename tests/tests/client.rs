//! The `clothesline` command against the real stack: every sample image over HTTP as JSON, the
//! NATS way with a URL and a file as tables, and failures that exit non-zero with their codes.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use clothesline_tests::examples;
use clothesline_tests::files::FileServer;
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};

fn clothesline(args: &[String]) -> Output {
    Command::new(paths::bin("clothesline"))
        .args(["classify".to_string()].iter().chain(args))
        .env_remove("CLOTHESLINE_URL")
        .env_remove("NATS_URL")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_image_gets_its_class_over_http_as_json_lines_in_order() {
    let stack = Stack::start(StackOptions::default()).await;
    let images = examples::images();
    assert_eq!(images.len(), 10, "one sample per class");
    let mut args = vec!["--json".to_string(), "--url".into(), stack.ingress.url("")];
    args.extend(images.iter().map(|(p, _)| p.display().to_string()));
    let out = tokio::task::spawn_blocking(move || clothesline(&args))
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), images.len(), "{stdout}");
    for ((path, class), line) in images.iter().zip(&lines) {
        assert_eq!(
            line["input"],
            path.display().to_string(),
            "in the order given"
        );
        assert_eq!(line["top"][0]["label"], class.as_str(), "{line}");
        assert_eq!(
            line["top"].as_array().unwrap().len(),
            3,
            "--top-k defaults to 3"
        );
        assert!(line["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_a_file_and_a_url_print_tables_with_top_k_rows() {
    let files = FileServer::serve(&examples::images_dir()).await;
    let stack = Stack::start(StackOptions::default()).await;
    let skirt = examples::images_dir().join("skirt.jpg");
    let args = vec![
        "--nats".to_string(),
        "--nats-url".into(),
        stack.nats.url(),
        "--top-k".into(),
        "5".into(),
        skirt.display().to_string(),
        files.url("shoes.jpg"),
    ];
    let out = tokio::task::spawn_blocking(move || clothesline(&args))
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let manifest = protocol::Manifest::load(paths::manifest()).unwrap();
    let blocks: Vec<&str> = stdout
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), 2, "{stdout}");
    for (block, class) in blocks.iter().zip(["skirt", "shoes"]) {
        let lines: Vec<&str> = block.lines().collect();
        assert!(
            lines[1].contains(&format!("{} {}", manifest.name, manifest.version)),
            "{block}"
        );
        assert!(lines[1].ends_with(" ms"), "{block}");
        assert_eq!(
            lines.len(),
            2 + 5,
            "a header, the model line, 5 classes: {block}"
        );
        assert!(lines[2].trim_start().starts_with(class), "{block}");
        assert!(lines[2].contains('%') && lines[2].contains('█'), "{block}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_print_their_codes_and_exit_non_zero() {
    let stack = Stack::start(StackOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.jpg");
    std::fs::write(&notes, b"this is not an image at all").unwrap();
    let args = vec![
        "--url".to_string(),
        stack.ingress.url(""),
        notes.display().to_string(),
        dir.path().join("missing.jpg").display().to_string(),
        examples::images_dir().join("hat.jpg").display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || clothesline(&args))
        .await
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("\n  error not_an_image: "), "{stdout}");
    assert!(stdout.contains("\n  error unreadable_file: "), "{stdout}");
    assert!(
        stdout.contains("\n  hat "),
        "the good image is still answered: {stdout}"
    );
    assert!(
        stderr.contains("2 of 3 failed (not_an_image, unreadable_file)"),
        "{stderr}"
    );

    // Nothing listening: exits at once with 2, saying so, over NATS and over HTTP.
    let nowhere = format!("127.0.0.1:{}", clothesline_tests::free_port());
    let hat = examples::images_dir().join("hat.jpg").display().to_string();
    let nats = clothesline(&[
        "--nats".into(),
        "--nats-url".into(),
        format!("nats://{nowhere}"),
        hat.clone(),
    ]);
    assert_eq!(nats.status.code(), Some(2), "{}", text(&nats.stderr));
    assert!(
        text(&nats.stderr).contains("unreachable"),
        "{}",
        text(&nats.stderr)
    );
    let http = clothesline(&["--url".into(), format!("http://{nowhere}"), hat]);
    assert_eq!(http.status.code(), Some(1));
    assert!(
        text(&http.stdout).contains("error unreachable: "),
        "{}",
        text(&http.stdout)
    );
}
