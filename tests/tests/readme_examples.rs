//! The README's client examples run against a real stack, so they cannot rot. Each is a code
//! block after a `<!-- example: NAME -->` marker; the test swaps the README's default addresses
//! (HTTP on localhost:8080, NATS on 127.0.0.1:4222, sample images on 127.0.0.1:8000) for the
//! stack's, runs it from the repository root (shell with bash, Python with the venv of
//! scripts/deps.sh, which has requests and nats-py; the Rust one is the `readme-nats-request`
//! program, whose source the block must equal) and checks what it printed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;

use clothesline_tests::examples::{self, top_label};
use clothesline_tests::files::FileServer;
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};

struct Example {
    lang: String,
    code: String,
}

/// Every marked block of README.md, by name.
fn readme_examples() -> BTreeMap<String, Example> {
    let readme = std::fs::read_to_string(paths::repo_root().join("README.md")).unwrap();
    let mut found = BTreeMap::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        let lang = fence
            .strip_prefix("```")
            .unwrap_or_else(|| panic!("example {name}: a code block must follow its marker"));
        let code: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let example = Example {
            lang: lang.to_string(),
            code: code.join("\n") + "\n",
        };
        assert!(
            found.insert(name.to_string(), example).is_none(),
            "two examples named {name}"
        );
    }
    found
}

/// Runs one example; its stdout.
fn run(name: &str, example: &Example, addrs: &[(&str, String)]) -> String {
    let mut code = example.code.clone();
    for (from, to) in addrs {
        code = code.replace(from, to);
    }
    let nats_url = &addrs
        .iter()
        .find(|(f, _)| f.starts_with("nats://"))
        .unwrap()
        .1;
    let mut cmd = match example.lang.as_str() {
        "sh" => {
            let mut c = Command::new("bash");
            c.args(["-euo", "pipefail", "-c", &code]);
            c
        }
        "python" => {
            let mut c = Command::new(paths::python());
            c.args(["-c", &code]);
            c
        }
        "rust" => {
            let source =
                std::fs::read_to_string(paths::repo_root().join("tests/readme/nats_request.rs"))
                    .unwrap();
            assert_eq!(
                example.code, source,
                "README's {name} block must be tests/readme/nats_request.rs"
            );
            let mut c = Command::new(env!("CARGO_BIN_EXE_readme-nats-request"));
            c.env("NATS_URL", nats_url);
            c
        }
        other => panic!("example {name}: no runner for {other}"),
    };
    let out = cmd.current_dir(paths::repo_root()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{code}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_example_runs_and_gets_the_right_class() {
    // The top class each single-image example must print.
    let expected_top = [
        ("curl-upload", "pants"),
        ("curl-predict", "shoes"),
        ("python-predict", "pants"),
        ("python-upload", "hat"),
        ("python-nats", "shoes"),
        ("rust-nats", "shoes"),
    ];
    let found = readme_examples();
    let mut names: Vec<&str> = expected_top.iter().map(|(n, _)| *n).collect();
    names.push("python-bulk");
    names.sort();
    assert_eq!(
        found.keys().map(String::as_str).collect::<Vec<_>>(),
        names,
        "the README's examples and this test's list differ"
    );

    let files = FileServer::serve(&examples::images_dir()).await;
    let stack = Stack::start(StackOptions::default()).await;
    let addrs = [
        (
            "localhost:8080",
            format!("127.0.0.1:{}", stack.ingress.port),
        ),
        ("nats://127.0.0.1:4222", stack.nats.url()),
        ("127.0.0.1:8000", files.addr.to_string()),
    ];
    let runs = tokio::task::spawn_blocking(move || {
        found
            .iter()
            .map(|(name, ex)| (name.clone(), run(name, ex, &addrs)))
            .collect::<BTreeMap<_, _>>()
    })
    .await
    .unwrap();

    for (name, class) in expected_top {
        assert_eq!(
            top_label(&runs[name]),
            class,
            "{name} printed {}",
            runs[name]
        );
    }
    // Bulk: one line `<file> <class>` per sample image, in whatever order they finished.
    let mut bulk: Vec<&str> = runs["python-bulk"].lines().collect();
    bulk.sort();
    let mut want: Vec<String> = examples::images()
        .iter()
        .map(|(p, class)| format!("{} {class}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    want.sort();
    assert_eq!(bulk, want, "python-bulk printed {}", runs["python-bulk"]);
}
