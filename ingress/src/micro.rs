//! The NATS services API ("micro", `nats micro ls|info|stats`) for the one endpoint the ingress
//! serves. async-nats' `service` answers an error with an empty body, and callers of
//! `clothesline.classify` read the JSON error; answered as a success instead, an error never
//! reached the API's `num_errors`. So the endpoint is a plain queue subscription, its stats are
//! kept here ([`Endpoint::record`]: an answer carrying `Nats-Service-Error` is an error, as a
//! client reads it), and the discovery subjects (`$SRV.PING|INFO|STATS`, alone, with the
//! service's name, with its name and id) are answered with async-nats' own response types, so
//! the wire format is the library's.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::service::{self, NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE, endpoint};
use async_nats::{HeaderMap, Subscriber};
use futures::StreamExt;
use serde::Serialize;

/// The queue group of the endpoint: async-nats' and the other libraries' default.
const QUEUE_GROUP: &str = "q";

/// What the service says about itself.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub version: String,
    pub description: String,
    pub endpoint: String,
    pub subject: String,
}

/// A running service: answers discovery requests until dropped.
pub struct Service {
    discovery: tokio::task::JoinHandle<()>,
    endpoint: Endpoint,
}

/// The endpoint's counters, shared by the tasks answering its requests.
#[derive(Clone)]
pub struct Endpoint {
    stats: Arc<Mutex<endpoint::Stats>>,
}

impl Service {
    /// Subscribes to the discovery subjects and to the endpoint (queue group `q`); returns the
    /// service and the endpoint's requests.
    pub async fn start(
        client: &async_nats::Client,
        spec: Spec,
    ) -> Result<(Self, Subscriber), async_nats::Error> {
        let id = protocol::meta::new_request_id();
        let requests = client
            .queue_subscribe(spec.subject.clone(), QUEUE_GROUP.into())
            .await?;
        let endpoint = Endpoint {
            stats: Arc::new(Mutex::new(endpoint::Stats {
                name: spec.endpoint.clone(),
                subject: spec.subject.clone(),
                queue_group: QUEUE_GROUP.into(),
                ..Default::default()
            })),
        };
        let answers = Answers {
            spec,
            id,
            started: async_nats::datetime::now(),
            endpoint: endpoint.clone(),
        };
        let mut verbs = Vec::new();
        for verb in Verb::ALL {
            for subject in answers.subjects(verb) {
                let sub = client.subscribe(subject).await?;
                verbs.push(sub.map(move |msg| (verb, msg)).boxed());
            }
        }
        let mut verbs = futures::stream::select_all(verbs);
        let client = client.clone();
        let discovery = tokio::spawn(async move {
            while let Some((verb, msg)) = verbs.next().await {
                let Some(reply) = msg.reply else { continue };
                if let Err(e) = client.publish(reply, answers.answer(verb).into()).await {
                    tracing::debug!(error = %e, "cannot answer a services API request");
                }
            }
        });
        Ok((
            Self {
                discovery,
                endpoint: endpoint.clone(),
            },
            requests,
        ))
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.discovery.abort();
    }
}

impl Endpoint {
    /// Counts one answered request that took `took`; an error when its headers carry
    /// `Nats-Service-Error` (its status) and `Nats-Service-Error-Code`.
    pub fn record(&self, took: Duration, headers: &HeaderMap) {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        s.requests += 1;
        s.processing_time += took;
        s.average_processing_time = s.processing_time / s.requests.max(1) as u32;
        if let Some(status) = headers.get(NATS_SERVICE_ERROR) {
            s.errors += 1;
            s.last_error = Some(service::error::Error {
                status: status.to_string(),
                code: headers
                    .get(NATS_SERVICE_ERROR_CODE)
                    .and_then(|c| c.as_str().parse().ok())
                    .unwrap_or(500),
            });
        }
    }

    fn snapshot(&self) -> endpoint::Stats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    const ALL: [Verb; 3] = [Verb::Ping, Verb::Info, Verb::Stats];

    fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }
}

/// What the discovery subjects are answered with.
struct Answers {
    spec: Spec,
    id: String,
    started: async_nats::datetime::DateTime,
    endpoint: Endpoint,
}

impl Answers {
    /// `$SRV.<VERB>`, `$SRV.<VERB>.<name>`, `$SRV.<VERB>.<name>.<id>`.
    fn subjects(&self, verb: Verb) -> [String; 3] {
        let all = format!("$SRV.{}", verb.as_str());
        let named = format!("{all}.{}", self.spec.name);
        let this = format!("{named}.{}", self.id);
        [all, named, this]
    }

    fn answer(&self, verb: Verb) -> Vec<u8> {
        let (name, id, version) = (
            self.spec.name.clone(),
            self.id.clone(),
            self.spec.version.clone(),
        );
        match verb {
            Verb::Ping => json(&service::PingResponse {
                kind: "io.nats.micro.v1.ping_response".into(),
                name,
                id,
                version,
                metadata: Default::default(),
            }),
            Verb::Info => json(&service::Info {
                kind: "io.nats.micro.v1.info_response".into(),
                name,
                id,
                description: self.spec.description.clone(),
                version,
                metadata: Default::default(),
                endpoints: vec![endpoint::Info {
                    name: self.spec.endpoint.clone(),
                    subject: self.spec.subject.clone(),
                    queue_group: QUEUE_GROUP.into(),
                    metadata: Default::default(),
                }],
            }),
            Verb::Stats => json(&service::Stats {
                kind: "io.nats.micro.v1.stats_response".into(),
                name,
                id,
                version,
                started: self.started,
                endpoints: vec![self.endpoint.snapshot()],
            }),
        }
    }
}

fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Answers {
        Answers {
            spec: Spec {
                name: "svc".into(),
                version: "1.2.3".into(),
                description: "d".into(),
                endpoint: "classify".into(),
                subject: "x.classify".into(),
            },
            id: "ID1".into(),
            started: async_nats::datetime::now(),
            endpoint: Endpoint {
                stats: Arc::default(),
            },
        }
    }

    fn stats(a: &Answers) -> serde_json::Value {
        serde_json::from_slice(&a.answer(Verb::Stats)).unwrap()
    }

    #[test]
    fn answers_with_error_headers_count_as_errors() {
        let a = answers();
        a.endpoint
            .record(Duration::from_millis(4), &HeaderMap::new());
        assert_eq!(stats(&a)["endpoints"][0]["num_errors"], 0);
        let mut failed = HeaderMap::new();
        failed.insert(NATS_SERVICE_ERROR, "missing field url");
        failed.insert(NATS_SERVICE_ERROR_CODE, "400");
        a.endpoint.record(Duration::from_millis(2), &failed);
        let s = stats(&a);
        assert_eq!(s["type"], "io.nats.micro.v1.stats_response");
        let e = &s["endpoints"][0];
        assert_eq!(
            (e["num_requests"].as_u64(), e["num_errors"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(e["last_error"], "400:missing field url");
        assert_eq!(e["processing_time"], 6_000_000);
        assert_eq!(e["average_processing_time"], 3_000_000);
    }

    #[test]
    fn discovery_names_the_service_and_its_endpoint() {
        let a = answers();
        assert_eq!(
            a.subjects(Verb::Info),
            ["$SRV.INFO", "$SRV.INFO.svc", "$SRV.INFO.svc.ID1"]
        );
        let info: serde_json::Value = serde_json::from_slice(&a.answer(Verb::Info)).unwrap();
        assert_eq!(info["type"], "io.nats.micro.v1.info_response");
        assert_eq!(info["endpoints"][0]["subject"], "x.classify");
        assert_eq!(info["endpoints"][0]["queue_group"], "q");
        let ping: serde_json::Value = serde_json::from_slice(&a.answer(Verb::Ping)).unwrap();
        assert_eq!(
            (ping["name"].as_str(), ping["id"].as_str()),
            (Some("svc"), Some("ID1"))
        );
    }
}
