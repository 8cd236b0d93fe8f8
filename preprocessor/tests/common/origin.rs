//! A local HTTP origin on 127.0.0.1 (port 0) serving the cases a download must handle.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

/// Routes:
/// - `/image`: 200 with `image`;
/// - `/missing`: 404;
/// - `/broken`: 500;
/// - `/endless`: 200 with a body that never ends;
/// - `/declared-huge`: 200 declaring a 1 GiB `Content-Length`;
/// - `/slow`: never answers;
/// - `/stall`: answers, then the body stalls;
/// - `/redirect`: 302 to `/image`; `/relative-redirect`: 301 to `image`;
/// - `/loop`: 302 to itself; `/to-ftp`: 302 to an ftp URL.
pub async fn start(image: Vec<u8>) -> SocketAddr {
    let image = Bytes::from(image);
    let app = Router::new()
        .route(
            "/image",
            get(move || {
                let image = image.clone();
                async move { ([(header::CONTENT_TYPE, "image/png")], image) }
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/endless", get(endless))
        .route("/declared-huge", get(declared_huge))
        .route("/slow", get(std::future::pending::<StatusCode>))
        .route("/stall", get(stall))
        .route(
            "/redirect",
            get(|| async { redirect(StatusCode::FOUND, "/image") }),
        )
        .route(
            "/relative-redirect",
            get(|| async { redirect(StatusCode::MOVED_PERMANENTLY, "image") }),
        )
        .route(
            "/loop",
            get(|| async { redirect(StatusCode::FOUND, "/loop") }),
        )
        .route(
            "/to-ftp",
            get(|| async { redirect(StatusCode::FOUND, "ftp://127.0.0.1/x.png") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn redirect(status: StatusCode, to: &'static str) -> Response {
    (status, [(header::LOCATION, to)]).into_response()
}

async fn endless() -> Response {
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let body = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
    Body::from_stream(body).into_response()
}

async fn declared_huge() -> Response {
    // The length is a lie; the client must refuse on the header alone.
    Response::builder()
        .header(header::CONTENT_LENGTH, (1u64 << 30).to_string())
        .body(Body::from_stream(futures::stream::pending::<
            Result<Bytes, Infallible>,
        >()))
        .unwrap()
}

async fn stall() -> Response {
    let first =
        futures::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"\x89PNG")) });
    let body = futures::StreamExt::chain(first, futures::stream::pending());
    Body::from_stream(body).into_response()
}
