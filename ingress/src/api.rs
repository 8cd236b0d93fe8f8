//! The HTTP API: `POST /predict` (the classic gateway's flat `{class: score}` answer),
//! `POST /v1/classify` (URL, raw image body or multipart upload; top-k, probabilities, timings),
//! `POST /v1/classify/batch` (many URLs, answered in order, each with its result or error),
//! `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json`.
//!
//! Every answer carries `X-Request-Id` ([`request_id`]), every error is JSON with a stable code
//! (unknown paths `not_found`, wrong methods `method_not_allowed`, bad query parameters
//! `bad_request`), and a body is read within the request's deadline ([`read_within`]).

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use protocol::names::CONTENT_TYPE_JSON;
use protocol::names::http::{HEADER_MODEL_VERSION, HEADER_REQUEST_ID, HEADER_TIMEOUT_MS};
use protocol::{ClassifyRequest, Error, ErrorCode};
use serde::Deserialize;

use crate::call::{AppState, Call, CallHeaders, Classification};
use crate::error::AppError;
use crate::server::SlowClientCut;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/v1/classify", post(classify))
        .route("/v1/classify/batch", post(classify_batch))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(crate::ui::router())
        .fallback(|| async { AppError::new(ErrorCode::NotFound, "no such path") })
        .method_not_allowed_fallback(|| async {
            AppError::new(
                ErrorCode::MethodNotAllowed,
                "this path does not take this method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(from_fn(request_id))
        .with_state(state)
}

/// Puts an `X-Request-Id` on every answer, refusals included: the request's (see [`handle`]),
/// else the caller's if valid, else a new one. An invalid one is dropped before any handler
/// sees it, so the request gets a new id (and is not idempotent).
async fn request_id(mut request: Request, next: Next) -> Response {
    let caller = request
        .headers()
        .get(HEADER_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| protocol::meta::valid_caller_id(id))
        .map(str::to_string);
    if caller.is_none() {
        request.headers_mut().remove(HEADER_REQUEST_ID);
    }
    let id = caller.unwrap_or_else(protocol::meta::new_request_id);
    let value = HeaderValue::from_str(&id).ok();
    let mut response = next.run(request).await;
    if let Some(v) = value {
        response.headers_mut().entry(HEADER_REQUEST_ID).or_insert(v);
    }
    response
}

/// The query of `/v1/classify*`, or `bad_request` naming what is wrong with it.
fn parse_query(q: Result<Query<ClassifyQuery>, QueryRejection>) -> Result<ClassifyQuery, AppError> {
    q.map(|Query(q)| q).map_err(|rejection| {
        AppError::new(
            ErrorCode::BadRequest,
            format!(
                "bad query parameters (top_k is a whole number, 0 or more): {}",
                rejection.body_text()
            ),
        )
    })
}

/// Runs `read` (reading a request's body) within what is left of `call`'s deadline, and gives up
/// when shutdown cuts slow clients ([`SlowClientCut`]): a client that trickles its body holds
/// its in-flight permit no longer than its deadline.
async fn read_within<T>(
    state: &AppState,
    call: &Call,
    cut: Option<SlowClientCut>,
    read: impl std::future::Future<Output = Result<T, AppError>>,
) -> Result<T, AppError> {
    let left = call.remaining();
    let cut_off = async {
        match &cut {
            Some(cut) => cut.token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        read = tokio::time::timeout(left, read) => read.unwrap_or_else(|_| {
            state.metrics.connections_closed.with_label_values(&["body_timeout"]).inc();
            Err(AppError::new(
                ErrorCode::DeadlineExceeded,
                format!("the request body did not arrive within the deadline ({} ms)", call.timeout.as_millis()),
            ))
        }),
        () = cut_off => {
            // The connection counts itself closed on a slow client.
            if let Some(cut) = &cut {
                cut.body_cut.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Err(AppError::new(ErrorCode::Unavailable, "the ingress is shutting down before the request body arrived"))
        }
    }
}

fn slow_client_cut(request: &Request) -> Option<SlowClientCut> {
    request.extensions().get::<SlowClientCut>().cloned()
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
        tierkit::runtime::metrics_text(&s.metrics.registry),
    )
        .into_response()
}

fn call_headers(headers: &HeaderMap) -> CallHeaders<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    CallHeaders {
        request_id: get(HEADER_REQUEST_ID),
        timeout_ms: get(HEADER_TIMEOUT_MS),
        traceparent: get("traceparent"),
        model_version: get(HEADER_MODEL_VERSION),
    }
}

/// Runs `work` as one admitted call and turns its outcome into the HTTP response.
async fn handle<F, Fut>(
    state: &AppState,
    route: &'static str,
    headers: &HeaderMap,
    work: F,
) -> Response
where
    F: FnOnce(Call) -> Fut,
    Fut: std::future::Future<Output = (Call, Result<Response, AppError>)>,
{
    let call = match Call::begin(state, route, call_headers(headers)) {
        Ok(c) => c,
        Err(e) => {
            Call::refused(state, route, &e);
            let traceparent = crate::trace::refused(route, call_headers(headers).traceparent, &e);
            let mut response = AppError(e).into_response();
            crate::trace::set_header(response.headers_mut(), Some(&traceparent));
            return response;
        }
    };
    let (call, result) = work(call).await;
    let mut response = match result {
        Ok(r) => {
            call.record(r.status().as_u16(), None);
            r
        }
        Err(e) => {
            call.record(e.0.code.http_status(), Some(&e.0));
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&call.meta.request_id) {
        response.headers_mut().insert(HEADER_REQUEST_ID, v);
    }
    crate::trace::set_header(response.headers_mut(), call.meta.traceparent.as_deref());
    response
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

/// The JSON payload queued for a URL request.
pub fn url_payload(request: &ClassifyRequest) -> Bytes {
    serde_json::to_vec(request)
        .map(Bytes::from)
        .unwrap_or_default()
}

/// `POST /predict {"url": ...}` -> `{"dress": -1.2, "hat": 0.3, ...}`: the model's raw scores
/// (logits) by class name, exactly what the classic gateway answered. The body is read as JSON
/// whatever its content type (curl -d sends a form type).
async fn predict(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let cut = slow_client_cut(&request);
    handle(&state, "/predict", &headers, |call| async {
        let result = async {
            let body = read_within(&state, &call, cut, body_bytes(request)).await?;
            let url_request = ClassifyRequest::from_json(&body)?;
            let prediction = state
                .backend
                .submit(call.job(CONTENT_TYPE_JSON, url_payload(&url_request)))
                .await?;
            let version = HeaderValue::from_str(&prediction.model.version).ok();
            let scores: BTreeMap<&str, f32> = prediction
                .classes
                .iter()
                .map(String::as_str)
                .zip(prediction.logits.iter().copied())
                .collect();
            let mut response = Json(scores).into_response();
            if let Some(v) = version {
                response.headers_mut().insert(HEADER_MODEL_VERSION, v);
            }
            Ok(response)
        }
        .await;
        (call, result)
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct ClassifyQuery {
    /// How many labels to list in `top` (default 3).
    pub top_k: Option<usize>,
}

/// `POST /v1/classify`: `{"url": ...}` as JSON, the image itself (`image/*` or
/// `application/octet-stream`), or `multipart/form-data` with a file field.
async fn classify(
    State(state): State<AppState>,
    q: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let cut = slow_client_cut(&request);
    handle(&state, "/v1/classify", &headers, |call| async {
        let result = async {
            let q = parse_query(q)?;
            let (content_type, payload) =
                read_within(&state, &call, cut, classify_payload(request)).await?;
            let prediction = state
                .backend
                .submit(call.job(&content_type, payload))
                .await?;
            let total_ms = call.started.elapsed().as_secs_f64() * 1e3;
            Ok(Json(Classification::new(
                &call.meta.request_id,
                prediction,
                q.top_k.unwrap_or(3),
                total_ms,
            ))
            .into_response())
        }
        .await;
        (call, result)
    })
    .await
}

async fn classify_payload(request: Request) -> Result<(String, Bytes), AppError> {
    let mime = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(protocol::meta::media_type)
        .unwrap_or_default();
    match mime.as_str() {
        "application/json" => {
            let body = body_bytes(request).await?;
            Ok((
                CONTENT_TYPE_JSON.to_string(),
                url_payload(&ClassifyRequest::from_json(&body)?),
            ))
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
                let content_type = field.content_type().map_or_else(
                    || "application/octet-stream".to_string(),
                    protocol::meta::media_type,
                );
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

/// `POST /v1/classify/batch {"urls": [...]}` -> `{"results": [...]}` in the same order, each
/// item a classification or `{"url", "error": {"code", "message"}}`. Every URL takes its own
/// in-flight permit; the whole call is refused with 429 when there are not enough.
async fn classify_batch(
    State(state): State<AppState>,
    q: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let cut = slow_client_cut(&request);
    handle(&state, "/v1/classify/batch", &headers, |call| async {
        let result = async {
            let q = parse_query(q)?;
            let body = read_within(&state, &call, cut, body_bytes(request)).await?;
            let urls = batch_urls(&body, state.max_batch_urls)?;
            let mut calls = Vec::with_capacity(urls.len());
            for i in 0..urls.len() {
                calls.push(call.item(&state, "/v1/classify/batch[item]", i)?);
            }
            let top_k = q.top_k.unwrap_or(3);
            let items = futures::future::join_all(urls.into_iter().zip(calls).map(|(url, item)| {
                let backend = state.backend.clone();
                // Echoed without its credentials, if it has any.
                let shown = protocol::redact::redact_urls(&url).into_owned();
                async move {
                    let outcome = backend.submit(item.job(CONTENT_TYPE_JSON, url_payload(&ClassifyRequest { url: url.clone(), model_version: item.meta.model_version.clone() }))).await;
                    let total_ms = item.started.elapsed().as_secs_f64() * 1e3;
                    match outcome {
                        Ok(p) => {
                            item.record(200, None);
                            serde_json::to_value(Classification::new(&item.meta.request_id, p, top_k, total_ms))
                                .map(|mut v| {
                                    v["url"] = shown.into();
                                    v
                                })
                                .unwrap_or_default()
                        }
                        Err(e) => {
                            item.record(e.code.http_status(), Some(&e));
                            serde_json::json!({ "url": shown, "request_id": item.meta.request_id, "error": e })
                        }
                    }
                }
            }))
            .await;
            Ok(Json(serde_json::json!({ "request_id": call.meta.request_id, "results": items })).into_response())
        }
        .await;
        (call, result)
    })
    .await
}

fn batch_urls(body: &[u8], max: usize) -> Result<Vec<String>, Error> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")))?;
    let urls = value
        .get("urls")
        .and_then(|u| u.as_array())
        .ok_or_else(|| Error::new(ErrorCode::BadRequest, "expected {\"urls\": [\"...\", ...]}"))?;
    if urls.is_empty() || urls.len() > max {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("send between 1 and {max} urls, got {}", urls.len()),
        ));
    }
    urls.iter()
        .map(|u| {
            u.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::new(ErrorCode::BadRequest, "every url must be a string"))
        })
        .collect()
}
