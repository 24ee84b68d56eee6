//! OTLP trace export, configured by the standard `OTEL_*` environment variables and nothing else:
//!
//! - on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`; with neither endpoint there is no exporter at all;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` (or `_TRACES_PROTOCOL`): `http/protobuf` (the default) or `grpc`;
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `_COMPRESSION` as the OTLP exporter reads them;
//! - `OTEL_SERVICE_NAME` (default `storyline`), `OTEL_RESOURCE_ATTRIBUTES`;
//! - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on), `OTEL_BSP_*` for the
//!   batch processor.
//!
//! Spans are exported in batches from the SDK's own thread, so a slow or absent collector never holds a request.
//! Batches that fail to export are dropped and counted in `storyline_trace_spans_dropped_total`.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};

/// Whether the environment asks for trace export.
fn configured() -> bool {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
        if exporter.eq_ignore_ascii_case("none") {
            return false;
        }
        if !exporter.eq_ignore_ascii_case("otlp") {
            tracing::warn!(exporter, "OTEL_TRACES_EXPORTER names an exporter storyline does not have; using otlp");
        }
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// The tracer provider the environment configures, or `None` when no collector is configured. Must run within a
/// tokio runtime (the gRPC exporter's channel is spawned on it).
pub(crate) fn from_env() -> anyhow::Result<Option<SdkTracerProvider>> {
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .context("OTLP trace exporter (see OTEL_EXPORTER_OTLP_* in the README)")?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("storyline");
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let provider =
        SdkTracerProvider::builder().with_resource(resource.build()).with_batch_exporter(Counted(exporter)).build();
    Ok(Some(provider))
}

/// The layer that turns storyline's `tracing` spans into OpenTelemetry spans. Only storyline's own spans (the
/// request, broker and fan-out spans) are exported, never those of its dependencies (the exporter's own HTTP
/// client among them).
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::{Layer as _, filter::Targets};
    let ours = Targets::new()
        .with_target("storyline", tracing::Level::INFO)
        .with_target("storyline_server", tracing::Level::INFO)
        .with_target("storyline_hub", tracing::Level::INFO);
    tracing_opentelemetry::layer().with_tracer(provider.tracer("storyline")).with_filter(ours)
}

/// Flushes what is queued and stops the exporter. The SDK blocks while it flushes, so this runs off the async
/// workers (which the gRPC exporter needs to make progress).
pub(crate) async fn shutdown(provider: SdkTracerProvider) {
    match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown"),
        Err(e) => tracing::warn!(error = %e, "trace exporter shutdown task"),
    }
}

/// An exporter that counts the spans of batches it failed to export (they are dropped, not retried forever).
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let export = self.0.export(batch);
        async move {
            let result = export.await;
            if let Err(e) = &result {
                storyline_server::trace_spans_dropped(spans);
                tracing::warn!(error = %e, spans, "trace export failed; the batch was dropped");
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}
