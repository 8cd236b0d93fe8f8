//! `serve-noop`: answers every request with `200 {}` at once (after reading its body, so
//! connections are reused). A target that costs nothing, to measure the load generator itself.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use axum::http::header;
use bytes::Bytes;

pub fn router() -> axum::Router {
    axum::Router::new()
        .fallback(|_body: Bytes| async { ([(header::CONTENT_TYPE, "application/json")], "{}") })
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
