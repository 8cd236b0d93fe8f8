//! Sending one request: bodies are built once per image up front, so a request costs a cheap
//! `Bytes` clone; one HTTP client with a connection pool, one NATS connection.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use protocol::names::HEADER_ERROR;
// The deadline a caller asks the ingress for, over HTTP and over NATS.
use protocol::names::HEADER_TIMEOUT_MS as NATS_HEADER_TIMEOUT_MS;
use protocol::names::http::HEADER_TIMEOUT_MS as HTTP_HEADER_TIMEOUT_MS;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use crate::answer;
use crate::cli::{RunArgs, TargetKind};
use crate::images::{ImageServer, ImageSet};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// An HTTP answer with this status.
    Http(u16),
    /// A NATS reply; `error` when it carries a `Clothesline-Error` header.
    Nats { error: bool },
    /// No answer within `--timeout`.
    Timeout,
    /// Could not connect.
    Connect,
    /// NATS: nobody listens on the subject.
    NoResponders,
    /// Any other transport failure.
    Transport,
}

impl Status {
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Http(200..=299) | Self::Nats { error: false })
    }

    /// The name in reports: `200`, `nats_ok`, `timeout`, ...
    pub fn key(self) -> String {
        match self {
            Self::Http(code) => code.to_string(),
            Self::Nats { error: false } => "nats_ok".into(),
            Self::Nats { error: true } => "nats_error".into(),
            Self::Timeout => "timeout".into(),
            Self::Connect => "connect_error".into(),
            Self::NoResponders => "no_responders".into(),
            Self::Transport => "transport_error".into(),
        }
    }
}

/// What the recorder keeps of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    /// The stable error code of an error answer.
    pub error_code: Option<String>,
    /// The predicted class (index in the image set's classes), when asked for and readable.
    pub predicted: Option<usize>,
    /// A successful answer whose label could not be read, or is not one of the classes.
    pub unreadable: bool,
    /// The answer's `timings`, when asked for (`--timings`) and the answer is a success.
    pub timings: Option<answer::Timings>,
}

impl Outcome {
    fn failed(status: Status) -> Self {
        Self {
            status,
            error_code: None,
            predicted: None,
            unreadable: false,
            timings: None,
        }
    }

    /// Reads an answer's body: the error code of a failure, the label of a success when the
    /// image's class is known (`classes` non-empty and `want_label`).
    pub fn from_body(
        status: Status,
        body: &[u8],
        flat_scores: bool,
        want_label: bool,
        classes: &[String],
    ) -> Self {
        let mut outcome = Self::failed(status);
        if !status.is_ok() {
            outcome.error_code = answer::error_code(body);
        } else if want_label {
            outcome.predicted = answer::predicted_label(body, flat_scores)
                .and_then(|label| classes.iter().position(|c| c == label));
            outcome.unreadable = outcome.predicted.is_none();
        }
        outcome
    }
}

/// One prepared request per image.
struct Prepared {
    body: Bytes,
    content_type: HeaderValue,
    want_label: bool,
}

enum Transport {
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
    },
    Nats {
        client: async_nats::Client,
        subject: async_nats::Subject,
    },
}

pub struct Target {
    kind: TargetKind,
    transport: Transport,
    requests: Vec<Prepared>,
    classes: Vec<String>,
    /// The deadline asked for, in ms, as a header value.
    deadline_ms: Option<String>,
    /// Read each successful answer's `timings`.
    timings: bool,
}

impl Target {
    pub async fn new(
        args: &RunArgs,
        set: &ImageSet,
        server: Option<&ImageServer>,
    ) -> anyhow::Result<Self> {
        let mut requests = Vec::with_capacity(set.images.len());
        for image in &set.images {
            let (body, content_type) = match server {
                Some(server) => {
                    let json = serde_json::json!({ "url": server.url(image) });
                    (Bytes::from(json.to_string()), "application/json")
                }
                None => (image.bytes.clone(), image.content_type),
            };
            requests.push(Prepared {
                body,
                content_type: HeaderValue::from_static(content_type),
                want_label: image.class.is_some(),
            });
        }
        let transport = match args.target {
            TargetKind::Predict | TargetKind::Classify => Transport::Http {
                client: http_client(args.timeout)?,
                url: args.endpoint().parse().context("--ingress is not a URL")?,
            },
            TargetKind::Nats => Transport::Nats {
                client: match (&args.nats_user, &args.nats_password) {
                    (Some(user), Some(password)) => {
                        async_nats::ConnectOptions::with_user_and_password(
                            user.clone(),
                            password.clone(),
                        )
                    }
                    _ => async_nats::ConnectOptions::new(),
                }
                .request_timeout(Some(args.timeout))
                .connect(args.nats_url.as_str())
                .await
                .with_context(|| format!("connect to NATS at {}", args.nats_url))?,
                subject: args.subject.clone().into(),
            },
        };
        Ok(Self {
            kind: args.target,
            transport,
            requests,
            classes: set.classes.clone(),
            deadline_ms: args.deadline.map(|d| d.as_millis().max(1).to_string()),
            timings: args.timings,
        })
    }

    /// Sends the request of image `image` and reads its answer.
    pub async fn send(&self, image: usize) -> Outcome {
        let (mut outcome, body) = self.exchange(image).await;
        if self.timings && outcome.status.is_ok() {
            outcome.timings = answer::Timings::of(&body);
        }
        outcome
    }

    /// One request and its answer's outcome and body (empty when there was none).
    async fn exchange(&self, image: usize) -> (Outcome, Bytes) {
        let req = &self.requests[image];
        let flat = self.kind == TargetKind::Predict;
        match &self.transport {
            Transport::Http { client, url } => {
                let mut request = client
                    .post(url.clone())
                    .header(CONTENT_TYPE, req.content_type.clone());
                if let Some(ms) = &self.deadline_ms {
                    request = request.header(HTTP_HEADER_TIMEOUT_MS, ms.as_str());
                }
                let sent = request.body(req.body.clone()).send().await;
                let response = match sent {
                    Ok(r) => r,
                    Err(e) => return (Outcome::failed(http_failure(&e)), Bytes::new()),
                };
                let status = Status::Http(response.status().as_u16());
                match response.bytes().await {
                    Ok(body) => (
                        Outcome::from_body(status, &body, flat, req.want_label, &self.classes),
                        body,
                    ),
                    Err(e) => (Outcome::failed(http_failure(&e)), Bytes::new()),
                }
            }
            Transport::Nats { client, subject } => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Content-Type",
                    req.content_type.to_str().unwrap_or("application/json"),
                );
                if let Some(ms) = &self.deadline_ms {
                    headers.insert(NATS_HEADER_TIMEOUT_MS, ms.as_str());
                }
                let reply = client
                    .request_with_headers(subject.clone(), headers, req.body.clone())
                    .await;
                match reply {
                    Ok(msg) => {
                        let error = msg.headers.as_ref().and_then(|h| h.get(HEADER_ERROR));
                        let status = Status::Nats {
                            error: error.is_some(),
                        };
                        let mut outcome = Outcome::from_body(
                            status,
                            &msg.payload,
                            false,
                            req.want_label,
                            &self.classes,
                        );
                        if outcome.error_code.is_none() {
                            outcome.error_code = error.map(|v| v.as_str().to_string());
                        }
                        (outcome, msg.payload)
                    }
                    Err(e) => (
                        Outcome::failed(match e.kind() {
                            async_nats::RequestErrorKind::TimedOut => Status::Timeout,
                            async_nats::RequestErrorKind::NoResponders => Status::NoResponders,
                            _ => Status::Transport,
                        }),
                        Bytes::new(),
                    ),
                }
            }
        }
    }
}

fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .no_proxy()
        .build()?)
}

fn http_failure(e: &reqwest::Error) -> Status {
    if e.is_timeout() {
        Status::Timeout
    } else if e.is_connect() {
        Status::Connect
    } else {
        Status::Transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["hat", "pants"].map(String::from).to_vec()
    }

    #[test]
    fn statuses() {
        assert!(Status::Http(200).is_ok());
        assert!(!Status::Http(429).is_ok());
        assert!(Status::Nats { error: false }.is_ok());
        assert!(!Status::Nats { error: true }.is_ok());
        assert_eq!(Status::Http(503).key(), "503");
        assert_eq!(Status::NoResponders.key(), "no_responders");
    }

    #[test]
    fn reads_labels_and_error_codes() {
        let ok = Outcome::from_body(
            Status::Http(200),
            br#"{"hat": 1, "pants": 2}"#,
            true,
            true,
            &classes(),
        );
        assert_eq!((ok.predicted, ok.unreadable), (Some(1), false));
        let unknown = Outcome::from_body(
            Status::Http(200),
            br#"{"top": [{"label": "sock"}]}"#,
            false,
            true,
            &classes(),
        );
        assert_eq!((unknown.predicted, unknown.unreadable), (None, true));
        let not_asked = Outcome::from_body(Status::Http(200), b"{}", true, false, &classes());
        assert!(!not_asked.unreadable);
        let err = Outcome::from_body(
            Status::Http(429),
            br#"{"error": {"code": "overloaded", "message": "m"}}"#,
            true,
            true,
            &classes(),
        );
        assert_eq!(err.error_code.as_deref(), Some("overloaded"));
        assert_eq!(err.predicted, None);
    }
}
