//! Trace context (W3C `traceparent`/`tracestate`) across the event's journey: taken from the POST's headers,
//! stored with the event in the broker (its metadata, a field of the stream entry), and restored on every
//! instance that fans the event out, so one trace shows publish -> broker append -> delivery across processes.
//!
//! Spans are `tracing` spans; the binary bridges them to OpenTelemetry (and OTLP) when a collector is
//! configured. Without that bridge these calls cost a span that nobody records, and incoming trace context is
//! still passed on verbatim so that instances which do export can join it.

use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::header::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use storyline_core::{Metadata, StoredEvent};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether storyline's spans are created at all: only when the binary exports traces. Without an exporter a span
/// would only put its fields in front of each log line, and that costs about a third of a POST's CPU time at
/// the default log level (measured: 30 -> 41 µs per POST); so without one there are no spans, and log lines
/// carry no trace ids (there is no trace to look up).
static SPANS: AtomicBool = AtomicBool::new(false);

/// Turns on storyline's request, broker and fan-out spans, for the process. The binary calls this when it
/// installs an OpenTelemetry exporter.
pub fn enable_spans() {
    SPANS.store(true, Ordering::Relaxed);
}

pub(crate) fn spans_enabled() -> bool {
    SPANS.load(Ordering::Relaxed)
}

/// Reads trace context from actix's headers (an `http` 0.2 map, which opentelemetry-http does not cover).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(actix_web::http::header::HeaderName::as_str).collect()
    }
}

/// Reads and writes trace context in an event's metadata.
struct Meta<'a>(&'a mut Metadata);

impl Injector for Meta<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct MetaRef<'a>(&'a Metadata);

impl Extractor for MetaRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

/// The span of one HTTP request (named `<method> <route template>`), a child of the caller's trace when the
/// request carries a `traceparent`. Its `trace_id`/`span_id` fields put the ids on every log line written within
/// the request.
pub(crate) fn request_span(headers: &HeaderMap, method: &str, route: Option<&str>, path: &str) -> tracing::Span {
    if !spans_enabled() {
        return tracing::Span::none();
    }
    let route = route.unwrap_or("unmatched");
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        http.response.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    // Nothing records the span (no exporter, logs below INFO): skip the header parsing too.
    if span.is_disabled() {
        return span;
    }
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if parent.span().span_context().is_valid() {
            // Fails only if the span was already started elsewhere, which it was not.
            let _ = span.set_parent(parent);
        }
    }
    record_ids(&span);
    span
}

/// Records the response status on a request span.
pub(crate) fn finish_request_span(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of a broker call.
pub(crate) fn broker_span(op: &'static str, system: &'static str) -> tracing::Span {
    if !spans_enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "broker",
        otel.name = format!("broker {op}"),
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = op,
        otel.status_code = Empty,
    )
}

/// Stores the current span's trace context in `meta` (the request span's, while a POST is handled); if no
/// tracer records spans, the context the request came with, so the trace can still be joined downstream.
pub(crate) fn inject_current(meta: &mut Metadata, fallback: &HeaderMap) {
    let propagator = TraceContextPropagator::new();
    let current = tracing::Span::current();
    let cx = if current.is_disabled() { Context::new() } else { current.context() };
    if cx.span().span_context().is_valid() {
        propagator.inject_context(&cx, &mut Meta(meta));
    } else if fallback.contains_key("traceparent") {
        let incoming = propagator.extract(&Headers(fallback));
        if incoming.span().span_context().is_valid() {
            propagator.inject_context(&incoming, &mut Meta(meta));
        }
    }
}

/// The trace context an event was published under, if it carries one.
fn context_of(meta: &Metadata) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&MetaRef(meta));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The span of one event's fan-out on this instance, in the trace the event was published under. One per event
/// per instance, however many subscribers: the hub records the subscriber count and the slowest write on it.
pub(crate) fn fan_out_span(event: &StoredEvent) -> tracing::Span {
    if !spans_enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "fan-out",
        otel.name = "fan-out",
        otel.kind = "consumer",
        event.id = %event.id,
        event.type = event.event_type.as_str(),
        storyline.subscribers = Empty,
        storyline.delivered = Empty,
        storyline.slowest_write_ms = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(parent) = context_of(&event.meta) {
        let _ = span.set_parent(parent);
    }
    record_ids(&span);
    span
}

/// Copies the span's OpenTelemetry ids into its `trace_id`/`span_id` fields, for the logs.
fn record_ids(span: &tracing::Span) {
    let cx = span.context();
    let otel = cx.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}
