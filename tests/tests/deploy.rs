//! The deployment files agree with the code. `deploy/check.py` renders every kustomize overlay and
//! validates it, compose.yml and the eksctl config against strict schemas, lints the Dockerfiles and
//! checks the names that must agree, given a contract taken from the code here (the topology
//! `clothesline-provision` creates, each binary's `--help`). And KEDA's view of the queues: a real
//! nats-server's `/jsz`, read the way the `nats-jetstream` scaler reads it, has the pending count
//! for the stream and consumer each ScaledObject names. And least privilege: compose and every
//! overlay run NATS with the users of `nats/auth.conf`, and connect each tier as its own user.
//! And pins and cross-checks that hold: one NATS version everywhere (the one these tests run), and
//! each inconsistency the checks guard against (issue 19), put back into a copy of the files,
//! fails them with a message that names it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use async_nats::HeaderMap;
use async_nats::jetstream;
use clothesline_tests::nats::{NatsServer, ROLES};
use clothesline_tests::{keda, paths};
use futures::StreamExt;
use protocol::names::{
    GPU_WORKER_CONSUMER, HEADER_NATS_MSG_ID, PREPROCESSOR_CONSUMER, REQUESTS_STREAM,
    REQUESTS_SUBJECT, TENSORS_STREAM, TENSORS_SUBJECT,
};
use serde_json::{Value, json};
use tierkit::provision::{Topology, provision};

/// Runs `deploy/check.py` with the Python that `scripts/deps.sh` sets up. The NATS configs read
/// the users' passwords from the environment: `nats-server -t` needs them set (to anything).
fn check_py(args: &[&str]) -> Output {
    check_py_at(&paths::repo_root(), args)
}

/// `deploy/check.py` of this checkout, checking the files under `root` (a mutated copy, or here).
fn check_py_at(root: &Path, args: &[&str]) -> Output {
    Command::new(paths::python())
        .arg(paths::repo_root().join("deploy/check.py"))
        .args(args)
        .envs(password_env())
        .env("CLOTHESLINE_DEPLOY_ROOT", root)
        .current_dir(root)
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
    // The query is tested against the server deployed, not whichever one is on PATH.
    let varz: Value = reqwest::get(format!("http://127.0.0.1:{}/varz", nats.monitor_port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        varz["version"].as_str(),
        Some(pinned_nats_version().as_str()),
        "the tests' nats-server is not the pinned one (NATS_SERVER_BIN from scripts/deps.sh)"
    );
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
        let lag = keda::consumer_detail(&jsz, account, stream, name)
            .and_then(keda::lag)
            .unwrap_or_else(|| {
                panic!(
                    "{trigger}: account {account}, stream {stream}, consumer {name} not in {url}"
                )
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
    render_at(&paths::repo_root(), overlay)
}

/// `kubectl kustomize` of an overlay of the files under `root`.
fn render_at(root: &Path, overlay: &str) -> Vec<Value> {
    let beside = paths::python().with_file_name("kubectl");
    let kubectl = if beside.exists() {
        beside
    } else {
        "kubectl".into()
    };
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(root.join("k8s/overlays").join(overlay))
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

/// `NATS_VERSION` of `scripts/deps.sh` under `root`: the version the tests run and deploy.
fn nats_version_at(root: &Path) -> String {
    let deps = std::fs::read_to_string(root.join("scripts/deps.sh")).unwrap();
    deps.lines()
        .find_map(|l| l.strip_prefix("NATS_VERSION=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("NATS_VERSION=\"x.y.z\" in scripts/deps.sh")
        .to_string()
}

fn pinned_nats_version() -> String {
    nats_version_at(&paths::repo_root())
}

/// Where the files under `root` run another NATS than `scripts/deps.sh` pins: compose's image and
/// the NATS StatefulSet's image of every overlay must be `nats:<NATS_VERSION>-alpine`.
fn nats_pin_problems(root: &Path) -> Vec<String> {
    let want = format!("nats:{}-alpine", nats_version_at(root));
    let compose = &yaml_docs(&std::fs::read_to_string(root.join("compose.yml")).unwrap())[0];
    // Compose lets NATS_IMAGE swap the image (the local one scripts/base-images.sh builds from the
    // pinned binary); its default is what users run.
    let compose_image = compose["services"]["nats"]["image"]
        .as_str()
        .map(|i| compose_default(i).into())
        .unwrap_or(serde_json::Value::Null);
    let mut images = vec![("compose.yml".to_string(), compose_image)];
    for overlay in ["kind", "eks"] {
        for o in render_at(root, overlay) {
            if o["kind"] == "StatefulSet" && o["metadata"]["name"] == "nats" {
                let containers = o["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .unwrap();
                let nats = containers.iter().find(|c| c["name"] == "nats").unwrap();
                images.push((format!("k8s/overlays/{overlay}"), nats["image"].clone()));
            }
        }
    }
    images
        .into_iter()
        .filter(|(_, image)| image.as_str() != Some(want.as_str()))
        .map(|(file, image)| format!("{file} runs {image}, scripts/deps.sh pins {want}"))
        .collect()
}

/// The value compose gives `${VAR:-default}` when VAR is unset; any other string as it is.
fn compose_default(value: &str) -> &str {
    value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
        .map_or(value, |(_, default)| default)
}

#[test]
fn nats_version_is_pinned_the_same_everywhere() {
    let version = pinned_nats_version();
    assert_eq!(nats_pin_problems(&paths::repo_root()), Vec::<String>::new());
    // And the server the tests start is that one.
    let out = Command::new(paths::nats_server())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        format!("nats-server: v{version}"),
        "{}: run `source scripts/deps.sh` (NATS_SERVER_BIN)",
        paths::nats_server().display()
    );
}

/// What the deploy checks read, copied under `to`: manifests, the guide, dashboards, the alerts'
/// unit tests, stream and consumer definitions, the pinned versions, and the tiers' sources
/// (their metric names).
fn copy_deploy_files(to: &Path) {
    let root = paths::repo_root();
    for part in [
        "k8s",
        "deploy/grafana",
        "deploy/prometheus",
        "nats",
        "scripts/deps.sh",
        "compose.yml",
        "ingress/src",
        "preprocessor/src",
        "gpu-worker/src",
    ] {
        copy_tree(&root.join(part), &to.join(part));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// One inconsistency of issue 19: in `file`, every `from` becomes `to`, and the checks must then
/// fail saying `expect`.
struct Mutation {
    what: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
    expect: &'static str,
}

const MUTATIONS: &[Mutation] = &[
    Mutation {
        what: "EKS lets the GPU tier scale past its node group",
        file: "k8s/overlays/eks/kustomization.yaml",
        from: "path: /spec/maxReplicaCount\n        value: 4\n",
        to: "path: /spec/maxReplicaCount\n        value: 8\n",
        expect: "maxReplicaCount 8 exceeds what node group gpu holds: maxSize 4 x 1 GPU per node / 1 per replica = 4",
    },
    Mutation {
        what: "the GPU node group shrinks under the ScaledObject",
        file: "k8s/overlays/eks/eksctl-cluster.yaml",
        from: "desiredCapacity: 0\n    maxSize: 4",
        to: "desiredCapacity: 0\n    maxSize: 2",
        expect: "maxReplicaCount 4 exceeds what node group gpu holds: maxSize 2",
    },
    Mutation {
        what: "the guide's table disagreeing with the ScaledObjects",
        file: "k8s/README.md",
        from: "| 1 to 16 (kind 4) |",
        to: "| 1 to 20 (kind 4) |",
        expect: "the table gives preprocessor at most 20 replicas on base, the ScaledObject 16",
    },
    Mutation {
        what: "the guide's GPU quota short of the node group",
        file: "k8s/README.md",
        from: "--desired-value 16",
        to: "--desired-value 8",
        expect: "the guide asks for 8 G vCPUs, the gpu node group needs 16 (4 x g5.xlarge)",
    },
    Mutation {
        what: "more preprocessors than max_ack_pending feeds",
        file: "k8s/base/preprocessor.yaml",
        from: "maxReplicaCount: 16",
        to: "maxReplicaCount: 40",
        expect: "maxReplicaCount 40 exceeds what consumer preprocessor can feed: max_ack_pending 1024 / 64 in flight per replica = 16",
    },
    Mutation {
        what: "the consumer's max_ack_pending lowered under the ScaledObject",
        file: "nats/jetstream/preprocessor.consumer.json",
        from: "\"max_ack_pending\": 1024",
        to: "\"max_ack_pending\": 512",
        expect: "max_ack_pending 512 / 64 in flight per replica = 8",
    },
    Mutation {
        what: "a surge rollout on full one-GPU nodes",
        file: "k8s/base/gpu-worker.yaml",
        from: "maxUnavailable: 1\n      maxSurge: 0",
        to: "maxUnavailable: 0\n      maxSurge: 1",
        expect: "stalls on a full GPU node group",
    },
    Mutation {
        what: "a PDB that disagrees with the GPU rollout",
        file: "k8s/base/gpu-worker.yaml",
        from: "spec:\n  maxUnavailable: 1\n",
        to: "spec:\n  maxUnavailable: 0\n",
        expect: "PodDisruptionBudget/gpu-worker: maxUnavailable 0 disagrees with the rollout's 1",
    },
    Mutation {
        what: "a ScaledObject without fallback",
        file: "k8s/base/gpu-worker.yaml",
        from: "  fallback:\n    failureThreshold: 3\n    replicas: 1\n    behavior: currentReplicasIfHigher\n",
        to: "",
        expect: "ScaledObject/gpu-worker: no fallback",
    },
    Mutation {
        what: "KEDA installed unpinned",
        file: "k8s/README.md",
        from: "--version 2.20.2 ",
        to: "",
        expect: "KEDA installed without an exact --version",
    },
    Mutation {
        what: "images under a mutable tag on EKS",
        file: "k8s/overlays/eks/kustomization.yaml",
        from: "newTag: \"0000000\"",
        to: "newTag: 0.1.0",
        expect: "has a mutable tag '0.1.0'",
    },
    Mutation {
        what: "kind loading the CUDA gpu-worker image",
        file: "k8s/overlays/kind/kustomization.yaml",
        from: "    newName: clothesline/gpu-worker-cpu\n",
        to: "",
        expect: "is not the locally built clothesline/gpu-worker-cpu",
    },
    Mutation {
        what: "the lag panel taking max over all NATS servers",
        file: "deploy/grafana/dashboards/clothesline.json",
        from: "is_consumer_leader=\\\"true\\\", ",
        to: "",
        expect: "consumer figures not from the consumer leader",
    },
    Mutation {
        what: "an alert missing",
        file: "k8s/overlays/eks/alerts.yaml",
        from: "alert: ClotheslineGpuTierAtZeroWithLag",
        to: "alert: ClotheslineGpuTierGone",
        expect: "no alert ClotheslineGpuTierAtZeroWithLag",
    },
    Mutation {
        what: "the guide's first request posting a URL that is no image",
        file: "k8s/README.md",
        from: "-H 'Content-Type: image/jpeg' --data-binary @examples/images/pants.jpg",
        to: "-d '{\"url\": \"https://example.com/pants.jpg\"}'",
        expect: "not an upload of an image in examples/images/",
    },
    Mutation {
        what: "the load balancer open until a later step",
        file: "k8s/overlays/eks/ingress.yaml",
        from: "  loadBalancerSourceRanges:\n    - 203.0.113.1/32\n",
        to: "",
        expect: "Service/ingress: a load balancer open to the internet",
    },
    Mutation {
        what: "teardown deleting the namespace before the PVCs",
        file: "k8s/README.md",
        from: "kubectl delete -k k8s/overlays/eks -l clothesline.io/stage=app --wait",
        to: "kubectl delete -k k8s/overlays/eks --wait",
        expect: "the teardown deletes the namespace",
    },
    Mutation {
        what: "compose exporting traces by default (#18)",
        file: "compose.yml",
        from: "OTEL_EXPORTER_OTLP_ENDPOINT: ${OTEL_EXPORTER_OTLP_ENDPOINT:-}",
        to: "OTEL_EXPORTER_OTLP_ENDPOINT: ${OTEL_EXPORTER_OTLP_ENDPOINT:-http://jaeger:4318}",
        expect: "exports traces by default",
    },
    Mutation {
        what: "the dashboard's traces link to a data source that is not provisioned (#18)",
        file: "deploy/grafana/provisioning/datasources/jaeger.yml",
        from: "uid: jaeger",
        to: "uid: traces",
        expect: "no dashboard link opens the provisioned trace data source",
    },
    Mutation {
        what: "no topology spread for the ingress",
        file: "k8s/base/ingress.yaml",
        from: "topologyKey: kubernetes.io/hostname",
        to: "topologyKey: topology.kubernetes.io/region",
        expect: "Deployment/ingress: no topologySpreadConstraints of its own pods over kubernetes.io/hostname",
    },
];

fn mutated_copy(m: &Mutation) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_deploy_files(dir.path());
    replace_in(&dir.path().join(m.file), m.from, m.to);
    dir
}

fn replace_in(path: &Path, from: &str, to: &str) {
    let before = std::fs::read_to_string(path).unwrap();
    assert!(before.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, before.replace(from, to)).unwrap();
}

#[test]
fn each_inconsistency_of_issue_19_fails_the_checks() {
    // The copy as it is passes: a failure below comes from the mutation.
    let clean = tempfile::tempdir().unwrap();
    copy_deploy_files(clean.path());
    let out = check_py_at(clean.path(), &["consistency"]);
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "unmutated copy:\n{report}");

    for m in MUTATIONS {
        let dir = mutated_copy(m);
        let out = check_py_at(dir.path(), &["consistency"]);
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            !out.status.success(),
            "{}: the checks pass:\n{report}",
            m.what
        );
        assert!(
            report.contains(m.expect),
            "{}: no {:?} in\n{report}",
            m.what,
            m.expect
        );
    }

    // And NATS unpinned in one place.
    let version = pinned_nats_version();
    let dir = tempfile::tempdir().unwrap();
    copy_deploy_files(dir.path());
    replace_in(
        &dir.path().join("k8s/base/nats/statefulset.yaml"),
        &format!("image: nats:{version}-alpine"),
        "image: nats:2-alpine",
    );
    let want = format!("scripts/deps.sh pins nats:{version}-alpine");
    assert_eq!(
        nats_pin_problems(dir.path()),
        [
            format!("k8s/overlays/kind runs \"nats:2-alpine\", {want}"),
            format!("k8s/overlays/eks runs \"nats:2-alpine\", {want}"),
        ]
    );
}
