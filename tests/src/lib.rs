//! Test harness for the integration suite: a real nats-server with JetStream on a free port
//! ([`nats::NatsServer`]), an OTLP trace receiver ([`otlp::OtlpReceiver`]), a folder of images served on 127.0.0.1 ([`files::FileServer`]), and the
//! three tiers as real processes ([`stack::Stack`]). Everything is killed on drop.
#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod examples;
pub mod files;
pub mod keda;
pub mod load;
pub mod nats;
pub mod origin;
pub mod otlp;
pub mod paths;
pub mod roles;
pub mod scan_bomb;
pub mod stack;
pub mod tier;
pub mod worker;

/// A free TCP port on 127.0.0.1, never one this process handed out before: the port is bound
/// then released, and the OS may hand the same one out again at once (a stack once got one port
/// for two tiers), so the ports given out are remembered and skipped.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
/// This waits for a condition (a server answering), it does not sleep in place of one.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
