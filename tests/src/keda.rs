//! The queue depth KEDA's `nats-jetstream` scaler reads from a nats-server's monitoring endpoint
//! (`/jsz?acc=<account>&consumers=true&config=true`): the account, then the stream, then the
//! consumer by name; its lag is `num_pending + num_ack_pending`.

use serde_json::Value;

/// The consumer's entry in a `/jsz` report, found as the scaler finds it.
pub fn consumer_detail<'a>(
    jsz: &'a Value,
    account: &str,
    stream: &str,
    consumer: &str,
) -> Option<&'a Value> {
    let account = jsz["account_details"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == account)?;
    let stream = account["stream_detail"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stream)?;
    stream["consumer_detail"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == consumer)
}

/// The lag the scaler computes from a consumer's entry.
pub fn lag(consumer: &Value) -> Option<u64> {
    Some(consumer["num_pending"].as_u64()? + consumer["num_ack_pending"].as_u64()?)
}
