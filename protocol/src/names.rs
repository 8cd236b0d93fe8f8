//! Names of streams, subjects, durable consumers and headers: the fixed vocabulary of the contract.

/// Work-queue stream holding classification requests (JSON `{"url"}` or raw image bytes).
pub const REQUESTS_STREAM: &str = "CLOTHESLINE_REQUESTS";
/// Subject the requests stream captures for bulk and other clients: publish requests here (their
/// answers only under `clothesline.replies.bulk.`; the ingress uses [`INGRESS_REQUESTS_SUBJECT`]).
pub const REQUESTS_SUBJECT: &str = "clothesline.requests";
/// Subject the ingress queues its requests on, also captured by the requests stream. With the
/// per-role users only the ingress may publish here; a request on [`REQUESTS_SUBJECT`] (bulk and
/// other clients) may only ask for answers under `clothesline.replies.bulk.` (see
/// [`crate::reply_to::validate_request`]).
pub const INGRESS_REQUESTS_SUBJECT: &str = "clothesline.requests.ingress";
/// Durable pull consumer the preprocessors share on the requests stream.
pub const PREPROCESSOR_CONSUMER: &str = "preprocessor";

/// Work-queue stream holding preprocessed tensors (MessagePack [`crate::TensorMessage`]).
pub const TENSORS_STREAM: &str = "CLOTHESLINE_TENSORS";
/// Subject the tensors stream captures.
pub const TENSORS_SUBJECT: &str = "clothesline.tensors";
/// Durable pull consumer the gpu-workers share on the tensors stream.
pub const GPU_WORKER_CONSUMER: &str = "gpu-worker";

/// JetStream key-value bucket of idempotent requests: per caller-chosen request id (keyed by its
/// SHA-256), the claim of the ingress running it, then its answer, kept for the idempotency
/// window (the bucket's max age).
pub const RESULTS_BUCKET: &str = "clothesline-results";
/// The stream behind [`RESULTS_BUCKET`].
pub const RESULTS_STREAM: &str = "KV_clothesline-results";

/// Request-reply service subject answered by the ingress (NATS services API, name below).
pub const SERVICE_SUBJECT: &str = "clothesline.classify";
/// Name of the ingress in the NATS services API (`nats micro ls`).
pub const SERVICE_NAME: &str = "clothesline";
/// On service requests: a shorter deadline than the ingress's default, in milliseconds.
pub const HEADER_TIMEOUT_MS: &str = "Clothesline-Timeout-Ms";

/// Core-NATS subject on which the ingress publishes the id of a request whose caller went away.
pub const CANCEL_SUBJECT: &str = "clothesline.cancel";

/// Every reply subject starts with this: `clothesline.replies.<instance>.<token>` for an
/// ingress's requests, `clothesline.replies.bulk.<anything>` for bulk clients (see
/// [`crate::reply_to`]).
pub const REPLIES_PREFIX: &str = "clothesline.replies";

/// Request id: a unique id per request, also used as `Nats-Msg-Id` for de-duplication.
pub const HEADER_REQUEST_ID: &str = "Clothesline-Request-Id";
/// Core-NATS subject on which the finishing tier publishes the JSON [`crate::Reply`].
pub const HEADER_REPLY_TO: &str = "Clothesline-Reply-To";
/// Absolute deadline, milliseconds since the Unix epoch; work past it is dropped.
pub const HEADER_DEADLINE: &str = "Clothesline-Deadline";
/// W3C trace context, passed through unchanged.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// MIME type of the payload: `application/json` or `image/*` on requests,
/// `application/msgpack` on tensors, `application/json` on replies.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
/// On replies that carry an error: its stable code (see [`crate::ErrorCode`]).
pub const HEADER_ERROR: &str = "Clothesline-Error";
/// The model version a request is pinned to (on requests), or that served it (on replies).
pub const HEADER_MODEL_VERSION: &str = "Clothesline-Model-Version";
/// JetStream's de-duplication header.
pub const HEADER_NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The HTTP API's headers (the ingress's). The NATS headers above are the messages'; where the
/// two carry the same thing (request id, timeout, model version) the names differ on purpose:
/// `X-` names are what HTTP clients of the Flask gateway already send.
pub mod http {
    /// A shorter deadline than the default, in milliseconds.
    pub const HEADER_TIMEOUT_MS: &str = "x-request-timeout-ms";
    /// Request id, accepted from the caller (if sane) and always returned.
    pub const HEADER_REQUEST_ID: &str = "x-request-id";
    /// Pins a request to a model version; on `/predict` answers, the version that served it.
    pub const HEADER_MODEL_VERSION: &str = "x-model-version";
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

/// The root of one ingress instance's reply subjects (each request adds a token of its own).
pub fn reply_subject(instance: &str) -> String {
    format!("{REPLIES_PREFIX}.{instance}")
}
