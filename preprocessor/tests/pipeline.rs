//! A request payload -> tensor message, without NATS: uploads, URLs, deadlines, bad requests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use clothesline_preprocessor::{Arrival, DownloadPolicy, Downloader, ImageSpec, Metrics, Pipeline};
use image::{DynamicImage, ImageFormat};
use protocol::manifest::InputSpec;
use protocol::meta::now_ms;
use protocol::{ErrorCode, ModelRef, RequestMeta, TensorMessage};

fn model() -> ModelRef {
    ModelRef {
        name: "clothes".into(),
        version: "7".into(),
    }
}

fn input() -> InputSpec {
    InputSpec {
        height: 224,
        width: 224,
        channels: 3,
        layout: "NHWC".into(),
        dtype: "uint8".into(),
    }
}

fn pipeline(metrics: &Metrics) -> Pipeline {
    let policy = DownloadPolicy {
        allow_private_addresses: true,
        ..DownloadPolicy::default()
    };
    Pipeline::new(
        model(),
        input(),
        ImageSpec::new(224, 224),
        Downloader::new(policy).unwrap(),
        2,
        metrics.clone(),
    )
}

fn png() -> Vec<u8> {
    common::encode(
        &DynamicImage::ImageRgb8(common::gradient(90, 60)),
        ImageFormat::Png,
    )
}

fn arrival() -> Arrival {
    Arrival {
        received_at_ms: now_ms(),
        queue_ms: Some(3.0),
    }
}

#[tokio::test]
async fn uploaded_image_becomes_a_checked_tensor() {
    let metrics = Metrics::new().unwrap();
    let p = pipeline(&metrics);
    let meta =
        RequestMeta::new(protocol::meta::new_request_id()).with_timeout(Duration::from_secs(30));
    let t = p
        .tensor(&meta, Some("image/png"), Bytes::from(png()), arrival())
        .await
        .unwrap();
    t.check(&model(), &input()).unwrap();
    assert_eq!(t.timings.request_queue_ms, Some(3.0));
    assert!(t.timings.download_ms.is_none() && t.timings.preprocess_ms.is_some());
    let back = TensorMessage::decode(&t.encode()).unwrap();
    assert_eq!(back.data, t.data);
    assert_eq!(metrics.decode_seconds.get_sample_count(), 1);
}

#[tokio::test]
async fn url_requests_are_downloaded() {
    let metrics = Metrics::new().unwrap();
    let p = pipeline(&metrics);
    let addr = common::origin::start(png()).await;
    let body = format!(r#"{{"url": "http://{addr}/redirect"}}"#);
    let meta = RequestMeta::new(protocol::meta::new_request_id());
    let t = p
        .tensor(
            &meta,
            Some("application/json"),
            Bytes::from(body),
            arrival(),
        )
        .await
        .unwrap();
    t.check(&model(), &input()).unwrap();
    assert!(t.timings.download_ms.is_some());
    assert_eq!(metrics.downloaded_bytes.get(), png().len() as u64);

    let missing = format!(r#"{{"url": "http://{addr}/missing"}}"#);
    let err = p
        .tensor(&meta, None, Bytes::from(missing), arrival())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OriginError);
}

#[tokio::test]
async fn expired_and_malformed_requests_are_refused() {
    let p = pipeline(&Metrics::new().unwrap());
    let mut expired = RequestMeta::new(protocol::meta::new_request_id());
    expired.deadline = Some(protocol::meta::Deadline::at_ms(now_ms().saturating_sub(1)));
    let err = p
        .tensor(&expired, Some("image/png"), Bytes::from(png()), arrival())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded);

    let meta = RequestMeta::new(protocol::meta::new_request_id());
    let cases: [(Option<&str>, &[u8], ErrorCode); 5] = [
        (Some("application/json"), b"{", ErrorCode::BadRequest),
        (None, br#"{"url": 5}"#, ErrorCode::BadRequest),
        (
            Some("text/plain"),
            b"hello",
            ErrorCode::UnsupportedMediaType,
        ),
        (Some("image/jpeg"), b"hello", ErrorCode::NotAnImage),
        (
            None,
            br#"{"url": "file:///etc/passwd"}"#,
            ErrorCode::InvalidUrl,
        ),
    ];
    for (ct, body, expected) in cases {
        let err = p
            .tensor(&meta, ct, Bytes::from_static(body), arrival())
            .await
            .unwrap_err();
        assert_eq!(
            err.code,
            expected,
            "{ct:?} {:?}",
            String::from_utf8_lossy(body)
        );
    }
}
