//! Distributed traces through the real stack: every tier exports OTLP/HTTP to a receiver in the
//! test, and one request makes one trace: the ingress's request and publish spans, the
//! preprocessor's spans as their children, the gpu-worker's as the preprocessor's, the batch span
//! linked from the item; a failing request's error code on its spans; the `traceparent` in every
//! answer; and nothing exported at sampling ratio 0.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use clothesline_tests::files::FileServer;
use clothesline_tests::otlp::{OtlpReceiver, ReceivedSpan};
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};
use clothesline_tests::wait_until;
use futures::StreamExt as _;
use protocol::names::{
    CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE, HEADER_ERROR, HEADER_REPLY_TO, HEADER_REQUEST_ID,
    HEADER_TRACEPARENT, REQUESTS_SUBJECT,
};

const SERVICES: [&str; 3] = [
    "clothesline-ingress",
    "clothesline-preprocessor",
    "clothesline-gpu-worker",
];

/// A JPEG of the validation split and an HTML page, served from a temp folder.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pants = paths::dataset().join("validation/pants");
    let mut jpegs: Vec<_> = std::fs::read_dir(&pants)
        .unwrap_or_else(|e| panic!("{}: {e} (is ../shared there?)", pants.display()))
        .map(|e| e.unwrap().path())
        .collect();
    jpegs.sort();
    std::fs::copy(&jpegs[0], dir.path().join("pants.jpg")).unwrap();
    std::fs::write(dir.path().join("page.html"), "<html>not an image</html>").unwrap();
    dir
}

fn otel_env(receiver: &OtlpReceiver, sampler: &str, arg: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_TRACES_SAMPLER", sampler.to_string()),
        ("OTEL_TRACES_SAMPLER_ARG", arg.to_string()),
        // Export within 100 ms of a span's end, so the test waits little.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn start(dir: &Path, env: Vec<(String, String)>) -> (FileServer, Stack) {
    let files = FileServer::serve(dir).await;
    let json_logs = || vec!["--log-format".to_string(), "json".to_string()];
    let stack = Stack::start(StackOptions {
        env,
        ingress_args: json_logs(),
        preprocessor_args: json_logs(),
        ..StackOptions::default()
    })
    .await;
    (files, stack)
}

/// `POST /v1/classify {"url"}` with an optional `traceparent`: status, the answer's
/// `traceparent`, body.
async fn classify(
    stack: &Stack,
    url: &str,
    traceparent: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let mut req = stack
        .http
        .post(stack.ingress.url("/v1/classify"))
        .json(&serde_json::json!({ "url": url }));
    if let Some(t) = traceparent {
        req = req.header("traceparent", t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let tp = res
        .headers()
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, tp, res.json().await.unwrap())
}

/// The trace id of a `traceparent`.
fn trace_id(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {traceparent:?}");
    assert_eq!(parts[1].len(), 32, "traceparent {traceparent:?}");
    parts[1].to_string()
}

/// Waits until the receiver holds the spans of trace `id` named in `names`, and returns all of
/// that trace's spans.
async fn spans_of(receiver: &OtlpReceiver, id: &str, names: &[&str]) -> Vec<ReceivedSpan> {
    wait_until(
        &format!("spans {names:?} of trace {id}"),
        Duration::from_secs(30),
        || async {
            let spans: Vec<_> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == id)
                .collect();
            let have: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            names.iter().all(|n| have.contains(n)).then_some(spans)
        },
    )
    .await
}

/// The spans of a JSON log line: its `span` and those in `spans` (empty for an event with an
/// explicit parent).
fn spans_in(line: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    std::iter::once(&line["span"]).chain(line["spans"].as_array().into_iter().flatten())
}

/// The first JSON log line saying `request failed` within the trace `id`.
fn log_line_of(log: &str, id: &str) -> Option<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"] == "request failed" && spans_in(v).any(|s| s["trace_id"] == id)
        })
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

/// Whether `child`'s chain of parents within `spans` reaches `ancestor`.
fn descends_from(spans: &[ReceivedSpan], child: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut at = child;
    for _ in 0..spans.len() {
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

const ITEM_SPANS: [&str; 3] = [
    "ingress.request",
    "preprocessor.request",
    "gpu_worker.request",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_the_three_tiers() {
    let dir = files();
    let receiver = OtlpReceiver::start().await;
    let (files, stack) = start(dir.path(), otel_env(&receiver, "parentbased_always_on", "")).await;

    // No traceparent from the caller: the ingress makes one and returns it.
    let (status, tp, body) = classify(&stack, &files.url("pants.jpg"), None).await;
    assert_eq!(status, 200, "{body}");
    let id = trace_id(&tp);
    let all = [
        &ITEM_SPANS[..],
        &[
            "ingress.publish",
            "preprocessor.queue_wait",
            "preprocessor.download",
            "preprocessor.decode",
            "preprocessor.resize",
            "preprocessor.publish_tensor",
            "gpu_worker.queue_wait",
            "gpu_worker.batch_wait",
            "gpu_worker.reply",
        ],
    ]
    .concat();
    let spans = spans_of(&receiver, &id, &all).await;
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, SERVICES.into_iter().collect(), "{spans:#?}");

    let (ingress, pre, gpu) = (
        one(&spans, ITEM_SPANS[0]),
        one(&spans, ITEM_SPANS[1]),
        one(&spans, ITEM_SPANS[2]),
    );
    assert_eq!(ingress.parent_span_id, "", "the ingress's span is the root");
    assert_eq!(ingress.attributes["http.route"], "/v1/classify");
    assert_eq!(ingress.attributes["http.response.status_code"], "200");
    assert!(descends_from(&spans, pre, ingress), "{spans:#?}");
    assert!(descends_from(&spans, gpu, pre), "{spans:#?}");
    assert_eq!(tp.split('-').nth(2), Some(ingress.span_id.as_str()));
    for (name, parent) in [
        ("preprocessor.download", pre),
        ("preprocessor.decode", pre),
        ("preprocessor.resize", pre),
        ("gpu_worker.batch_wait", gpu),
        ("gpu_worker.reply", gpu),
    ] {
        assert_eq!(one(&spans, name).parent_span_id, parent.span_id, "{name}");
    }
    assert_eq!(
        pre.attributes["request_id"],
        body["request_id"].as_str().unwrap()
    );

    // The batch is a trace of its own (it serves many), linked from the item and to it.
    let batch = receiver
        .spans()
        .into_iter()
        .find(|s| {
            s.name == "gpu_worker.batch" && s.links.contains(&(id.clone(), gpu.span_id.clone()))
        })
        .unwrap_or_else(|| panic!("no batch span linked to item {}", gpu.span_id));
    assert!(
        gpu.links
            .contains(&(batch.trace_id.clone(), batch.span_id.clone())),
        "{gpu:#?}"
    );
    assert_eq!(batch.attributes["batch.size"], "1");
    assert!(!batch.attributes["model.version"].is_empty());

    // The caller's traceparent is honoured: same trace, the ingress's span its child.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, tp, body) = classify(&stack, &files.url("pants.jpg"), Some(caller)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(trace_id(&tp), "4bf92f3577b34da6a3ce929d0e0e4736");
    let spans = spans_of(&receiver, "4bf92f3577b34da6a3ce929d0e0e4736", &ITEM_SPANS).await;
    assert_eq!(
        one(&spans, ITEM_SPANS[0]).parent_span_id,
        "00f067aa0ba902b7"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_carries_its_error_code_and_traceparent() {
    let dir = files();
    let receiver = OtlpReceiver::start().await;
    let (files, stack) = start(dir.path(), otel_env(&receiver, "always_on", "")).await;

    let (status, tp, body) = classify(&stack, &files.url("page.html"), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("not_an_image")),
        "{body}"
    );
    let id = trace_id(&tp);
    let names = [
        "ingress.request",
        "preprocessor.request",
        "preprocessor.download",
    ];
    let spans = spans_of(&receiver, &id, &names).await;
    for name in ["ingress.request", "preprocessor.request"] {
        let span = one(&spans, name);
        assert_eq!(
            span.attributes.get("error.code").map(String::as_str),
            Some("not_an_image"),
            "{span:#?}"
        );
        assert_eq!(span.status_code, 2, "{name}: status error");
    }
    assert_eq!(
        one(&spans, "ingress.request").attributes["http.response.status_code"],
        "422"
    );

    // The JSON logs of the failure name the request, its trace and its span, in both tiers.
    let request_id = one(&spans, "preprocessor.request").attributes["request_id"].clone();
    for (tier, name) in [
        (&stack.ingress, "ingress.request"),
        (&stack.preprocessors[0], "preprocessor.request"),
    ] {
        let what = format!("{}'s JSON log of the failure", tier.name);
        let line = wait_until(&what, Duration::from_secs(10), || async {
            log_line_of(&tier.log_text().unwrap_or_default(), &id)
        })
        .await;
        let has =
            |field: &str, want: &str| spans_in(&line).any(|s| s[field].as_str() == Some(want));
        assert!(has("span_id", &one(&spans, name).span_id), "{line}");
        assert!(has("request_id", &request_id), "{line}");
    }

    // The preprocessor's error reply to a plain NATS client carries the request's traceparent.
    let nats = stack.nats.client().await;
    // A plain client on the public lane answers under clothesline.replies.bulk. (see #22).
    let subject = "clothesline.replies.bulk.tracing-test";
    let mut replies = nats.subscribe(subject).await.unwrap();
    let sent = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_REQUEST_ID, "tracing-plain-1");
    headers.insert(HEADER_REPLY_TO, subject);
    headers.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
    headers.insert(HEADER_TRACEPARENT, sent);
    let payload = serde_json::json!({ "url": files.url("page.html") }).to_string();
    let js = async_nats::jetstream::new(nats.clone());
    let ack = js
        .publish_with_headers(REQUESTS_SUBJECT, headers, payload.into())
        .await
        .unwrap();
    ack.await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("an error reply within 30 s")
        .unwrap();
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    assert_eq!(header(HEADER_ERROR).as_deref(), Some("not_an_image"));
    assert_eq!(header(HEADER_TRACEPARENT).as_deref(), Some(sent));

    // A refusal before admission (bad timeout header) still answers with a traceparent.
    let res = stack
        .http
        .post(stack.ingress.url("/v1/classify"))
        .header("x-request-timeout-ms", "soon")
        .json(&serde_json::json!({ "url": files.url("pants.jpg") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let tp = res
        .headers()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let spans = spans_of(&receiver, &trace_id(&tp), &["ingress.request"]).await;
    assert_eq!(
        one(&spans, "ingress.request").attributes["error.code"],
        "bad_request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_at_zero_exports_nothing() {
    let dir = files();
    let receiver = OtlpReceiver::start().await;
    let (files, stack) = start(
        dir.path(),
        otel_env(&receiver, "parentbased_traceidratio", "0"),
    )
    .await;

    let (status, tp, body) = classify(&stack, &files.url("pants.jpg"), None).await;
    assert_eq!(status, 200, "{body}");
    let unsampled = trace_id(&tp);
    assert!(tp.ends_with("-00"), "not sampled: {tp}");

    // A marker: a caller's sampled traceparent is honoured (parent based). Spans are exported
    // in the order they end, so once the marker's gpu-worker spans are in, the first request's
    // would be too, had they been exported.
    let marker = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, _, body) = classify(&stack, &files.url("pants.jpg"), Some(marker)).await;
    assert_eq!(status, 200, "{body}");
    spans_of(&receiver, "0af7651916cd43dd8448eb211c80319c", &ITEM_SPANS).await;
    let leaked: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| {
            s.trace_id == unsampled
                || s.name == "gpu_worker.batch" && s.links.iter().any(|l| l.0 == unsampled)
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "spans of an unsampled request: {leaked:#?}"
    );
}
