//! The NATS API: request-reply on `clothesline.classify`, registered with the NATS services API
//! (so `nats micro ls|info|stats` list it, [`crate::micro`]), answered by the ingress with the
//! same JSON as `POST /v1/classify`. The body is `{"url": ...}` (JSON) or the image itself with
//! an `image/*` `Content-Type` header. Errors come back as `{"error": {"code", "message"}}` with
//! the `Clothesline-Error` header and the services API's `Nats-Service-Error(-Code)` headers, and
//! count in the service's `num_errors`.

use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use futures::StreamExt;
use protocol::messages::RequestPayload;
use protocol::names::*;
use protocol::{Error, RequestMeta};
use tokio_util::sync::CancellationToken;

use crate::api::url_payload;
use crate::call::{AppState, Call, CallHeaders, Classification};
use crate::micro;

/// Registers the service and answers requests until `shutdown`; each request runs on its own
/// task, bounded by the ingress's in-flight limit (beyond it: `overloaded` at once).
pub async fn serve(
    client: async_nats::Client,
    subject: String,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    let spec = micro::Spec {
        name: SERVICE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "Classifies clothes images: {\"url\"} or image bytes in, class scores out"
            .into(),
        endpoint: "classify".into(),
        subject: subject.clone(),
    };
    let (service, mut requests) = micro::Service::start(&client, spec).await?;
    tracing::info!(%subject, "NATS service listening");
    loop {
        let msg = tokio::select! {
            r = requests.next() => match r { Some(m) => m, None => break },
            _ = shutdown.cancelled() => break,
        };
        let Some(reply) = msg.reply.clone() else {
            tracing::debug!(%subject, "a service request without a reply subject; ignored");
            continue;
        };
        let (state, client, endpoint) = (state.clone(), client.clone(), service.endpoint());
        tokio::spawn(async move {
            let issued = Instant::now();
            let (body, headers) = answer(&state, &msg).await;
            endpoint.record(issued.elapsed(), &headers);
            if let Err(e) = client.publish_with_headers(reply, headers, body).await {
                tracing::warn!(error = %e, "could not answer a service request");
            }
        });
    }
    drop(service);
    Ok(())
}

/// The JSON answer and its headers for one service request.
async fn answer(state: &AppState, msg: &async_nats::Message) -> (bytes::Bytes, HeaderMap) {
    let get = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let h = CallHeaders {
        request_id: get(HEADER_REQUEST_ID),
        timeout_ms: get(HEADER_TIMEOUT_MS),
        traceparent: get(HEADER_TRACEPARENT),
        model_version: get(HEADER_MODEL_VERSION),
    };
    let route = "nats:classify";
    let call = match Call::begin(state, route, h) {
        Ok(c) => c,
        Err(e) => {
            Call::refused(state, route, &e);
            let traceparent = crate::trace::refused(route, h.traceparent, &e);
            let (body, mut headers) = error_answer(None, &e);
            headers.insert(HEADER_TRACEPARENT, traceparent);
            return (body, headers);
        }
    };
    let outcome = async {
        let payload = RequestPayload::parse(get(HEADER_CONTENT_TYPE), msg.payload.clone())?;
        let job = match payload {
            RequestPayload::Url(request) => call.job(CONTENT_TYPE_JSON, url_payload(&request)),
            RequestPayload::Image {
                content_type,
                bytes,
            } => call.job(&content_type, bytes),
        };
        let prediction = state.backend.submit(job).await?;
        let total_ms = call.started.elapsed().as_secs_f64() * 1e3;
        Ok::<_, Error>(Classification::new(
            &call.meta.request_id,
            prediction,
            3,
            total_ms,
        ))
    }
    .await;
    let (body, headers) = match outcome {
        Ok(c) => {
            call.record(200, None);
            let headers = call.meta.reply_headers(None, Some(&c.model.version));
            (serde_json::to_vec(&c).unwrap_or_default().into(), headers)
        }
        Err(e) => {
            call.record(e.code.http_status(), Some(&e));
            error_answer(Some(&call.meta), &e)
        }
    };
    (body, headers)
}

/// An error answer: the reply headers of `meta` (the request's, when it was admitted) or just
/// the JSON content type and the code, plus the NATS services API's error headers.
fn error_answer(meta: Option<&RequestMeta>, e: &Error) -> (bytes::Bytes, HeaderMap) {
    let mut headers = match meta {
        Some(meta) => meta.reply_headers(Some(e.code), None),
        None => {
            let mut h = HeaderMap::new();
            h.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
            h.insert(HEADER_ERROR, e.code.as_str());
            h
        }
    };
    let message: String = e
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(NATS_SERVICE_ERROR, message);
    headers.insert(NATS_SERVICE_ERROR_CODE, e.code.http_status().to_string());
    (
        serde_json::to_vec(&e.to_json_body())
            .unwrap_or_default()
            .into(),
        headers,
    )
}
