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
//! - `OTEL_EXPORTER_OTLP_CERTIFICATE` (or `_TRACES_CERTIFICATE`): PEM CA certificate(s) an `https://` collector's
//!   certificate may chain to, besides the system's roots (HTTP/protobuf) or Mozilla's (gRPC).
//!
//! Spans are exported in batches from the SDK's own thread, so a slow or absent collector never holds a request.
//! Spans are dropped, and counted in `storyline_trace_spans_dropped_total`, when their batch fails to export
//! (`reason="export_failed"`) and when they end while the export queue (`OTEL_BSP_MAX_QUEUE_SIZE`) is full
//! (`reason="queue_full"`): the SDK's batch processor drops those silently, so [`Gated`] keeps the count of the
//! spans between ending and export and refuses a span itself when that count is at the queue's size.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor},
};
use storyline_server::SpanDrop;

/// A variable's value, trimmed; `None` when unset or blank.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The traces-specific variable, else the general one (as the OTLP exporter resolves its settings).
fn traces_var(general: &str) -> Option<String> {
    var(&general.replacen("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1)).or_else(|| var(general))
}

/// Whether the environment asks for trace export.
fn configured() -> bool {
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
    let exporter = exporter().context("OTLP trace exporter (see OTEL_EXPORTER_OTLP_* in the README)")?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("storyline");
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let queue = Arc::new(ExportQueue { capacity: queue_capacity(), spans: AtomicUsize::new(0) });
    // The SDK's queue is as large as ours, so the SDK never finds it full: [`Gated`] refuses first, and counts.
    let batches = BatchSpanProcessor::builder(Counted { exporter, queue: Arc::clone(&queue) })
        .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(queue.capacity).build())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_span_processor(Gated { batches, queue })
        .build();
    Ok(Some(provider))
}

/// The OTLP exporter the environment asks for. With an `https://` endpoint: over gRPC, tonic's rustls (ring)
/// with Mozilla's roots; over HTTP, reqwest's client with the system's roots. Either way a CA named by
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` is trusted too.
fn exporter() -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::{WithHttpConfig as _, WithTonicConfig as _};
    let ca = match traces_var("OTEL_EXPORTER_OTLP_CERTIFICATE") {
        Some(path) => Some(std::fs::read(&path).with_context(|| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {path:?}"))?),
        None => None,
    };
    let grpc = traces_var("OTEL_EXPORTER_OTLP_PROTOCOL").is_some_and(|p| p.eq_ignore_ascii_case("grpc"));
    let https =
        traces_var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|e| e.to_ascii_lowercase().starts_with("https://"));
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match (grpc, ca) {
        (true, ca) if https => {
            use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(pem) = ca {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            builder.with_tonic().with_tls_config(tls).build()?
        }
        (false, Some(pem)) => {
            let tls = storyline_client::rustls_config_with_roots(&pem)
                .context("OTEL_EXPORTER_OTLP_CERTIFICATE holds no usable CA certificate")?;
            builder.with_http().with_http_client(blocking_client(tls, export_timeout())?).build()?
        }
        _ => builder.build()?,
    };
    Ok(exporter)
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` (or `_TRACES_TIMEOUT`), milliseconds, as the exporter reads it; 10 s by default.
fn export_timeout() -> Duration {
    traces_var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The blocking reqwest client the OTLP/HTTP exporter uses, with our TLS. Built on a thread of its own: a blocking
/// client must not be built on an async worker (it runs a runtime of its own), as opentelemetry-otlp does too.
fn blocking_client(tls: rustls::ClientConfig, timeout: Duration) -> anyhow::Result<reqwest::blocking::Client> {
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder().timeout(timeout).tls_backend_preconfigured(tls).build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread building the OTLP/HTTP client panicked"))?
    .context("the OTLP/HTTP client")
}

/// `OTEL_BSP_MAX_QUEUE_SIZE` as the SDK reads it (2048 by default).
fn queue_capacity() -> usize {
    var("OTEL_BSP_MAX_QUEUE_SIZE").and_then(|n| n.parse().ok()).unwrap_or(2048)
}

/// The spans between ending and being handed to the exporter: in the batch processor's queue, or taken from it
/// into the batch about to be exported.
#[derive(Debug)]
struct ExportQueue {
    capacity: usize,
    spans: AtomicUsize,
}

/// The batch processor behind a gate that counts what it refuses. A span that ends while `capacity` spans wait
/// for export is dropped here and counted (`queue_full`); every other span goes to the batch processor, whose
/// queue then always has room (it holds at most the spans counted here), so nothing is dropped uncounted. The
/// batch being exported counts against the queue until the exporter takes it, so spans are refused up to one
/// batch earlier than the SDK alone would.
#[derive(Debug)]
struct Gated {
    batches: BatchSpanProcessor,
    queue: Arc<ExportQueue>,
}

impl SpanProcessor for Gated {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.batches.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let capacity = self.queue.capacity;
        let admitted = self
            .queue
            .spans
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| (queued < capacity).then_some(queued + 1))
            .is_ok();
        if admitted {
            self.batches.on_end(span);
        } else {
            storyline_server::trace_spans_dropped(SpanDrop::QueueFull, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.batches.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.batches.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.batches.set_resource(resource);
    }
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

/// An exporter that takes the spans it is handed off the [`ExportQueue`] count, and counts the spans of batches
/// it failed to export (they are dropped, not retried forever).
#[derive(Debug)]
struct Counted<E> {
    exporter: E,
    queue: Arc<ExportQueue>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        // Saturating: spans the SDK exports without their passing the gate (none today) cannot wrap the count.
        let _ = self.queue.spans.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(spans)));
        let export = self.exporter.export(batch);
        async move {
            let result = export.await;
            if let Err(e) = &result {
                storyline_server::trace_spans_dropped(SpanDrop::ExportFailed, spans);
                tracing::warn!(error = %e, spans, "trace export failed; the batch was dropped");
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}
