//! The two ways in: `POST /v1/classify` on the ingress, or a request to the NATS service
//! `clothesline.classify` (same JSON answer; errors carry the `Clothesline-Error` header).

use std::time::Duration;

use bytes::Bytes;
use protocol::names::{HEADER_CONTENT_TYPE, HEADER_ERROR, SERVICE_SUBJECT};
use serde_json::Value;
use tierkit::runtime::NatsArgs;

use crate::answer::Failure;
use crate::input::Input;

pub enum Transport {
    Http {
        client: reqwest::Client,
        endpoint: String,
    },
    Nats {
        client: async_nats::Client,
        timeout: Duration,
    },
}

impl Transport {
    pub fn http(base: &str, timeout: Duration, top_k: u16) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        let endpoint = format!("{}/v1/classify?top_k={top_k}", base.trim_end_matches('/'));
        Ok(Self::Http { client, endpoint })
    }

    /// Connects once, failing at once when no server answers (no retry in the background, unlike
    /// the tiers: a command should say so and exit).
    pub async fn nats(args: &NatsArgs, timeout: Duration) -> anyhow::Result<Self> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("clothesline-client")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .custom_inbox_prefix(&args.inbox_prefix);
        if let Some(creds) = &args.creds {
            opts = opts.credentials_file(creds).await?;
        }
        if let (Some(user), Some(password)) = (&args.user, &args.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        let client = opts
            .connect(args.server_addrs()?)
            .await
            .map_err(|e| anyhow::anyhow!("unreachable: NATS at {}: {e}", args.url))?;
        Ok(Self::Nats { client, timeout })
    }

    pub async fn classify(&self, input: &Input) -> Result<Value, Failure> {
        let (body, content_type) = input.body();
        match self {
            Self::Http { client, endpoint } => http(client, endpoint, body, content_type).await,
            Self::Nats { client, timeout } => nats(client, *timeout, body, content_type).await,
        }
    }
}

async fn http(
    client: &reqwest::Client,
    endpoint: &str,
    body: Bytes,
    content_type: &str,
) -> Result<Value, Failure> {
    let res = client
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_failure(&e, endpoint))?;
    let status = res.status();
    let bytes = res
        .bytes()
        .await
        .map_err(|e| transport_failure(&e, endpoint))?;
    if !status.is_success() {
        return Err(Failure::from_body(&bytes).unwrap_or_else(|| {
            Failure::new(
                &format!("http_{}", status.as_u16()),
                format!("{endpoint} answered {status}"),
            )
        }));
    }
    parse(&bytes)
}

fn transport_failure(e: &reqwest::Error, endpoint: &str) -> Failure {
    if e.is_timeout() {
        Failure::new("timeout", format!("no answer from {endpoint} in time"))
    } else {
        Failure::new("unreachable", format!("{endpoint}: {e}"))
    }
}

async fn nats(
    client: &async_nats::Client,
    timeout: Duration,
    body: Bytes,
    content_type: &str,
) -> Result<Value, Failure> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_CONTENT_TYPE, content_type);
    let request = client.request_with_headers(SERVICE_SUBJECT, headers, body);
    let msg = match tokio::time::timeout(timeout, request).await {
        Err(_) => {
            return Err(Failure::new(
                "timeout",
                format!("no answer on {SERVICE_SUBJECT} in time"),
            ));
        }
        Ok(Err(e)) => {
            let code = match e.kind() {
                async_nats::RequestErrorKind::TimedOut => "timeout",
                async_nats::RequestErrorKind::NoResponders => "unavailable",
                async_nats::RequestErrorKind::MaxPayloadExceeded => "too_large",
                _ => "unreachable",
            };
            return Err(Failure::new(code, format!("{SERVICE_SUBJECT}: {e}")));
        }
        Ok(Ok(msg)) => msg,
    };
    let error = msg.headers.as_ref().and_then(|h| h.get(HEADER_ERROR));
    if let Some(code) = error {
        return Err(Failure::from_body(&msg.payload)
            .unwrap_or_else(|| Failure::new(code.as_str(), "error without a body")));
    }
    parse(&msg.payload)
}

fn parse(bytes: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(bytes).map_err(|e| {
        Failure::new(
            "bad_answer",
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        )
    })
}
