//! `serve-noop`: answers every request with `200 {}` at once (after reading its body, so
//! connections are reused). A target that costs nothing, to measure the load generator itself;
//! and an OTLP/HTTP sink (`scripts/bench_tracing.sh`): a protobuf request gets an empty protobuf
//! answer, which is a valid export response.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use axum::http::{HeaderMap, header};
use bytes::Bytes;

pub fn router() -> axum::Router {
    axum::Router::new().fallback(|headers: HeaderMap, _body: Bytes| async move {
        let protobuf = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
        if protobuf {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], "")
        } else {
            ([(header::CONTENT_TYPE, "application/json")], "{}")
        }
    })
}

/// Listens on `addr`, prints `http://<addr>` on stdout, and serves until killed.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "http://{}", listener.local_addr()?)?;
    out.flush()?;
    axum::serve(listener, router()).await?;
    Ok(())
}
