//! Least privilege on NATS, refusals: a real nats-server with the per-role users of
//! `nats/auth.conf`, the streams provisioned as `provision`, and real clients of every role. Each
//! role is refused outside its job (the server answers `-ERR 'Permissions Violation ...'`, which
//! async-nats hands to the event callback; a refused JetStream API request gets no answer, and
//! the streams are checked to be untouched). `permissions_jobs.rs` shows each role doing its job.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use clothesline_tests::roles::*;
use futures::StreamExt;
use protocol::names::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_are_refused_outside_their_job() {
    let (nats, admin) = provisioned().await;
    with_queued_work(&nats).await;
    let pull_requests = next_subject(REQUESTS_STREAM, PREPROCESSOR_CONSUMER);
    let pull_tensors = next_subject(TENSORS_STREAM, GPU_WORKER_CONSUMER);

    // The ingress queues requests; it never reads a queue, nor reads the stream's subjects.
    let mut ingress = Role::connect(&nats, "ingress").await;
    ingress.publish_refused(&pull_requests).await;
    ingress.publish_refused(&pull_tensors).await;
    ingress
        .publish_refused(&format!(
            "$JS.API.CONSUMER.INFO.{REQUESTS_STREAM}.{PREPROCESSOR_CONSUMER}"
        ))
        .await;
    ingress.publish_refused(TENSORS_SUBJECT).await;
    ingress.subscribe_refused(REQUESTS_SUBJECT).await;
    ingress.subscribe_refused(TENSORS_SUBJECT).await;
    // Other roles' inboxes and the bulk users' replies are not its to read.
    ingress.subscribe_refused("_INBOX.>").await;
    ingress.subscribe_refused("_INBOX_preprocessor.>").await;
    ingress
        .subscribe_refused("clothesline.replies.bulk.>")
        .await;
    // Through the JetStream API: the refused request is never answered.
    let mut js = ingress.js();
    js.set_timeout(Duration::from_secs(1));
    assert!(
        js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            PREPROCESSOR_CONSUMER,
            REQUESTS_STREAM
        )
        .await
        .is_err()
    );
    ingress
        .violation(
            "Publish",
            &format!("$JS.API.CONSUMER.INFO.{REQUESTS_STREAM}.{PREPROCESSOR_CONSUMER}"),
        )
        .await;

    // The preprocessor pulls requests only: not tensors, and it queues no requests.
    let mut pre = Role::connect(&nats, "preprocessor").await;
    pre.publish_refused(&pull_tensors).await;
    pre.publish_refused(&format!(
        "$JS.ACK.{TENSORS_STREAM}.{GPU_WORKER_CONSUMER}.1.1.1.1.0"
    ))
    .await;
    pre.publish_refused(REQUESTS_SUBJECT).await;
    pre.publish_refused(CANCEL_SUBJECT).await;
    pre.subscribe_refused("clothesline.replies.>").await;
    pre.subscribe_refused(TENSORS_SUBJECT).await;
    pre.subscribe_refused("_INBOX_ingress.>").await;

    // The gpu-worker pulls tensors only, and publishes neither requests nor tensors.
    let mut gpu = Role::connect(&nats, "gpu-worker").await;
    gpu.publish_refused(&pull_requests).await;
    gpu.publish_refused(&format!(
        "$JS.ACK.{REQUESTS_STREAM}.{PREPROCESSOR_CONSUMER}.1.1.1.1.0"
    ))
    .await;
    gpu.publish_refused(REQUESTS_SUBJECT).await;
    gpu.publish_refused(TENSORS_SUBJECT).await;
    gpu.subscribe_refused("clothesline.replies.>").await;

    // Bulk users queue requests and read their own replies, nothing else.
    let mut bulk = Role::connect(&nats, "bulk").await;
    bulk.publish_refused(&pull_requests).await;
    bulk.publish_refused(TENSORS_SUBJECT).await;
    bulk.publish_refused(INGRESS_REQUESTS_SUBJECT).await;
    bulk.publish_refused(SERVICE_SUBJECT).await;
    bulk.subscribe_refused("clothesline.replies.ingress-1")
        .await;
    bulk.subscribe_refused("clothesline.replies.>").await;

    // The results bucket of idempotent requests is the ingress's alone: no other role reads,
    // writes or watches it, and the ingress may not delete it or purge its keys.
    for role in [&mut pre, &mut gpu, &mut bulk] {
        for subject in results_bucket_subjects() {
            role.publish_refused(&subject).await;
        }
    }
    for subject in [
        format!("$JS.API.STREAM.DELETE.{RESULTS_STREAM}"),
        format!("$JS.API.STREAM.PURGE.{RESULTS_STREAM}"),
        format!("$JS.API.STREAM.UPDATE.{RESULTS_STREAM}"),
    ] {
        ingress.publish_refused(&subject).await;
    }

    // Nothing was taken from or added to either queue.
    assert_untouched(&admin).await;
}

/// What using the results bucket takes: a write, a read, a watch, its stream's info.
fn results_bucket_subjects() -> [String; 4] {
    [
        format!("$KV.{RESULTS_BUCKET}.somekey"),
        format!("$JS.API.DIRECT.GET.{RESULTS_STREAM}.$KV.{RESULTS_BUCKET}.somekey"),
        format!("$JS.API.CONSUMER.CREATE.{RESULTS_STREAM}"),
        format!("$JS.API.STREAM.INFO.{RESULTS_STREAM}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_deletes_or_purges_and_only_provision_creates() {
    let (nats, admin) = provisioned().await;
    with_queued_work(&nats).await;
    let streams = [
        (REQUESTS_STREAM, PREPROCESSOR_CONSUMER),
        (TENSORS_STREAM, GPU_WORKER_CONSUMER),
    ];
    for user in [
        "ingress",
        "preprocessor",
        "gpu-worker",
        "public",
        "bulk",
        "provision",
    ] {
        let mut role = Role::connect(&nats, user).await;
        for (stream, consumer) in streams {
            for subject in [
                format!("$JS.API.STREAM.PURGE.{stream}"),
                format!("$JS.API.STREAM.DELETE.{stream}"),
                format!("$JS.API.STREAM.MSG.DELETE.{stream}"),
                format!("$JS.API.CONSUMER.DELETE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.other"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.other"),
            ] {
                role.publish_refused(&subject).await;
            }
            if user != "provision" {
                for subject in [
                    format!("$JS.API.STREAM.CREATE.{stream}"),
                    format!("$JS.API.STREAM.UPDATE.{stream}"),
                    format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                ] {
                    role.publish_refused(&subject).await;
                }
            }
        }
        role.publish_refused("$JS.API.STREAM.CREATE.OTHER").await;
        role.publish_refused("$JS.API.STREAM.LIST").await;
        // And through the JetStream API: refused, so never answered.
        let mut js = role.js();
        js.set_timeout(Duration::from_secs(1));
        assert!(js.delete_stream(REQUESTS_STREAM).await.is_err(), "{user}");
        role.violation(
            "Publish",
            &format!("$JS.API.STREAM.DELETE.{REQUESTS_STREAM}"),
        )
        .await;
    }
    assert_untouched(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_may_only_call_the_service() {
    let (nats, admin) = provisioned().await;
    with_queued_work(&nats).await;

    // The ingress's role serves clothesline.classify through the NATS services API (here
    // async-nats' own; the ingress's ingress/src/micro.rs uses the same subjects, $SRV discovery
    // included), and answers with allow_responses.
    let ingress = Role::connect(&nats, "ingress").await;
    use async_nats::service::ServiceExt;
    let service = ingress
        .client
        .service_builder()
        .start(SERVICE_NAME, "0.0.0")
        .await
        .unwrap();
    let mut endpoint = service
        .endpoint_builder()
        .name("classify")
        .add(SERVICE_SUBJECT)
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            request.respond(Ok("answered".into())).await.unwrap();
        }
    });
    ingress.client.flush().await.unwrap();

    let mut public = Role::connect(&nats, "public").await;
    let answer = tokio::time::timeout(
        WAIT,
        public
            .client
            .request(SERVICE_SUBJECT, r#"{"url":"http://x/a.jpg"}"#.into()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&answer.payload[..], b"answered");

    // Nothing else: no queueing, no reading of replies, queues or the stream API, no discovery.
    public.publish_refused(REQUESTS_SUBJECT).await;
    public.publish_refused(INGRESS_REQUESTS_SUBJECT).await;
    public.publish_refused(TENSORS_SUBJECT).await;
    public.publish_refused(CANCEL_SUBJECT).await;
    public
        .publish_refused("clothesline.replies.ingress-1")
        .await;
    public.subscribe_refused("clothesline.replies.>").await;
    public.subscribe_refused("clothesline.replies.bulk.>").await;
    public.subscribe_refused(REQUESTS_SUBJECT).await;
    public.subscribe_refused(CANCEL_SUBJECT).await;
    public.subscribe_refused(SERVICE_SUBJECT).await;
    public.subscribe_refused("_INBOX_ingress.>").await;
    public
        .publish_refused(&format!("$JS.API.STREAM.INFO.{REQUESTS_STREAM}"))
        .await;
    public
        .publish_refused(&format!("$JS.API.STREAM.MSG.GET.{REQUESTS_STREAM}"))
        .await;
    public
        .publish_refused(&next_subject(REQUESTS_STREAM, PREPROCESSOR_CONSUMER))
        .await;
    public.publish_refused("$SRV.INFO").await;
    for subject in results_bucket_subjects() {
        public.publish_refused(&subject).await;
    }
    let mut js = public.js();
    js.set_timeout(Duration::from_secs(1));
    assert!(js.get_stream(REQUESTS_STREAM).await.is_err());

    assert_untouched(&admin).await;
}
