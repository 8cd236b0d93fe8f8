//! JSON bodies and `X-Request-Id` on the answers hyper writes by itself. When a request's head
//! does not parse (400), its URI is too long (414) or its headers are too large (431), hyper
//! answers before any handler runs, with an empty body. [`CannedErrors`] wraps the connection and
//! rewrites exactly those answers (a 400, 414 or 431 head with `content-length: 0`; the API's own
//! errors always have a JSON body) into the API's error shape.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use protocol::{Error, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::{MAX_HEAD_BYTES, MAX_HEADERS};

/// A connection whose canned error answers are rewritten.
#[derive(Debug)]
pub struct CannedErrors<S> {
    inner: S,
    /// A rewritten answer being written, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> CannedErrors<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CannedErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CannedErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => this.pending = Some((answer, 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper offers the same buffer again until it is reported written.
        while let Some((answer, written)) = this.pending.as_mut() {
            if *written == answer.len() {
                this.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The API's answer for a head hyper wrote by itself, if `head` is one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    if !head.ends_with(b"\r\n\r\n")
        || !head
            .windows(b"\r\ncontent-length: 0\r\n".len())
            .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r\n"))
    {
        return None;
    }
    let (status, error) = match rest.get(..3)? {
        b"400" => (
            400,
            Error::new(
                ErrorCode::BadRequest,
                "the request is not valid HTTP/1.1 (request line or headers)",
            ),
        ),
        b"414" => (
            414,
            Error::new(
                ErrorCode::UriTooLong,
                format!("the request's URI is longer than {MAX_HEAD_BYTES} bytes"),
            ),
        ),
        b"431" => (
            431,
            Error::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request's headers are over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"
                ),
            ),
        ),
        _ => return None,
    };
    Some(raw_error_response(
        status,
        &protocol::meta::new_request_id(),
        &error,
    ))
}

/// A complete HTTP/1.1 error answer that closes the connection.
pub fn raw_error_response(status: u16, request_id: &str, error: &Error) -> Vec<u8> {
    let body = error.to_json_body().to_string();
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let retry = if error.code.is_transient() {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nx-request-id: {request_id}\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_400_414_431_answers_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(rewrite(head).expect("rewritten")).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(answer.contains("\r\nx-request-id: "));
        let body = answer.split("\r\n\r\n").nth(1).expect("body");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(json["error"]["code"], "headers_too_large");
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite(bad).is_some());
        // The API's own answers have bodies; other statuses are left alone.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 431 X\r\ncontent-length: 0\r\n\r\n{}").is_none());
    }
}
