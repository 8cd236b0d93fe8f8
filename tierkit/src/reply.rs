//! The one way a worker tier answers a caller: the encoded [`Reply`] over core NATS to the
//! request's reply subject, with the reply headers (request id, content type, the error code on
//! errors, the model version on predictions, the caller's trace context). The preprocessor sends
//! its error replies with it, the gpu-worker every reply. No flush: a tier acks the message
//! afterwards on the same connection, so the server sees the reply first.

use async_nats::HeaderMap;
use protocol::messages::Outcome;
use protocol::{Reply, RequestMeta};

/// The headers of `reply` to the request `meta` describes.
pub fn reply_headers(meta: &RequestMeta, reply: &Reply) -> HeaderMap {
    match &reply.outcome {
        Outcome::Error(e) => meta.reply_headers(Some(e.code), None),
        Outcome::Prediction(p) => meta.reply_headers(None, Some(&p.model.version)),
    }
}

/// Publishes `reply` to the request's reply subject, if it has one (nobody waits otherwise);
/// `false` if the connection refused it (logged).
pub async fn send(client: &async_nats::Client, meta: &RequestMeta, reply: &Reply) -> bool {
    let Some(subject) = &meta.reply_to else {
        return true;
    };
    let headers = reply_headers(meta, reply);
    match client
        .publish_with_headers(subject.clone(), headers, reply.encode().into())
        .await
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(request_id = %meta.request_id, %subject, error = %e, "cannot publish the reply");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::names::*;
    use protocol::{Error, ErrorCode, ModelRef, Prediction, Timings};

    #[test]
    fn error_replies_carry_the_code_header() {
        let mut meta = RequestMeta::new(protocol::meta::new_request_id())
            .with_reply_to("clothesline.replies.x");
        meta.traceparent = Some("00-a-b-01".into());
        let ok = Reply::prediction(
            meta.request_id.clone(),
            Prediction {
                model: ModelRef {
                    name: "m".into(),
                    version: "1".into(),
                },
                classes: vec!["a".into()],
                logits: vec![0.5],
                timings: Timings::default(),
            },
        );
        let h = reply_headers(&meta, &ok);
        assert_eq!(
            h.get(HEADER_REQUEST_ID).map(|v| v.as_str()),
            Some(meta.request_id.as_str())
        );
        assert_eq!(
            h.get(HEADER_CONTENT_TYPE).map(|v| v.as_str()),
            Some(CONTENT_TYPE_JSON)
        );
        assert!(h.get(HEADER_ERROR).is_none());
        assert_eq!(h.get(HEADER_MODEL_VERSION).map(|v| v.as_str()), Some("1"));
        assert_eq!(
            h.get(HEADER_TRACEPARENT).map(|v| v.as_str()),
            Some("00-a-b-01")
        );
        let err = Reply::error("r", Error::new(ErrorCode::BadTensor, "x"));
        assert_eq!(
            reply_headers(&meta, &err)
                .get(HEADER_ERROR)
                .map(|v| v.as_str()),
            Some("bad_tensor")
        );
    }
}
