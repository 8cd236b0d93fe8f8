//! An image origin on 127.0.0.1 whose behaviour a test controls, for faults that a plain file
//! server cannot show:
//! - `/image.jpg` answers the image at once;
//! - `/gated/...` reports its arrival ([`Origin::arrival`]) and answers the image only once the
//!   test calls [`Origin::release`];
//! - `/hang` accepts the request and never answers;
//! - `/drip` sends its headers, then one byte of its declared body every 200 ms;
//! - `/endless` sends 64 KiB chunks without end (no content length).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc, watch};

#[derive(Clone)]
struct Shared {
    image: Bytes,
    arrivals: mpsc::Sender<String>,
    released: watch::Receiver<bool>,
}

pub struct Origin {
    pub addr: SocketAddr,
    arrivals: Mutex<mpsc::Receiver<String>>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Serves `image` (a JPEG) on a free port.
    pub async fn start(image: Vec<u8>) -> Self {
        let (arrivals_tx, arrivals) = mpsc::channel(64);
        let (release, released) = watch::channel(false);
        let shared = Shared {
            image: Bytes::from(image),
            arrivals: arrivals_tx,
            released,
        };
        let app = axum::Router::new()
            .route("/image.jpg", get(serve_image))
            .route("/gated/{*rest}", get(gated))
            .route("/hang", get(hang))
            .route("/drip", get(drip))
            .route("/endless", get(endless))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            arrivals: Mutex::new(arrivals),
            release,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Waits for the next request to a `/gated/...` path and returns its path.
    pub async fn arrival(&self) -> String {
        self.arrivals.lock().await.recv().await.unwrap()
    }

    /// Lets every gated request, waiting or still to come, have its image.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jpeg(bytes: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response()
}

async fn serve_image(State(s): State<Shared>) -> Response {
    jpeg(s.image)
}

async fn gated(State(s): State<Shared>, uri: Uri) -> Response {
    let _ = s.arrivals.send(uri.path().to_string()).await;
    let mut released = s.released.clone();
    let _ = released.wait_for(|r| *r).await;
    jpeg(s.image)
}

async fn hang() -> Response {
    std::future::pending().await
}

async fn drip() -> Response {
    let body = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), ()))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "image/jpeg")
        .header(header::CONTENT_LENGTH, "100000")
        .body(Body::from_stream(body))
        .unwrap()
}

async fn endless() -> Response {
    let chunk = Bytes::from(vec![0xAB; 64 << 10]);
    let body = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
    Response::builder()
        .header(header::CONTENT_TYPE, "image/jpeg")
        .body(Body::from_stream(body))
        .unwrap()
}

/// Reads one sample's value from a tier's Prometheus text, e.g.
/// `metric(&text, "preprocessor_requests_total{outcome=\"cancelled\"}")`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A tier's Prometheus text from its `/metrics` at `url`.
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// The value of `sample` on the tier's `/metrics` at `url`, once it is at least `at_least`.
pub async fn metric_reaches(http: &reqwest::Client, url: &str, sample: &str, at_least: f64) {
    let what = format!("{sample} >= {at_least} at {url}");
    crate::wait_until(&what, Duration::from_secs(60), || async {
        let text = http.get(url).send().await.ok()?.text().await.ok()?;
        metric(&text, sample).filter(|v| *v >= at_least)
    })
    .await;
}
