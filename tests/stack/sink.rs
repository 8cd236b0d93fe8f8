//! `clothesline-stack sink`: an OTLP/HTTP sink that answers every export with 200 and an empty
//! (valid) protobuf response and keeps nothing, so tracing can be measured without a collector
//! (scripts/bench_tracing.sh).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::header;

pub async fn run(addr: SocketAddr) -> anyhow::Result<bool> {
    let app = axum::Router::new().fallback(|_body: Bytes| async {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Bytes::new(),
        )
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(true)
}
