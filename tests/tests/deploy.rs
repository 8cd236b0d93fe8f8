//! The deployment files agree with the code. `deploy/check.py` renders every kustomize overlay and
//! validates it, compose.yml and the eksctl config against strict schemas, lints the Dockerfiles and
//! checks the names that must agree, given a contract taken from the code here (the topology
//! `clothesline-provision` creates, each binary's `--help`). And KEDA's view of the queues: a real
//! nats-server's `/jsz`, read the way the `nats-jetstream` scaler reads it, has the pending count
//! for the stream and consumer each ScaledObject names. And least privilege: compose and every
//! overlay run NATS with the users of `nats/auth.conf`, and connect each tier as its own user.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use async_nats::HeaderMap;
use async_nats::jetstream;
use clothesline_tests::nats::{NatsServer, ROLES};
use clothesline_tests::paths;
use futures::StreamExt;
use protocol::names::{
    GPU_WORKER_CONSUMER, HEADER_NATS_MSG_ID, PREPROCESSOR_CONSUMER, REQUESTS_STREAM,
    REQUESTS_SUBJECT, TENSORS_STREAM, TENSORS_SUBJECT,
};
use protocol::provision::{Topology, provision};
use serde_json::{Value, json};

/// Runs `deploy/check.py` with the Python that `scripts/deps.sh` sets up. The NATS configs read
/// the users' passwords from the environment: `nats-server -t` needs them set (to anything).
fn check_py(args: &[&str]) -> Output {
    let root = paths::repo_root();
    Command::new(paths::python())
        .arg(root.join("deploy/check.py"))
        .args(args)
        .envs(password_env())
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", paths::python().display()))
}

/// A value for every password variable of `nats/auth.conf`.
fn password_env() -> Vec<(&'static str, String)> {
    ROLES
        .iter()
        .map(|(user, var)| (*var, NatsServer::password(user)))
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the code says: the streams and consumers it provisions, and the options of every binary.
fn contract() -> Value {
    let t = Topology::builtin();
    let consumer = |tier: &str,
                    s: &async_nats::jetstream::stream::Config,
                    c: &jetstream::consumer::pull::Config| {
        json!({
            "tier": tier,
            "stream": s.name,
            "subject": s.subjects[0],
            "consumer": c.durable_name.clone().unwrap(),
        })
    };
    let mut help = serde_json::Map::new();
    for bin in paths::BINARIES {
        help.insert(bin.into(), paths::help(bin).into());
    }
    json!({
        "consumers": [
            consumer("preprocessor", &t.requests, &t.preprocessor),
            consumer("gpu-worker", &t.tensors, &t.gpu_worker),
        ],
        "help": help,
    })
}

#[test]
fn deployment_files_pass_the_offline_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&contract()).unwrap()).unwrap();
    let out = check_py(&["all", "--contract", path.to_str().unwrap()]);
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "deploy/check.py failed:\n{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    assert!(
        !report.contains("skip"),
        "nothing may be skipped with a contract:\n{report}"
    );
}

/// The lag KEDA's nats-jetstream scaler computes from `/jsz?acc=<account>&consumers=true&config=true`:
/// the account, then the stream, then the consumer by name; `num_pending + num_ack_pending`.
fn keda_lag(jsz: &Value, account: &str, stream: &str, consumer: &str) -> Option<u64> {
    let accounts = jsz["account_details"].as_array()?;
    let account = accounts.iter().find(|a| a["name"] == account)?;
    let stream = account["stream_detail"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stream)?;
    let consumer = stream["consumer_detail"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == consumer)?;
    Some(consumer["num_pending"].as_u64()? + consumer["num_ack_pending"].as_u64()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsz_has_the_pending_count_of_every_scaled_objects_consumer() {
    let out = check_py(&["scaledobjects"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let triggers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let covered: BTreeSet<(String, String)> = triggers
        .iter()
        .map(|t| (t["overlay"].to_string(), t["consumer"].to_string()))
        .collect();
    assert_eq!(
        covered.len(),
        4,
        "both tiers in both overlays: {triggers:?}"
    );

    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.client().await);
    provision(&js, &Topology::builtin().with_memory_storage())
        .await
        .unwrap();

    // Work queued and nobody draining it; on the tensors stream, two messages are also delivered
    // and not yet acknowledged: KEDA counts those too (a worker still holds them).
    let queued = BTreeMap::from([(REQUESTS_STREAM, 7u64), (TENSORS_STREAM, 5u64)]);
    for (subject, stream) in [
        (REQUESTS_SUBJECT, REQUESTS_STREAM),
        (TENSORS_SUBJECT, TENSORS_STREAM),
    ] {
        for i in 0..queued[stream] {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_NATS_MSG_ID, format!("{stream}-{i}").as_str());
            js.publish_with_headers(subject, headers, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(GPU_WORKER_CONSUMER, TENSORS_STREAM)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut held = Vec::new();
    while let Some(message) = batch.next().await {
        held.push(message.unwrap());
    }
    assert_eq!(held.len(), 2);

    let http = reqwest::Client::new();
    for trigger in &triggers {
        let account = trigger["account"].as_str().unwrap();
        let stream = trigger["stream"].as_str().unwrap();
        let name = trigger["consumer"].as_str().unwrap();
        // Exactly the URL KEDA builds (no escaping of the account).
        let url = format!(
            "http://127.0.0.1:{}/jsz?acc={account}&consumers=true&config=true",
            nats.monitor_port
        );
        let jsz: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let lag = keda_lag(&jsz, account, stream, name).unwrap_or_else(|| {
            panic!("{trigger}: account {account}, stream {stream}, consumer {name} not in {url}")
        });
        assert_eq!(lag, queued[stream], "{trigger}");
        let activation: u64 = trigger["activationLagThreshold"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            lag > activation,
            "{trigger}: {lag} queued would not activate the scaler"
        );
    }
    assert!(
        [PREPROCESSOR_CONSUMER, GPU_WORKER_CONSUMER]
            .iter()
            .all(|c| triggers.iter().any(|t| t["consumer"] == *c))
    );
    drop(held);
}

/// YAML documents as JSON, read by the deploy checks' Python (PyYAML: merge keys and all).
fn yaml_docs(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(paths::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML not readable");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kubectl kustomize` of an overlay (kubectl from the venv of `scripts/deps.sh`, else PATH).
fn render(overlay: &str) -> Vec<Value> {
    let beside = paths::python().with_file_name("kubectl");
    let kubectl = if beside.exists() {
        beside
    } else {
        "kubectl".into()
    };
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(paths::repo_root().join("k8s/overlays").join(overlay))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    yaml_docs(&text(&out.stdout))
}

/// The `authorization { ... }` block of a NATS config, to the end of the file.
fn authorization_block(conf: &str) -> &str {
    let start = conf
        .find("\nauthorization {")
        .unwrap_or_else(|| panic!("no authorization block in\n{conf}"));
    conf[start..].trim()
}

/// A container's environment as name -> literal value or `secret:<name>/<key>`.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = match e["valueFrom"]["secretKeyRef"].as_object() {
                Some(r) => format!(
                    "secret:{}/{}",
                    r["name"].as_str().unwrap(),
                    r["key"].as_str().unwrap()
                ),
                None => e["value"].as_str().unwrap_or_default().to_string(),
            };
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

/// What a tier connecting as `user` sets: `(NATS_USER, NATS_PASSWORD, NATS_INBOX_PREFIX)`.
fn nats_login(env: &BTreeMap<String, String>) -> (Option<&str>, Option<&str>, Option<&str>) {
    let get = |k: &str| env.get(k).map(String::as_str);
    (
        get("NATS_USER"),
        get("NATS_PASSWORD"),
        get("NATS_INBOX_PREFIX"),
    )
}

#[test]
fn every_deployment_runs_nats_with_the_users_of_auth_conf() {
    let root = paths::repo_root();
    let auth = std::fs::read_to_string(root.join("nats/auth.conf")).unwrap();
    let block = authorization_block(&auth);

    // The users of auth.conf are the roles, each with its password variable.
    let users: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("user: "))
        .collect();
    let passwords: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("password: $"))
        .collect();
    assert_eq!(users, ROLES.map(|(u, _)| u), "users of nats/auth.conf");
    assert_eq!(passwords, ROLES.map(|(_, v)| v), "password variables");

    // The server config of compose (nats-server.conf + auth.conf) is valid with the passwords
    // set, and refused without them: no password is written down.
    let check = |with_passwords: bool| {
        let mut cmd = Command::new(paths::nats_server());
        cmd.arg("-t")
            .arg("-c")
            .arg(root.join("nats/nats-server-auth.conf"));
        for (_, var) in ROLES {
            cmd.env_remove(var);
        }
        if with_passwords {
            cmd.envs(password_env());
        }
        cmd.output().unwrap()
    };
    let out = check(true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!check(false).status.success());

    // compose: nats runs that config with every password; each tier logs in as itself.
    let compose = &yaml_docs(&std::fs::read_to_string(root.join("compose.yml")).unwrap())[0];
    let services = &compose["services"];
    let command = services["nats"]["command"].to_string();
    assert!(
        command.contains("/etc/nats/nats-server-auth.conf"),
        "{command}"
    );
    for (_, var) in ROLES {
        let value = services["nats"]["environment"][var]
            .as_str()
            .unwrap_or_default();
        assert!(
            value.starts_with(&format!("${{{var}:-")),
            "compose nats: {var}={value}"
        );
    }
    for (service, user) in [
        ("ingress", "ingress"),
        ("preprocessor", "preprocessor"),
        ("gpu-worker", "gpu-worker"),
        ("gpu-worker-cuda", "gpu-worker"),
        ("provision", "provision"),
    ] {
        let env = &services[service]["environment"];
        let var = ROLES.iter().find(|(u, _)| *u == user).unwrap().1;
        assert_eq!(env["NATS_USER"], user, "compose {service}");
        assert_eq!(
            env["NATS_INBOX_PREFIX"],
            format!("_INBOX_{user}"),
            "compose {service}"
        );
        let password = env["NATS_PASSWORD"].as_str().unwrap_or_default();
        assert!(
            password.starts_with(&format!("${{{var}:-")),
            "compose {service}: NATS_PASSWORD={password}"
        );
    }

    // Kubernetes: the same authorization block in the server config, passwords from the Secret
    // nats-users for the server and for each tier (one key each), the user and inbox prefix set.
    for overlay in ["kind", "eks"] {
        let objects = render(overlay);
        let find = |kind: &str, name: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{overlay}: no {kind}/{name}"))
        };
        let cm = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("nats-config")
            })
            .unwrap();
        let conf = cm["data"]["nats.conf"].as_str().unwrap();
        assert_eq!(
            authorization_block(conf),
            block,
            "{overlay}: nats.conf's authorization block differs from nats/auth.conf's"
        );
        let nats = &find("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0];
        let env = env_of(nats);
        for (user, var) in ROLES {
            assert_eq!(
                env.get(var).map(String::as_str),
                Some(format!("secret:nats-users/{user}").as_str()),
                "{overlay}: nats {var}"
            );
        }
        for (kind, name, user) in [
            ("Deployment", "ingress", "ingress"),
            ("Deployment", "preprocessor", "preprocessor"),
            ("Deployment", "gpu-worker", "gpu-worker"),
            ("Job", "provision", "provision"),
        ] {
            let container = &find(kind, name)["spec"]["template"]["spec"]["containers"][0];
            let env = env_of(container);
            let secret = format!("secret:nats-users/{user}");
            let prefix = format!("_INBOX_{user}");
            assert_eq!(
                nats_login(&env),
                (Some(user), Some(secret.as_str()), Some(prefix.as_str())),
                "{overlay}: {kind}/{name}"
            );
        }
        if overlay == "kind" {
            // Development passwords for a laptop; on EKS the Secret is made by hand.
            let secret = find("Secret", "nats-users");
            let keys: BTreeSet<&str> = secret["data"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ROLES.iter().map(|(u, _)| *u).collect::<BTreeSet<_>>());
            assert_eq!(
                secret["metadata"]["labels"]["clothesline.io/stage"],
                "platform"
            );
        } else {
            assert!(
                !objects.iter().any(|o| o["kind"] == "Secret"),
                "eks ships no passwords"
            );
        }
    }
}
