//! A real 3-node NATS cluster on loopback, as deployed (routes between the nodes, JetStream on
//! each, streams provisioned with 3 replicas): each node its own process, ports and store, killed
//! on drop. Nodes can be SIGKILLed and started again, or restarted through lame-duck mode as the
//! StatefulSet's preStop hook does; the leaders of streams and consumers can be looked up, so a
//! test can kill exactly the node that holds one.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use protocol::names::{GPU_WORKER_CONSUMER, REQUESTS_STREAM, TENSORS_STREAM};

use crate::{free_port, paths, wait_until};

/// The cluster's name in every node's config.
const CLUSTER_NAME: &str = "clothesline-test";
/// How long a node in lame-duck mode spreads the closing of its clients over: the server's
/// minimum (the deployed servers use 30 s too, k8s/base/nats), so a rolling restart of three
/// nodes takes a minute and a half.
const LAME_DUCK_DURATION: &str = "30s";
/// How long a stopping node waits for its lame-duck exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One node: its ports, its store, and its process while it runs.
pub struct Node {
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    pub cluster_port: u16,
    store: tempfile::TempDir,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The node's monitoring endpoint `path` (e.g. `/jsz?consumers=true`).
    pub fn monitor_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.monitor_port, path)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file (in its store folder, or the folder the cluster was given).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.log.clone()
    }

    /// Its store folder.
    pub fn store_path(&self) -> &std::path::Path {
        self.store.path()
    }
}

pub struct NatsCluster {
    pub nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other and waits until JetStream has a meta leader
    /// that every node knows.
    pub async fn start(size: usize) -> Self {
        Self::start_logged(size, None).await
    }

    /// [`Self::start`], each node logging to `<log_dir>/nats-<name>.log` when given (kept).
    pub async fn start_logged(size: usize, log_dir: Option<&std::path::Path>) -> Self {
        let nodes = (0..size)
            .map(|i| {
                let (name, store) = (format!("n{i}"), tempfile::tempdir().unwrap());
                let log = match log_dir {
                    Some(dir) => dir.join(format!("nats-{name}.log")),
                    None => store.path().join("nats.log"),
                };
                Node {
                    name,
                    port: free_port(),
                    monitor_port: free_port(),
                    cluster_port: free_port(),
                    store,
                    log,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i).await;
        }
        cluster.wait_meta_leader().await;
        cluster
    }

    /// Every node's client URL, comma separated: what the tiers get as `--nats-url`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that may connect to any node.
    pub async fn client(&self) -> async_nats::Client {
        let addrs = tierkit::runtime::parse_server_addrs(&self.urls()).unwrap();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await
            .unwrap()
    }

    /// The index of the node called `name` (as stream and consumer infos name their leaders).
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node called {name}"))
    }

    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats-route://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "server_name: {name}\n\
             listen: 127.0.0.1:{port}\n\
             http: 127.0.0.1:{monitor}\n\
             max_payload: 8MB\n\
             lame_duck_duration: \"{ldm}\"\n\
             lame_duck_grace_period: \"1s\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{cport}\n  routes: [{routes}]\n}}\n",
            name = node.name,
            port = node.port,
            monitor = node.monitor_port,
            ldm = LAME_DUCK_DURATION,
            store = node.store.path().join("js").display(),
            cluster = CLUSTER_NAME,
            cport = node.cluster_port,
        )
    }

    fn spawn(&mut self, i: usize) {
        let conf = self.nodes[i].store.path().join("nats.conf");
        std::fs::write(&conf, self.config(i)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nodes[i].log_path())
            .unwrap();
        let child = Command::new(paths::nats_server())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start nats-server");
        self.nodes[i].child = Some(child);
    }

    async fn wait_healthy(&self, i: usize) {
        let url = self.nodes[i].monitor_url("/healthz");
        wait_until(
            &format!("node {} to be healthy", self.nodes[i].name),
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    reqwest::get(&url)
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Waits until every running node names the same JetStream meta leader.
    async fn wait_meta_leader(&self) {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.monitor_url("/jsz"))
            .collect();
        wait_until("a JetStream meta leader", Duration::from_secs(60), || {
            let urls = urls.clone();
            async move {
                let mut leaders = Vec::new();
                for url in &urls {
                    let jsz: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
                    leaders.push(jsz["meta_cluster"]["leader"].as_str()?.to_string());
                }
                leaders.dedup();
                (leaders.len() == 1 && !leaders[0].is_empty()).then_some(())
            }
        })
        .await;
    }

    /// SIGTERMs every node and waits for each to exit, at most `within` (SIGKILLed past that);
    /// returns whether all exited by themselves.
    pub async fn stop(&mut self, within: Duration) -> bool {
        let mut children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .collect();
        for c in &children {
            crate::tier::sigterm(c);
        }
        let mut clean = true;
        for c in &mut children {
            clean &= crate::nats::exit_within(c, within).await;
        }
        clean
    }

    /// SIGKILLs node `i`, as a crash or a lost machine would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it is healthy and knows the
    /// meta leader.
    pub async fn start_again(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
        self.wait_healthy(i).await;
        self.wait_meta_leader().await;
    }

    /// Stops node `i` through lame-duck mode (SIGUSR2, what `nats-server --signal ldm` sends and
    /// the StatefulSet's preStop hook runs): the node stops accepting clients, moves its leaders
    /// away and closes its clients over the lame-duck duration, then exits. Waits for the exit.
    pub async fn stop_lame_duck(&mut self, i: usize) {
        let Some(mut child) = self.nodes[i].child.take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-USR2", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -USR2 failed");
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {i} did not leave lame-duck mode within {STOP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server name of the leader of `stream`.
    pub async fn stream_leader(&self, js: &jetstream::Context, stream: &str) -> String {
        let mut stream = js.get_stream(stream).await.unwrap();
        let info = stream.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_else(|| panic!("stream {} has no leader", info.config.name))
    }

    /// The server name of the leader of `consumer` on `stream`.
    pub async fn consumer_leader(
        &self,
        js: &jetstream::Context,
        stream: &str,
        consumer: &str,
    ) -> String {
        let stream = js.get_stream(stream).await.unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(consumer).await.unwrap();
        let info = c.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_else(|| panic!("consumer {consumer} has no leader"))
    }
}

/// The faults of a cluster in production, one after the other, each waited out: the node
/// holding the requests stream's leader is SIGKILLed and started again, then the tensors stream's
/// leader's, then the gpu-worker consumer's leader's; then every node is restarted in turn
/// through lame-duck mode, as the StatefulSet's rolling update does. After each, every replica of
/// both streams is current again. `event` is told what happens, as it happens.
pub async fn leader_kills_and_rolling_restart(
    cluster: &mut NatsCluster,
    js: &jetstream::Context,
    event: &mut dyn FnMut(String),
) {
    for stream in [REQUESTS_STREAM, TENSORS_STREAM] {
        let leader = cluster.stream_leader(js, stream).await;
        let node = cluster.index_of(&leader);
        event(format!("SIGKILL {leader}, leader of {stream}"));
        cluster.kill(node);
        let new = wait_new_stream_leader(cluster, js, stream, &leader).await;
        event(format!("{stream} elected {new}; start {leader} again"));
        cluster.start_again(node).await;
        wait_all_whole(js).await;
        event(format!("{leader} back, every replica current"));
    }
    let leader = cluster
        .consumer_leader(js, TENSORS_STREAM, GPU_WORKER_CONSUMER)
        .await;
    let node = cluster.index_of(&leader);
    event(format!(
        "SIGKILL {leader}, leader of consumer {GPU_WORKER_CONSUMER}"
    ));
    cluster.kill(node);
    cluster.start_again(node).await;
    wait_all_whole(js).await;
    event(format!("{leader} back, every replica current"));
    for node in 0..cluster.nodes.len() {
        let name = cluster.nodes[node].name.clone();
        event(format!("lame-duck restart of {name}"));
        cluster.stop_lame_duck(node).await;
        cluster.start_again(node).await;
        wait_all_whole(js).await;
        event(format!("{name} back, every replica current"));
    }
}

/// Waits until `stream` has a leader other than `old` (after its leader's node went away).
pub async fn wait_new_stream_leader(
    cluster: &NatsCluster,
    js: &jetstream::Context,
    stream: &str,
    old: &str,
) -> String {
    wait_until(
        &format!("a new leader of {stream}"),
        Duration::from_secs(60),
        || async {
            let mut s = js.get_stream(stream).await.ok()?;
            let info = s.info().await.ok()?;
            let leader = info.cluster.clone()?.leader?;
            (leader != old).then_some(leader)
        },
    )
    .await;
    cluster.stream_leader(js, stream).await
}

/// Waits until every replica of `stream` is current again (a restarted node caught up).
pub async fn wait_stream_whole(js: &jetstream::Context, stream: &str) {
    wait_until(
        &format!("every replica of {stream} to be current"),
        Duration::from_secs(60),
        || async {
            let mut s = js.get_stream(stream).await.ok()?;
            let cluster = s.info().await.ok()?.cluster.clone()?;
            (cluster.leader.is_some()
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current && !r.offline))
            .then_some(())
        },
    )
    .await;
}

/// [`wait_stream_whole`] for both streams.
pub async fn wait_all_whole(js: &jetstream::Context) {
    for stream in [REQUESTS_STREAM, TENSORS_STREAM] {
        wait_stream_whole(js, stream).await;
    }
}

impl Drop for NatsCluster {
    /// Kills every node; when a test failed, prints the end of each node's log.
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if !std::thread::panicking() {
            return;
        }
        for node in &self.nodes {
            let text = std::fs::read_to_string(node.log_path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "--- nats {} log (last {} lines) ---\n{}",
                node.name,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}
