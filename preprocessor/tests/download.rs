//! Downloads against a local origin on 127.0.0.1: success, redirects, error statuses, size caps
//! while streaming, timeouts, and the address policy.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clothesline_preprocessor::{DownloadPolicy, Downloader};
use protocol::ErrorCode;

const IMAGE: &[u8] = b"\x89PNG\r\n\x1a\nnot really, but bytes";

fn local_policy() -> DownloadPolicy {
    DownloadPolicy {
        allow_private_addresses: true,
        timeout: Duration::from_secs(30),
        max_bytes: 1 << 20,
        ..DownloadPolicy::default()
    }
}

async fn setup() -> (SocketAddr, Downloader) {
    let addr = common::origin::start(IMAGE.to_vec()).await;
    (addr, Downloader::new(local_policy()).unwrap())
}

async fn code(d: &Downloader, url: &str) -> ErrorCode {
    d.download(url, None).await.expect_err("must fail").code
}

#[tokio::test]
async fn downloads_and_follows_redirects() {
    let (addr, d) = setup().await;
    let got = d
        .download(&format!("http://{addr}/image"), None)
        .await
        .unwrap();
    assert_eq!((&got.bytes[..], got.redirects), (IMAGE, 0));
    for path in ["redirect", "relative-redirect"] {
        let got = d
            .download(&format!("http://{addr}/{path}"), None)
            .await
            .unwrap();
        assert_eq!(&got.bytes[..], IMAGE);
        assert_eq!(got.redirects, 1);
        assert_eq!(got.url.path(), "/image");
    }
}

#[tokio::test]
async fn error_statuses_are_origin_errors() {
    let (addr, d) = setup().await;
    let err = d
        .download(&format!("http://{addr}/missing"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OriginError);
    assert!(err.message.contains("404"), "{}", err.message);
    assert!(!err.is_transient(), "a 404 stays a 404");
    let err = d
        .download(&format!("http://{addr}/broken"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OriginError);
    assert!(err.message.contains("500"), "{}", err.message);
    assert!(err.is_transient(), "a 500 may pass: retried");
    assert_eq!(
        code(&d, &format!("http://{addr}/loop")).await,
        ErrorCode::OriginError
    );
    assert_eq!(
        code(&d, &format!("http://{addr}/to-ftp")).await,
        ErrorCode::InvalidUrl
    );
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused_while_streaming() {
    let (addr, _) = setup().await;
    // Endless: would never finish; the cap is reached long before the timeout.
    let patient = Downloader::new(local_policy()).unwrap();
    assert_eq!(
        code(&patient, &format!("http://{addr}/endless")).await,
        ErrorCode::TooLarge
    );
    // A declared length over the cap is refused before reading the body.
    assert_eq!(
        code(&patient, &format!("http://{addr}/declared-huge")).await,
        ErrorCode::TooLarge
    );
}

#[tokio::test]
async fn slow_origins_time_out() {
    let (addr, _) = setup().await;
    let d = Downloader::new(DownloadPolicy {
        timeout: Duration::from_millis(300),
        ..local_policy()
    })
    .unwrap();
    assert_eq!(
        code(&d, &format!("http://{addr}/slow")).await,
        ErrorCode::DownloadTimeout
    );
    assert_eq!(
        code(&d, &format!("http://{addr}/stall")).await,
        ErrorCode::DownloadTimeout
    );
    // A request deadline shorter than the timeout caps the download.
    let err = d
        .download(
            &format!("http://{addr}/slow"),
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded);
}

#[tokio::test]
async fn unreachable_origins_are_transient() {
    let (_, d) = setup().await;
    // A port nobody listens on: bind, note it, close it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = d
        .download(&format!("http://{closed}/x"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OriginUnreachable, "{}", err.message);
    assert!(err.code.is_transient());
}

#[tokio::test]
async fn private_addresses_are_blocked_unless_allowed() {
    let (addr, _) = setup().await;
    let strict = Downloader::new(DownloadPolicy {
        allow_private_addresses: false,
        ..local_policy()
    })
    .unwrap();
    // An IP literal: refused before connecting.
    assert_eq!(
        code(&strict, &format!("http://{addr}/image")).await,
        ErrorCode::BlockedAddress
    );
    // A name: refused by the resolver (the connection is never made).
    let err = strict
        .download(&format!("http://localhost:{}/image", addr.port()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BlockedAddress, "{}", err.message);
    assert!(!err.code.is_transient());
    assert_eq!(
        code(&strict, "ftp://example.com/a.png").await,
        ErrorCode::InvalidUrl
    );
}

#[test]
fn redirects_to_private_addresses_are_refused() {
    // With private addresses blocked no local origin can be reached at all, so the redirect hop
    // is checked here on its own: it is the function the download loop calls for every
    // redirect. Host names in a Location are refused by the guarded resolver, like the first
    // URL's (see `private_addresses_are_blocked_unless_allowed`).
    use clothesline_preprocessor::net::download::redirect_target;
    use reqwest::{StatusCode, Url};

    let from = Url::parse("http://images.example.com/a/pic.jpg").unwrap();
    let hop = |location: &str, allow_private: bool| {
        redirect_target(&from, StatusCode::FOUND, Some(location), allow_private)
    };
    for private in [
        "http://127.0.0.1:8222/varz",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
        "https://192.168.1.1/",
    ] {
        let err = hop(private, false).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::BlockedAddress,
            "{private}: {}",
            err.message
        );
        assert!(
            hop(private, true).is_ok(),
            "{private} is allowed when private addresses are"
        );
    }
    for scheme in [
        "file:///etc/passwd",
        "gopher://example.com/",
        "ftp://example.com/a",
    ] {
        assert_eq!(
            hop(scheme, false).unwrap_err().code,
            ErrorCode::InvalidUrl,
            "{scheme}"
        );
    }
    // Relative and public targets are followed.
    assert_eq!(
        hop("b.jpg", false).unwrap().as_str(),
        "http://images.example.com/a/b.jpg"
    );
    assert_eq!(
        hop("https://8.8.8.8/x", false).unwrap().as_str(),
        "https://8.8.8.8/x"
    );
    let err = redirect_target(&from, StatusCode::FOUND, None, false).unwrap_err();
    assert_eq!(err.code, ErrorCode::OriginError);
}

/// A TCP server on 127.0.0.1 that answers every connection with `answer` and closes it.
async fn raw_origin(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _read = stream.read(&mut request).await.unwrap_or(0);
                stream.write_all(answer).await.ok();
                stream.shutdown().await.ok();
            });
        }
    });
    addr
}

#[tokio::test]
async fn protocol_failures_are_permanent_origin_errors() {
    let (addr, d) = setup().await;
    // TLS to a plain-HTTP port: the origin answers a ClientHello with an HTTP 400.
    let tls_to_plain = d
        .download(&format!("https://{addr}/image"), None)
        .await
        .unwrap_err();
    assert_eq!(
        tls_to_plain.code,
        ErrorCode::OriginError,
        "{}",
        tls_to_plain.message
    );
    assert!(!tls_to_plain.is_transient(), "{}", tls_to_plain.message);
    assert!(
        tls_to_plain.message.contains("TLS"),
        "{}",
        tls_to_plain.message
    );
    for answer in [
        &b"HTTP/1.1 2OO OK\r\ncontent-length: 1\r\n\r\nx"[..],
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
    ] {
        let addr = raw_origin(answer).await;
        let err = d
            .download(&format!("http://{addr}/image"), None)
            .await
            .unwrap_err();
        let shown = String::from_utf8_lossy(answer);
        assert_eq!(
            err.code,
            ErrorCode::OriginError,
            "{shown:?}: {}",
            err.message
        );
        assert!(!err.is_transient(), "{shown:?}: {}", err.message);
    }
    // A refused connection may succeed later: still transient.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let refused = d
        .download(&format!("http://{closed}/image"), None)
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::OriginUnreachable);
    assert!(refused.is_transient());
}

#[tokio::test]
async fn credentials_in_a_url_never_come_back_in_an_error() {
    let (addr, d) = setup().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for url in [
        format!("http://alice:s3cret@{addr}/missing"),
        format!("https://alice:s3cret@{addr}/image"),
        format!("http://alice:s3cret@{closed}/image"),
        format!("http://alice:s3cret@{addr}/slow"),
        "http://alice:s3cret@[::1/x".to_string(),
    ] {
        let err = d
            .download(&url, Some(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(!err.message.contains("s3cret"), "{url}: {}", err.message);
        assert!(!err.message.contains("alice"), "{url}: {}", err.message);
    }
}
