//! The HTTP API: `POST /predict` (the classic gateway's flat `{class: score}` answer),
//! `POST /v1/classify` (URL, raw image body or multipart upload; top-k, probabilities, timings),
//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use protocol::names::CONTENT_TYPE_JSON;
use protocol::{ClassifyRequest, ErrorCode, ModelRef, Prediction, Timings};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::backend::{Backend, Job};
use crate::error::AppError;
use crate::metrics::Metrics;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
    pub inflight: Arc<Semaphore>,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_body_bytes: usize,
}

/// Header a caller may set to ask for a shorter deadline than the default.
pub const HEADER_TIMEOUT_MS: &str = "x-request-timeout-ms";
/// Request id header, accepted from the caller (if sane) and always returned.
pub const HEADER_REQUEST_ID: &str = "x-request-id";

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/v1/classify", post(classify))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.backend.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        protocol::runtime::metrics_text(&s.metrics.registry),
    )
        .into_response()
}

/// Per-request bookkeeping: id, deadline, in-flight permit, metrics on the way out.
struct Call {
    route: &'static str,
    request_id: String,
    timeout: Duration,
    traceparent: Option<String>,
    started: Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Call {
    fn begin(state: &AppState, route: &'static str, headers: &HeaderMap) -> Result<Self, AppError> {
        let request_id = headers
            .get(HEADER_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| valid_request_id(id))
            .map(str::to_string)
            .unwrap_or_else(protocol::meta::new_request_id);
        let timeout = match headers.get(HEADER_TIMEOUT_MS) {
            None => state.default_timeout,
            Some(v) => {
                let ms = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        AppError::new(
                            ErrorCode::BadRequest,
                            format!("{HEADER_TIMEOUT_MS} must be a positive integer"),
                        )
                    })?;
                Duration::from_millis(ms).min(state.max_timeout)
            }
        };
        let permit = state.inflight.clone().try_acquire_owned().map_err(|_| {
            AppError::new(
                ErrorCode::Overloaded,
                "too many requests in flight on this instance; retry later",
            )
        })?;
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        state.metrics.inflight.inc();
        Ok(Self {
            route,
            request_id,
            timeout,
            traceparent,
            started: Instant::now(),
            _permit: permit,
        })
    }

    fn job(&self, content_type: &str, payload: Bytes) -> Job {
        Job {
            request_id: self.request_id.clone(),
            content_type: content_type.to_string(),
            payload,
            timeout: self.timeout,
            traceparent: self.traceparent.clone(),
        }
    }

    /// Records metrics and stamps the request id on the response.
    fn finish(self, state: &AppState, result: Result<Response, AppError>) -> Response {
        state.metrics.inflight.dec();
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                state
                    .metrics
                    .errors
                    .with_label_values(&[e.0.code.as_str()])
                    .inc();
                tracing::info!(request_id = %self.request_id, code = %e.0.code, message = %e.0.message, "request failed");
                e.into_response()
            }
        };
        state
            .metrics
            .requests
            .with_label_values(&[self.route, response.status().as_str()])
            .inc();
        state
            .metrics
            .latency
            .with_label_values(&[self.route])
            .observe(self.started.elapsed().as_secs_f64());
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            response.headers_mut().insert(HEADER_REQUEST_ID, v);
        }
        response
    }
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Reads the whole body, mapping axum's rejections (too large, ...) to JSON errors.
async fn body_bytes(request: Request) -> Result<Bytes, AppError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::new(ErrorCode::TooLarge, "request body too large")
            } else {
                AppError::new(ErrorCode::BadRequest, rejection.body_text())
            }
        })
}

/// `POST /predict {"url": ...}` -> `{"dress": -1.2, "hat": 0.3, ...}`: the model's raw scores
/// (logits) by class name, exactly what the classic gateway answered. The body is read as JSON
/// whatever its content type (curl -d sends a form type).
async fn predict(State(state): State<AppState>, request: Request) -> Response {
    let call = match Call::begin(&state, "/predict", request.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let body = body_bytes(request).await?;
        let url = ClassifyRequest::from_json(&body)?.url;
        let payload = serde_json::to_vec(&ClassifyRequest { url })
            .map_err(|e| AppError::new(ErrorCode::Internal, e.to_string()))?;
        let prediction = state
            .backend
            .submit(call.job(CONTENT_TYPE_JSON, payload.into()))
            .await?;
        let scores: BTreeMap<&str, f32> = prediction
            .classes
            .iter()
            .map(String::as_str)
            .zip(prediction.logits.iter().copied())
            .collect();
        Ok(Json(scores).into_response())
    }
    .await;
    call.finish(&state, result)
}

#[derive(Debug, Deserialize)]
pub struct ClassifyQuery {
    /// How many labels to list in `top` (default 3).
    pub top_k: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Label {
    pub label: String,
    pub probability: f32,
}

/// The answer of `/v1/classify`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Classification {
    pub request_id: String,
    pub model: ModelRef,
    /// The `top_k` most likely labels, most likely first.
    pub top: Vec<Label>,
    /// Softmax probabilities of every class.
    pub scores: BTreeMap<String, f32>,
    /// Time spent in each tier, and `total_ms` as seen by the ingress.
    pub timings: TimingsOut,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TimingsOut {
    #[serde(flatten)]
    pub tiers: Timings,
    pub total_ms: f64,
}

/// `POST /v1/classify`: `{"url": ...}` as JSON, the image itself (`image/*` or
/// `application/octet-stream`), or `multipart/form-data` with a file field.
async fn classify(
    State(state): State<AppState>,
    Query(q): Query<ClassifyQuery>,
    request: Request,
) -> Response {
    let call = match Call::begin(&state, "/v1/classify", request.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let top_k = q.top_k.unwrap_or(3);
    let result = async {
        let (content_type, payload) = classify_payload(request).await?;
        let prediction = state
            .backend
            .submit(call.job(&content_type, payload))
            .await?;
        let total_ms = call.started.elapsed().as_secs_f64() * 1e3;
        Ok(Json(classification(
            &call.request_id,
            prediction,
            top_k,
            total_ms,
        ))
        .into_response())
    }
    .await;
    call.finish(&state, result)
}

async fn classify_payload(request: Request) -> Result<(String, Bytes), AppError> {
    let mime = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match mime.as_str() {
        "application/json" => {
            let body = body_bytes(request).await?;
            let url = ClassifyRequest::from_json(&body)?.url;
            let payload = serde_json::to_vec(&ClassifyRequest { url })
                .map_err(|e| AppError::new(ErrorCode::Internal, e.to_string()))?;
            Ok((CONTENT_TYPE_JSON.to_string(), payload.into()))
        }
        m if m.starts_with("image/") || m == "application/octet-stream" => {
            let body = body_bytes(request).await?;
            if body.is_empty() {
                return Err(AppError::new(ErrorCode::NotAnImage, "empty image body"));
            }
            Ok((mime, body))
        }
        "multipart/form-data" => {
            let mut multipart = Multipart::from_request(request, &())
                .await
                .map_err(|r| AppError::new(ErrorCode::BadRequest, r.body_text()))?;
            while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
                if field.file_name().is_none() && !matches!(field.name(), Some("file" | "image")) {
                    continue;
                }
                let content_type = field
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_ascii_lowercase();
                let bytes = field.bytes().await.map_err(multipart_error)?;
                if bytes.is_empty() {
                    return Err(AppError::new(
                        ErrorCode::NotAnImage,
                        "the uploaded file is empty",
                    ));
                }
                return Ok((content_type, bytes));
            }
            Err(AppError::new(
                ErrorCode::BadRequest,
                "multipart body has no file field",
            ))
        }
        "" => Err(AppError::new(
            ErrorCode::UnsupportedMediaType,
            "missing Content-Type",
        )),
        other => Err(AppError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type {other:?} is not accepted: send application/json, image/* or multipart/form-data"
            ),
        )),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::new(ErrorCode::TooLarge, "uploaded file too large")
    } else {
        AppError::new(ErrorCode::BadRequest, e.body_text())
    }
}

fn classification(request_id: &str, p: Prediction, top_k: usize, total_ms: f64) -> Classification {
    let probs = p.probabilities();
    let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Classification {
        request_id: request_id.to_string(),
        top: ranked
            .iter()
            .take(top_k)
            .map(|&(i, probability)| Label {
                label: p.classes[i].clone(),
                probability,
            })
            .collect(),
        scores: p.classes.iter().cloned().zip(probs).collect(),
        model: p.model,
        timings: TimingsOut {
            tiers: p.timings,
            total_ms,
        },
    }
}
