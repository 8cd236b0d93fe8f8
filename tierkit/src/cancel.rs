//! The subscription that fills a tier's [`CancelSet`] from `clothesline.cancel` (the set itself,
//! bounded and without I/O, is [`protocol::cancel`]).

use futures::StreamExt;

use protocol::cancel::{CancelSet, DEFAULT_CAPACITY};
use protocol::names::CANCEL_SUBJECT;

/// Subscribes to `clothesline.cancel` and fills the set until the subscription ends (the
/// client reconnects and resubscribes by itself). `received` counts each id taken in; the
/// subscription is registered with the server (flushed) before this returns, so a
/// cancellation published after it is seen.
pub async fn listen(
    set: &CancelSet,
    client: &async_nats::Client,
    received: prometheus::IntCounter,
) -> anyhow::Result<Listener> {
    let mut sub = client.subscribe(CANCEL_SUBJECT).await?;
    client.flush().await?;
    let set = set.clone();
    Ok(Listener(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            match std::str::from_utf8(&msg.payload) {
                Ok(id) if protocol::meta::valid_request_id(id) => {
                    set.insert(id);
                    received.inc();
                }
                _ => tracing::debug!("ignored a malformed cancellation"),
            }
        }
    })))
}

/// The task filling a [`CancelSet`]; dropping it ends the subscription.
#[derive(Debug)]
pub struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A worker tier's cancellations: when `enabled`, a set of [`DEFAULT_CAPACITY`] ids filled from
/// `clothesline.cancel` (subscribed before this returns) and the listener to keep alive with it;
/// `None` when the tier ignores cancellations.
pub async fn subscribe_if(
    enabled: bool,
    client: &async_nats::Client,
    received: prometheus::IntCounter,
) -> anyhow::Result<Option<(CancelSet, Listener)>> {
    if !enabled {
        return Ok(None);
    }
    let set = CancelSet::new(DEFAULT_CAPACITY);
    let listener = listen(&set, client, received).await?;
    Ok(Some((set, listener)))
}
