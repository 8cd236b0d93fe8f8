//! Distributed tracing, shared by every tier: the subscriber (logs, plus the OpenTelemetry layer
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set), and the
//! W3C `traceparent` helpers that join a tier's spans to the caller's across NATS.
//!
//! The exporter speaks OTLP over HTTP/protobuf and is configured by the standard variables:
//! `OTEL_SERVICE_NAME` (default: the tier's name), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio` and `0.1`),
//! `OTEL_BSP_*` for the batch processor. Without an endpoint no exporter, no OpenTelemetry layer
//! and no global tracer are installed: spans are plain `tracing` spans, the helpers below fall
//! back to carrying the caller's `traceparent` (or a fresh one) as text.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::runtime::LogArgs;

/// The instrumentation scope of every clothesline span.
const SCOPE: &str = "clothesline";

/// How long a tier waits, after its drain, for the spans still buffered to be exported: short,
/// so that drain plus flush stay within the grace period Kubernetes and compose give.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The tracer provider, when exporting; flush it with [`Telemetry::shutdown`] before exiting.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Whether the environment asks for an OTLP trace exporter.
pub fn exporter_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

impl Telemetry {
    /// Installs the global subscriber: logs as `log` says, and the OpenTelemetry layer when an
    /// exporter is configured. `service` names the tier when `OTEL_SERVICE_NAME` is unset. An
    /// exporter that cannot be built is logged and left out: tracing never stops a tier.
    pub fn init(log: &LogArgs, service: &str) -> Self {
        let provider = exporter_configured().then(|| build_provider(service));
        let (provider, build_error) = match provider {
            Some(Ok(p)) => (Some(p), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let otel = provider.as_ref().map(|p| {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(p.clone());
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(SCOPE))
                .with_location(false)
                .with_threads(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        tracing_subscriber::registry()
            .with(log.fmt_layer())
            .with(otel)
            .init();
        if let Some(e) = build_error {
            tracing::error!(error = %e, "cannot build the OTLP trace exporter; tracing is off");
        }
        if provider.is_some() {
            tracing::info!("exporting traces over OTLP/HTTP");
        }
        Self { provider }
    }

    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter, waiting at most `within` (on a
    /// thread of its own: the exporter's HTTP client blocks).
    pub async fn shutdown(self, within: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot flush the trace exporter"),
            Err(e) => tracing::warn!(error = %e, "the trace exporter's shutdown failed"),
        }
    }
}

fn build_provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_string());
    }
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG), read by the SDK's default config.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The context a W3C `traceparent` names, as a remote parent; an empty one when it is absent or
/// not of the W3C form (`00-` 32 hex `-` 16 hex `-` 2 hex, lower case).
pub fn parent_context(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent.map(str::trim).filter(|t| well_formed(t)) else {
        return Context::new();
    };
    let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The W3C form, checked strictly: the propagator alone takes short ids (`00-abc-def-01`).
fn well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// Whether `traceparent` is a valid W3C trace context (well formed, ids not all zero).
pub fn valid_traceparent(traceparent: &str) -> bool {
    parent_context(Some(traceparent))
        .span()
        .span_context()
        .is_valid()
}

fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// Makes `span` a child of the caller's `traceparent` (when valid) and returns the
/// `traceparent` to pass downstream: `span`'s own context when exporting, else the caller's, else
/// a fresh one (sampled), so every request has a trace id in its logs and answers. The span's
/// `trace_id` and `span_id` fields, if it declares them, are recorded for the JSON logs.
pub fn adopt(span: &tracing::Span, caller: Option<&str>) -> String {
    let parent = parent_context(caller);
    let remote = parent.span().span_context().clone();
    let _ = span.set_parent(parent);
    let own = span.context().span().span_context().clone();
    let cx = if own.is_valid() {
        own
    } else if remote.is_valid() {
        remote
    } else {
        fresh_context()
    };
    span.record("trace_id", tracing::field::display(cx.trace_id()));
    span.record("span_id", tracing::field::display(cx.span_id()));
    format_traceparent(&cx)
}

/// The `traceparent` of `span` when exporting, for a message published inside it; else
/// `fallback` (what the request came with).
pub fn traceparent_of(span: &tracing::Span, fallback: Option<&str>) -> Option<String> {
    let cx = span.context().span().span_context().clone();
    if cx.is_valid() {
        Some(format_traceparent(&cx))
    } else {
        fallback.map(str::to_string)
    }
}

fn fresh_context() -> SpanContext {
    let ids = RandomIdGenerator::default();
    SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        opentelemetry::trace::TraceFlags::SAMPLED,
        false,
        Default::default(),
    )
}

/// The span context of `span` (invalid when not exporting), e.g. to link another span to it.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Links `span` to the span `to` (e.g. an item to the batch that served it); a no-op when not
/// exporting.
pub fn link(span: &tracing::Span, to: SpanContext) {
    span.add_link(to);
}

/// Records a span that already happened, as a child of `parent`: for intervals measured
/// elsewhere (time in a queue, decode and resize on the blocking pool). A no-op when not
/// exporting.
pub fn past_span(
    parent: &tracing::Span,
    name: &'static str,
    interval: (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
) {
    let parent_cx = parent.context();
    if !parent_cx.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer(SCOPE);
    let mut span = tracer
        .span_builder(name)
        .with_start_time(interval.0)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent_cx);
    span.end_with_timestamp(interval.1.max(interval.0));
}

/// Sets the OpenTelemetry error status and the `error.code` attribute on `span`.
pub fn record_error(span: &tracing::Span, code: &str, message: &str) {
    span.record("error.code", code);
    span.set_status(opentelemetry::trace::Status::error(format!(
        "{code}: {message}"
    )));
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn at_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_format() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(tp));
        assert!(!valid_traceparent("00-abc-def-01"));
        assert!(!valid_traceparent(&tp.to_uppercase()));
        assert!(!valid_traceparent(&format!("{tp}-extra")));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        let cx = parent_context(Some(tp)).span().span_context().clone();
        assert_eq!(format_traceparent(&cx), tp);
    }

    #[test]
    fn without_a_layer_the_caller_is_kept_or_a_trace_is_made() {
        let span = tracing::info_span!("t", trace_id = tracing::field::Empty);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(adopt(&span, Some(tp)), tp);
        let made = adopt(&span, None);
        assert!(valid_traceparent(&made), "{made}");
        assert_ne!(made, adopt(&span, None));
        let bad = adopt(&span, Some("garbage"));
        assert!(valid_traceparent(&bad));
    }
}
