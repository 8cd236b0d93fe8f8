//! One `AppError: IntoResponse`: every HTTP error is `{"error": {"code", "message"}}` with the
//! status the code maps to, and `Retry-After` when the cluster is overloaded.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{Error, ErrorCode};

#[derive(Debug)]
pub struct AppError(pub Error);

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Error::new(code, message))
    }
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

/// Seconds a client should wait before retrying an overloaded service.
pub const RETRY_AFTER_SECS: u32 = 1;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.0.to_json_body())).into_response();
        if matches!(
            self.0.code,
            ErrorCode::Overloaded | ErrorCode::QueueFull | ErrorCode::Unavailable
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}
