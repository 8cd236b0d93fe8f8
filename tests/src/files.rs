//! Serves a folder on 127.0.0.1 over HTTP, so image URLs in tests need no internet.

use std::net::SocketAddr;
use std::path::Path;

pub struct FileServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    /// Serves `dir` on a free port of 127.0.0.1.
    pub async fn serve(dir: &Path) -> Self {
        Self::serve_at(dir, ([127, 0, 0, 1], 0).into())
            .await
            .unwrap()
    }

    /// Serves `dir` at `addr`.
    pub async fn serve_at(dir: &Path, addr: SocketAddr) -> std::io::Result<Self> {
        let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    /// The URL of `path` (relative to the served folder).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
