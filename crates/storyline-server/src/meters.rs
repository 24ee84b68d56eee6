//! Prometheus exposition. Metric names are defined once here, with help text; labels are bounded (no ids).
//! The observability work extends this set; the recorder and `/metrics` are in place from the start.

use std::sync::OnceLock;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const EVENTS_PUBLISHED: &str = "storyline_events_published_total";
pub(crate) const IDEMPOTENT_REPLAYS: &str = "storyline_idempotent_replays_total";
pub(crate) const EVENTS_DELIVERED: &str = "storyline_events_delivered_total";
pub(crate) const CONNECTIONS_ACTIVE: &str = "storyline_connections_active";
pub(crate) const CONNECTIONS_OPENED: &str = "storyline_connections_opened_total";
pub(crate) const CONNECTIONS_CLOSED: &str = "storyline_connections_closed_total";
pub(crate) const HTTP_REQUESTS: &str = "storyline_http_requests_total";
pub(crate) const HTTP_DURATION: &str = "storyline_http_request_duration_seconds";
pub(crate) const BUILD_INFO: &str = "storyline_build_info";

/// Request latency buckets, seconds.
const HTTP_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The process-wide Prometheus handle. The `metrics` recorder is global, so it is installed once per process;
/// every server built in the same process (tests build many) renders the same registry.
pub(crate) fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), HTTP_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application); then ours only renders.
            let _ = ::metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(EVENTS_PUBLISHED, Unit::Count, "Events appended to a story log, by the publisher's tier.");
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        Unit::Count,
        "POSTs answered from an earlier append with the same Idempotency-Key."
    );
    describe_counter!(EVENTS_DELIVERED, Unit::Count, "Event frames written to subscriber streams.");
    describe_gauge!(CONNECTIONS_ACTIVE, Unit::Count, "Open SSE streams.");
    describe_counter!(CONNECTIONS_OPENED, Unit::Count, "SSE streams opened.");
    describe_counter!(CONNECTIONS_CLOSED, Unit::Count, "SSE streams closed by the server, by reason.");
    describe_counter!(HTTP_REQUESTS, Unit::Count, "HTTP requests, by route template, method and status.");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration until the response head, by route template and method."
    );
    describe_gauge!(BUILD_INFO, Unit::Count, "Always 1; labels carry the version.");
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    ::metrics::gauge!(CONNECTIONS_ACTIVE).set(0.0);
}

pub(crate) fn counter(name: &'static str) {
    ::metrics::counter!(name).increment(1);
}

pub(crate) fn event_published(tier: crate::auth::Tier) {
    ::metrics::counter!(EVENTS_PUBLISHED, "tier" => tier.as_str()).increment(1);
}

/// Counts an open stream for as long as it lives.
#[derive(Debug)]
pub(crate) struct OpenStream;

impl OpenStream {
    pub(crate) fn open() -> Self {
        ::metrics::counter!(CONNECTIONS_OPENED).increment(1);
        ::metrics::gauge!(CONNECTIONS_ACTIVE).increment(1.0);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        ::metrics::gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
    }
}

pub(crate) fn connection_closed(reason: &'static str) {
    ::metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// Counts one frame written to a stream. This runs once per subscriber per event, so the counter's handle is
/// looked up once per process rather than on every call (a registry lookup is a hash and a lock).
pub(crate) fn delivered() {
    static DELIVERED: OnceLock<::metrics::Counter> = OnceLock::new();
    DELIVERED
        .get_or_init(|| {
            // The recorder must be in place before the handle is taken, or the handle would be a no-op.
            let _ = handle();
            ::metrics::counter!(EVENTS_DELIVERED)
        })
        .increment(1);
}

pub(crate) fn http_request(route: &str, method: &str, status: u16, seconds: f64) {
    ::metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string()).increment(1);
    ::metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method.to_owned()).record(seconds);
}
