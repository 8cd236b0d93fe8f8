//! `clothesline-stack up`, the launcher the scripts start the local stack with: it writes its
//! endpoints as `KEY=value` lines and prints `ready`; a `/predict` through the ingress the file
//! names (an image served by this test on 127.0.0.1) is answered; on SIGTERM it stops every
//! process it started, each within its grace (else it exits non-zero), removes the file and
//! exits 0.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use clothesline_tests::examples::{images_dir, top_label};
use clothesline_tests::files::FileServer;
use clothesline_tests::paths;

/// The launcher in a process group of its own; the group is killed on drop (a failed test
/// leaves nothing behind).
struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_writes_its_endpoints_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.env");
    let images = FileServer::serve(&images_dir()).await;
    let mut command = Command::new(paths::bin("clothesline-stack"));
    command
        .arg("up")
        .arg("--bin-dir")
        .arg(paths::bin_dir())
        .arg("--endpoints")
        .arg(&endpoints)
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .args(["--allow-private-addresses", "--device", "cpu"])
        .stdout(Stdio::piped())
        .process_group(0);
    let mut launcher = Launcher(command.spawn().unwrap());

    // Its one line on stdout, once every tier is ready (end of file if it failed).
    let stdout = launcher.0.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().and_then(Result::ok)
    })
    .await
    .unwrap();
    assert_eq!(first.as_deref(), Some("ready"));

    let text = std::fs::read_to_string(&endpoints).unwrap();
    let values: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    for key in [
        "NATS_URL",
        "INGRESS_URL",
        "INGRESS_PORT",
        "PREPROCESSOR_PORT",
        "GPU_WORKER_PORT",
    ] {
        assert!(values.contains_key(key), "{key} missing from:\n{text}");
    }
    let pids: Vec<&str> = [
        "NATS_PID",
        "INGRESS_PID",
        "PREPROCESSOR_PID",
        "GPU_WORKER_PID",
    ]
    .iter()
    .map(|k| values[k])
    .collect();
    assert!(pids.iter().all(|p| alive(p)), "{text}");

    let res = reqwest::Client::new()
        .post(format!("{}/predict", values["INGRESS_URL"]))
        .json(&serde_json::json!({ "url": images.url("pants.jpg") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(top_label(&res.text().await.unwrap()), "pants");

    let pid = launcher.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::block_in_place(|| launcher.0.wait().unwrap());
    assert!(status.success(), "clothesline-stack exited {status}");
    assert!(!endpoints.exists(), "the endpoints file outlived the stack");
    let left: Vec<_> = pids.iter().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
}
