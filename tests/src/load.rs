//! A steady open-loop load through the ingress, for fault tests and the chaos run: one request
//! every 1/rate s, each on its own task, whatever the answers do, until stopped; then every
//! request's outcome (its status, `0` when no answer came within the timeout, and the error
//! code of an error answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What each request carries.
#[derive(Debug, Clone)]
pub enum Body {
    /// The image bytes (`image/jpeg`), to `/v1/classify`.
    Upload(Vec<u8>),
    /// `{"url": ...}`, each request the next URL of the list, to `/predict` or `/v1/classify`.
    Urls(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The endpoint, e.g. `http://127.0.0.1:8080/predict`.
    pub url: String,
    pub body: Body,
    /// Requests per second.
    pub rate: f64,
    /// The deadline each request asks for (`X-Request-Timeout-Ms`).
    pub deadline: Duration,
    /// How long a caller waits for an answer before counting the request as lost.
    pub timeout: Duration,
}

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    /// Its HTTP status; 0: no answer within the timeout (or the connection failed).
    pub status: u16,
    /// The `error.code` of an error answer.
    pub code: Option<String>,
    pub latency: Duration,
}

pub struct Load {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<Outcome>>,
}

impl Load {
    /// Starts sending at once.
    pub fn start(spec: LoadSpec) -> Self {
        let http = reqwest::Client::builder()
            .timeout(spec.timeout)
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.01));
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut requests = Vec::new();
            let mut n = 0usize;
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let request = send(&http, &spec, n, started);
                requests.push(tokio::spawn(request));
                n += 1;
            }
            let mut outcomes = Vec::with_capacity(requests.len());
            for r in requests {
                if let Ok(outcome) = r.await {
                    outcomes.push(outcome);
                }
            }
            outcomes
        });
        Self {
            started,
            stop,
            handle,
        }
    }

    /// Seconds since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops sending, waits for every request's answer (or its timeout) and returns the
    /// outcomes in the order sent.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
}

/// The `n`th request of the load.
fn send(
    http: &reqwest::Client,
    spec: &LoadSpec,
    n: usize,
    started: Instant,
) -> impl Future<Output = Outcome> + use<> {
    let request = http.post(&spec.url).header(
        "x-request-timeout-ms",
        spec.deadline.as_millis().to_string(),
    );
    let request = match &spec.body {
        Body::Upload(image) => request
            .header("content-type", "image/jpeg")
            .body(image.clone()),
        Body::Urls(urls) => {
            let url = urls.get(n % urls.len().max(1)).cloned().unwrap_or_default();
            request.json(&serde_json::json!({ "url": url }))
        }
    };
    async move {
        let sent = Instant::now();
        let (status, code) = match request.send().await {
            Ok(res) if res.status().is_success() => {
                let status = res.status().as_u16();
                match res.bytes().await {
                    Ok(_) => (status, None),
                    Err(_) => (0, None),
                }
            }
            Ok(res) => {
                let status = res.status().as_u16();
                let body: serde_json::Value = res.json().await.unwrap_or_default();
                let code = body["error"]["code"].as_str().map(String::from);
                (status, code)
            }
            Err(_) => (0, None),
        };
        Outcome {
            sent: sent - started,
            status,
            code,
            latency: sent.elapsed(),
        }
    }
}
