//! The page at `GET /` to try the classifier in a browser: drop or choose an image, or paste a
//! URL; it shows the top classes as bars, the model and the per-tier timings. Plain HTML, CSS and
//! JavaScript compiled into the binary (no CDN, no build step); the script calls only the public
//! `POST /v1/classify`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// `GET /`, `GET /ui/app.js`, `GET /ui/style.css`; merged into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_ok(path: &str) -> (String, String) {
        let res = router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let ct = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_page_and_every_asset_it_links() {
        let (ct, html) = get_ok("/").await;
        assert!(ct.starts_with("text/html"), "{ct}");
        for (path, want_ct) in [
            ("/ui/app.js", "text/javascript"),
            ("/ui/style.css", "text/css"),
        ] {
            assert!(html.contains(&format!("\"{path}\"")), "page links {path}");
            let (ct, body) = get_ok(path).await;
            assert!(ct.starts_with(want_ct), "{path}: {ct}");
            assert!(!body.is_empty());
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_calls_only_the_public_api() {
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(
                !text.contains("//cdn") && !text.contains("http://"),
                "no remote assets"
            );
            assert!(!text.contains("src=\"http") && !text.contains("href=\"http"));
        }
        let calls: Vec<&str> = APP_JS
            .match_indices("fetch(")
            .map(|(i, _)| &APP_JS[i..])
            .collect();
        assert_eq!(calls.len(), 1, "one call site");
        assert!(
            calls[0].starts_with("fetch(`/v1/classify?"),
            "{}",
            &calls[0][..40]
        );
    }
}
