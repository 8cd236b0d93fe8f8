//! The HTTP listener, with the limits `axum::serve` lacks, so a slow or idle client costs a
//! bounded amount:
//!
//! - **headers**: a connection must send a request's whole head within `header_timeout`, counted
//!   from the connection's start or from the end of its previous response; that is also the idle
//!   keep-alive timeout (hyper's `header_read_timeout` runs while waiting for the next request);
//! - **bodies**: read by the handlers within the request's deadline ([`crate::api`]);
//! - **connections**: at most `max_connections` open; one more is answered 503 `unavailable` and
//!   closed at once;
//! - **shutdown**: stop accepting, close idle connections, let requests in flight finish; after
//!   `slow_client_grace` close the connections that have no request in a handler (slowloris) and
//!   cut the bodies still trickling in ([`SlowClientCut`]); after `shutdown_grace` close the rest.
//!
//! `ingress_connections_closed_total{reason}` counts the connections closed this way.
//! HTTP/1.1 only (no h2c).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::{Error, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::canned::{CannedErrors, raw_error_response};
use crate::metrics::Metrics;

/// Most bytes of a request head (request line and headers) read; beyond it, 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in a request; beyond it, 431.
pub const MAX_HEADERS: usize = 100;
/// Time given to a connection refused over the cap to take its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long clients may take, and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's head, from the connection's start or the previous response.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// On shutdown, how long slow clients (no request in a handler, or a body still arriving)
    /// may stay.
    pub slow_client_grace: Duration,
    /// On shutdown, how long requests in flight may take; then every connection is closed.
    pub shutdown_grace: Duration,
}

/// In every request's extensions: `token` is cancelled when shutdown's slow-client grace is
/// over, so a handler still reading a body gives up; it then sets `body_cut`, and its connection
/// counts as closed on a slow client.
#[derive(Debug, Clone)]
pub struct SlowClientCut {
    pub token: CancellationToken,
    pub body_cut: Arc<AtomicBool>,
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    app: Router,
    limits: Limits,
    metrics: Metrics,
    /// Shutdown began: finish the request in flight, take no more.
    stop: CancellationToken,
    /// Slow-client grace over.
    cut: CancellationToken,
    /// Shutdown grace over.
    force: CancellationToken,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains as [`Limits`] says.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let shared = Shared {
        app,
        limits,
        metrics,
        stop: CancellationToken::new(),
        cut: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                connections.spawn(connection(stream, shared.clone(), permit));
            }
            Err(_) => {
                shared.closed("over_capacity");
                connections.spawn(refuse(stream));
            }
        }
    }
    drop(listener);
    drain(connections, &shared).await;
}

/// Shutdown: graceful first, slow clients cut after their grace, everything after the whole grace.
async fn drain(mut connections: JoinSet<()>, shared: &Shared) {
    shared.stop.cancel();
    let limits = shared.limits;
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "closing HTTP connections");
    }
    let steps = [
        (limits.slow_client_grace, &shared.cut),
        (
            limits
                .shutdown_grace
                .saturating_sub(limits.slow_client_grace),
            &shared.force,
        ),
    ];
    for (wait, then) in steps {
        let all_done = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(wait, all_done).await.is_ok() {
            return;
        }
        then.cancel();
    }
    while connections.join_next().await.is_some() {}
}

impl Shared {
    fn closed(&self, reason: &str) {
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
    }
}

/// Counts the requests of one connection that are in a handler.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps the open-connections gauge right however a connection task ends.
struct OpenGauge(prometheus::IntGauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one connection until it closes, times out, or shutdown closes it.
async fn connection(stream: TcpStream, shared: Shared, _permit: OwnedSemaphorePermit) {
    shared.metrics.connections_open.inc();
    let _gauge = OpenGauge(shared.metrics.connections_open.clone());
    stream.set_nodelay(true).ok();
    let active = Arc::new(AtomicUsize::new(0));
    let cut = SlowClientCut {
        token: shared.cut.clone(),
        body_cut: Arc::default(),
    };
    let service = {
        let (app, active, cut) = (shared.app.clone(), active.clone(), cut.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(cut.clone());
            let in_handler = Active::enter(&active);
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                drop(in_handler);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(CannedErrors::new(stream)), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return shared.ended(done),
        _ = shared.stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        done = conn.as_mut() => return shared.ended(done),
        _ = shared.cut.cancelled() => {}
    }
    // Slow-client grace over: a connection with no request in a handler is a slow client.
    if active.load(Ordering::SeqCst) == 0 {
        return shared.closed("shutdown");
    }
    // A request in a handler ends by itself (its body read is cut, its wait bounded by its
    // deadline), and the connection with it; or the whole grace ends.
    tokio::select! {
        done = conn.as_mut() => {
            if cut.body_cut.load(Ordering::SeqCst) {
                shared.closed("shutdown");
            } else {
                shared.ended(done);
            }
        }
        _ = shared.force.cancelled() => shared.closed("shutdown"),
    }
}

impl Shared {
    /// Records why a connection ended by itself (a header or idle timeout; others are the
    /// client's doing).
    fn ended(&self, done: Result<(), hyper::Error>) {
        if let Err(e) = done {
            if e.is_timeout() {
                self.closed("header_timeout");
            } else {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
    }
}

/// Answers a connection over the cap 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let response = raw_error_response(
        503,
        &protocol::meta::new_request_id(),
        &Error::new(
            ErrorCode::Unavailable,
            "too many open connections on this instance; retry later",
        ),
    );
    let answer = async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection under its answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REFUSAL_TIMEOUT, answer).await.ok();
}
