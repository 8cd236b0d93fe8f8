//! `scripts/up.sh` as a new user runs it: started on free ports (with the binaries this test
//! suite built, `BIN_DIR`, instead of a release build), it prints its examples; the first one
//! (an upload with curl), the `/predict` one (a URL of the sample images up.sh serves) and the
//! command-line client's are run as printed, from another folder, and must return scores. Then
//! SIGTERM stops everything it started.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clothesline_tests::examples::top_label;
use clothesline_tests::{free_port, paths};

/// up.sh in a process group of its own; the group is killed on drop.
struct Up(Child);

impl Up {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.0.id())])
            .status();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.0.wait();
    }
}

/// The examples up.sh printed: each command line (with its `\` continuations joined).
fn printed_commands(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl ") || l.contains("/clothesline classify"))
        .map(String::from)
        .collect()
}

fn sh(command: &str, cwd: &std::path::Path) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", command])
        .current_dir(cwd)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn up_sh_prints_examples_that_return_scores() {
    let root = paths::repo_root();
    // Six distinct ports: free_port() binds and releases, so two calls can return the same one
    // (seen: the gpu-worker's health port was the ingress's).
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < 6 {
        ports.insert(free_port());
    }
    let ports: Vec<u16> = ports.into_iter().collect();
    let ingress_port = ports[0];
    let mut child = Command::new("bash");
    child
        .arg(root.join("scripts/up.sh"))
        .env("BIN_DIR", paths::bin_dir())
        .env("ALLOW_PRIVATE_ADDRESSES", "1")
        .env("DEVICE", "cpu")
        .env("INGRESS_PORT", ingress_port.to_string())
        .env("NATS_PORT", ports[1].to_string())
        .env("NATS_MONITOR_PORT", ports[2].to_string())
        .env("PREPROCESSOR_PORT", ports[3].to_string())
        .env("GPU_WORKER_PORT", ports[4].to_string())
        .env("EXAMPLES_PORT", ports[5].to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut up = Up(child.spawn().unwrap());

    // Read what it prints until the end of its message (or it exits, or 5 minutes pass).
    let stdout = up.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut printed = String::new();
    while !printed.contains("Ctrl-C stops everything.") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push_str(&(line + "\n")),
            Err(e) => panic!("up.sh did not print its examples ({e}); so far:\n{printed}"),
        }
    }
    assert!(
        printed.contains(&format!("http://localhost:{ingress_port}/")),
        "{printed}"
    );

    let commands = printed_commands(&printed);
    assert_eq!(commands.len(), 3, "{printed}");
    let elsewhere = tempfile::tempdir().unwrap();
    let first = sh(&commands[0], elsewhere.path());
    assert_eq!(top_label(&first), "pants", "{}: {first}", commands[0]);
    let predict = sh(&commands[1], elsewhere.path());
    assert_eq!(top_label(&predict), "shoes", "{}: {predict}", commands[1]);
    let table = sh(&commands[2], elsewhere.path());
    assert_eq!(
        table.matches(" ms\n").count(),
        10,
        "a table per sample: {table}"
    );

    // SIGTERM to up.sh stops it and everything it started, within the tiers' grace period.
    up.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while up.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "up.sh still running 60 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let group_left = Command::new("pgrep")
        .args(["-g", &up.0.id().to_string()])
        .output()
        .unwrap();
    assert!(
        group_left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&group_left.stdout)
    );
}
