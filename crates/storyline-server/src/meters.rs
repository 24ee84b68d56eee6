//! Prometheus exposition. Metric names are defined once here, with help text; labels are bounded (no ids).
//! The observability work extends this set; the recorder and `/metrics` are in place from the start.

use std::sync::OnceLock;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use storyline_hub::{EventMeters, ResumeOutcome};

use crate::auth::Tier;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const EVENTS_PUBLISHED: &str = "storyline_events_published_total";
pub(crate) const IDEMPOTENT_REPLAYS: &str = "storyline_idempotent_replays_total";
pub(crate) const EVENTS_DELIVERED: &str = "storyline_events_delivered_total";
pub(crate) const CONNECTIONS_ACTIVE: &str = "storyline_connections_active";
pub(crate) const CONNECTIONS_OPENED: &str = "storyline_connections_opened_total";
pub(crate) const CONNECTIONS_CLOSED: &str = "storyline_connections_closed_total";
pub(crate) const HTTP_REQUESTS: &str = "storyline_http_requests_total";
pub(crate) const HTTP_DURATION: &str = "storyline_http_request_duration_seconds";
pub(crate) const CONNECTION_DURATION: &str = "storyline_connection_duration_seconds";
pub(crate) const STREAM_OPEN_FAILURES: &str = "storyline_stream_open_failures_total";
pub(crate) const BROKER_DURATION: &str = "storyline_broker_operation_duration_seconds";
pub(crate) const BROKER_ERRORS: &str = "storyline_broker_errors_total";
pub(crate) const BROKER_UP: &str = "storyline_broker_up";
pub(crate) const PUBLISH_DURATION: &str = "storyline_publish_duration_seconds";
pub(crate) const ACTIVE_STORIES: &str = "storyline_active_stories";
pub(crate) const DELIVERY_LATENCY: &str = "storyline_delivery_latency_seconds";
pub(crate) const RESUMES: &str = "storyline_resumes_total";
pub(crate) const REPLAYED_EVENTS: &str = "storyline_replayed_events_total";
pub(crate) const SUBSCRIBER_LAG: &str = "storyline_subscriber_lag_events";
pub(crate) const TRACE_SPANS_DROPPED: &str = "storyline_trace_spans_dropped_total";
pub(crate) const BUILD_INFO: &str = "storyline_build_info";
pub(crate) const AUDIT_EVENTS: &str = "storyline_audit_events_total";
pub(crate) const JWKS_REFRESH_FAILURES: &str = "storyline_jwks_refresh_failures_total";
pub(crate) const RUNTIME_ALIVE_TASKS: &str = "storyline_runtime_alive_tasks";
pub(crate) const RATE_LIMIT_FALLBACKS: &str = "storyline_rate_limit_fallback_total";

/// How long streams stay open, seconds: from a reconnect loop (under a second) to a reader who stays all day.
const CONNECTION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 86400.0];

/// Broker call buckets, seconds: from an in-memory append (microseconds) to a Redis call near its timeout.
const BROKER_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Delivery latency buckets, seconds. 0.2 is the SLO's threshold (99.9% within 200 ms) and 0.5 the p99 alert's,
/// so both are exact bucket boundaries rather than interpolations.
const DELIVERY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0];

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
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(CONNECTION_DURATION.to_owned()), CONNECTION_BUCKETS)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BROKER_DURATION.to_owned()), BROKER_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PUBLISH_DURATION.to_owned()), HTTP_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.to_owned()), DELIVERY_BUCKETS))
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
    describe_counter!(
        EVENTS_PUBLISHED,
        Unit::Count,
        "Events appended to a story log, by story namespace and event type (each capped; the rest are `other`) and \
         the publisher's tier."
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        Unit::Count,
        "POSTs answered from an earlier append with the same Idempotency-Key."
    );
    describe_counter!(
        EVENTS_DELIVERED,
        Unit::Count,
        "Event frames written to subscriber streams, by story namespace and event type (capped as for published)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From the POST's acceptance (the event's ts, wall clock, millisecond resolution) to the frame handed to the \
         subscriber's connection, for every delivery (not sampled), by story namespace. Across instances it \
         includes their clock offset."
    );
    describe_counter!(
        RESUMES,
        Unit::Count,
        "Streams opened with a resume id (Last-Event-ID), by outcome: exact (delivery continued right after the \
         reader's last event) or gap (retention had removed events the reader had not seen; it got a gap frame)."
    );
    describe_counter!(
        REPLAYED_EVENTS,
        Unit::Count,
        "Events read back from the log for readers behind the live window (resumes from older points, readers that \
         fell behind)."
    );
    describe_gauge!(
        SUBSCRIBER_LAG,
        Unit::Count,
        "The most events any subscriber of this instance had yet to receive when it read, since the previous \
         scrape (for a reader catching up from the log, a lower bound). 0: every reader that read was at the head."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, Unit::Count, "Open SSE streams, by the reader's tier.");
    describe_counter!(CONNECTIONS_OPENED, Unit::Count, "SSE streams opened, by the reader's tier.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "SSE streams closed, by tier and reason: client (the reader went away), shutdown (drain), slow_consumer \
         (socket not drained), token_expired, token_revoked. (A broker outage never ends a stream: it waits and \
         catches up.)"
    );
    describe_histogram!(CONNECTION_DURATION, Unit::Seconds, "How long SSE streams stayed open, by the reader's tier.");
    describe_counter!(
        STREAM_OPEN_FAILURES,
        Unit::Count,
        "Stream opens that failed before the stream started, by reason: auth (401/403), bad_request (bad story or \
         resume id), limit (rate, per-principal or instance limits), shutdown (draining), broker, error."
    );
    describe_counter!(HTTP_REQUESTS, Unit::Count, "HTTP requests, by route template, method and status.");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration until the response head, by route template and method."
    );
    describe_counter!(
        AUDIT_EVENTS,
        Unit::Count,
        "Audit events (auth failures, access denials, rate-limit rejections, admin actions), by event and reason."
    );
    describe_counter!(
        JWKS_REFRESH_FAILURES,
        Unit::Count,
        "JWKS file reads or URL fetches that failed; the keys already in force stay in use."
    );
    describe_histogram!(BROKER_DURATION, Unit::Seconds, "Broker calls (append, read, bounds, ping), by op.");
    describe_counter!(BROKER_ERRORS, Unit::Count, "Broker calls that failed, by op (tail: errors while tailing).");
    describe_gauge!(
        BROKER_UP,
        Unit::Count,
        "1 if the last broker call succeeded, 0 if it found the broker unavailable."
    );
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "From a POST's arrival to the broker's acknowledgement of the append (accepted events only)."
    );
    describe_gauge!(ACTIVE_STORIES, Unit::Count, "Stories with at least one open stream on this instance.");
    describe_counter!(
        TRACE_SPANS_DROPPED,
        Unit::Count,
        "Trace spans dropped, by reason: export_failed (their batch failed to export: collector down or \
         refusing), queue_full (ended while the export queue was full: the collector is slower than the spans \
         come); the service is unaffected."
    );
    for reason in SpanDrop::ALL {
        ::metrics::counter!(TRACE_SPANS_DROPPED, "reason" => reason.as_str()).absolute(0);
    }
    describe_gauge!(
        RUNTIME_ALIVE_TASKS,
        Unit::Count,
        "Tokio tasks alive on this process's runtimes (every HTTP worker's and the background one), sampled when \
         /metrics is scraped: open streams, their broker tails and timers, in-flight requests. Steady under steady \
         load; a count that keeps growing is a task leak."
    );
    ::metrics::gauge!(RUNTIME_ALIVE_TASKS).set(0.0);
    describe_gauge!(BUILD_INFO, Unit::Count, "Always 1; labels carry the version.");
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Every tier's series exists from the start (at 0), so dashboards and alerts see "none" rather than "no data".
    for tier in [Tier::Guest, Tier::Member, Tier::Agent, Tier::Admin] {
        ::metrics::gauge!(CONNECTIONS_ACTIVE, "tier" => tier.as_str()).set(0.0);
        ::metrics::counter!(CONNECTIONS_OPENED, "tier" => tier.as_str()).absolute(0);
        for reason in CloseReason::ALL {
            ::metrics::counter!(CONNECTIONS_CLOSED, "tier" => tier.as_str(), "reason" => reason.as_str()).absolute(0);
        }
    }
    // Likewise the failure counters, so that a first burst is a rate, not a series appearing from nothing.
    for reason in OPEN_FAILURE_REASONS {
        ::metrics::counter!(STREAM_OPEN_FAILURES, "reason" => *reason).absolute(0);
    }
    for op in crate::metered::OPS {
        ::metrics::counter!(BROKER_ERRORS, "op" => *op).absolute(0);
    }
    for outcome in [ResumeOutcome::Exact, ResumeOutcome::Gap] {
        ::metrics::counter!(RESUMES, "outcome" => outcome_label(outcome)).absolute(0);
    }
    ::metrics::counter!(REPLAYED_EVENTS).absolute(0);
    describe_counter!(
        RATE_LIMIT_FALLBACKS,
        Unit::Count,
        "Publish rate-limit checks decided by this instance's own limiter because the shared store (Redis) did not \
         answer in time, by limit (publish_rate_per_sub, publish_rate_per_story)."
    );
    for limit in [crate::limits::Limit::PublishPerSub, crate::limits::Limit::PublishPerStory] {
        ::metrics::counter!(RATE_LIMIT_FALLBACKS, "limit" => limit.as_str()).absolute(0);
    }
    ::metrics::gauge!(SUBSCRIBER_LAG).set(0.0);
}

/// The process's CPU time, resident memory, open file descriptors and their limit, threads and start time
/// (`process_*`, the Prometheus client conventions), sampled when `/metrics` is scraped.
pub(crate) fn collect_process() {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR
        .get_or_init(|| {
            let _ = handle();
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
    collect_runtime_tasks();
}

/// The tokio runtimes the servers of this process run on, each with the number of registrations holding it.
fn runtimes() -> &'static std::sync::Mutex<Vec<(tokio::runtime::Handle, usize)>> {
    static RUNTIMES: OnceLock<std::sync::Mutex<Vec<(tokio::runtime::Handle, usize)>>> = OnceLock::new();
    RUNTIMES.get_or_init(|| std::sync::Mutex::new(Vec::new()))
}

/// Counts the current tokio runtime in `storyline_runtime_alive_tasks` for as long as it lives. Each HTTP worker
/// holds one in its app data (dropped when the worker stops), the server state one for the background runtime;
/// a runtime registered twice is counted once.
#[derive(Debug)]
pub(crate) struct RuntimeRegistration(tokio::runtime::Id);

impl RuntimeRegistration {
    /// `None` outside a tokio runtime.
    pub(crate) fn current() -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let id = handle.id();
        let mut runtimes = runtimes().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match runtimes.iter_mut().find(|(h, _)| h.id() == id) {
            Some((_, count)) => *count += 1,
            None => runtimes.push((handle, 1)),
        }
        Some(Self(id))
    }
}

impl Drop for RuntimeRegistration {
    fn drop(&mut self) {
        let mut runtimes = runtimes().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = runtimes.iter().position(|(h, _)| h.id() == self.0) {
            runtimes[at].1 -= 1;
            if runtimes[at].1 == 0 {
                runtimes.swap_remove(at);
            }
        }
    }
}

/// Sets `storyline_runtime_alive_tasks`: one atomic read per registered runtime.
fn collect_runtime_tasks() {
    let alive: usize = runtimes()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(handle, _)| handle.metrics().num_alive_tasks())
        .sum();
    #[allow(clippy::cast_precision_loss)] // a count of tasks, far below 2^52
    ::metrics::gauge!(RUNTIME_ALIVE_TASKS).set(alive as f64);
}

pub(crate) fn broker_call(op: &'static str, seconds: f64, error: Option<&storyline_core::BrokerError>) {
    ::metrics::histogram!(BROKER_DURATION, "op" => op).record(seconds);
    match error {
        // A reused Idempotency-Key is the client's fault, answered by a healthy broker: not a broker error.
        None | Some(storyline_core::BrokerError::IdempotencyKeyMismatch) => ::metrics::gauge!(BROKER_UP).set(1.0),
        Some(error) => broker_error(op, error),
    }
}

pub(crate) fn broker_error(op: &'static str, error: &storyline_core::BrokerError) {
    ::metrics::counter!(BROKER_ERRORS, "op" => op).increment(1);
    if matches!(error, storyline_core::BrokerError::Unavailable(_) | storyline_core::BrokerError::Unconfirmed(_)) {
        ::metrics::gauge!(BROKER_UP).set(0.0);
    }
}

pub(crate) fn publish_duration(seconds: f64) {
    ::metrics::histogram!(PUBLISH_DURATION).record(seconds);
}

pub(crate) fn active_stories(count: usize) {
    #[allow(clippy::cast_precision_loss)] // a count of stories, far below 2^52
    ::metrics::gauge!(ACTIVE_STORIES).set(count as f64);
}

/// A publish limit decided locally because the shared store did not answer.
pub(crate) fn rate_limit_fallback(limit: crate::limits::Limit) {
    ::metrics::counter!(RATE_LIMIT_FALLBACKS, "limit" => limit.as_str()).increment(1);
}

pub(crate) fn counter(name: &'static str) {
    ::metrics::counter!(name).increment(1);
}

pub(crate) fn audit_event(event: &'static str, reason: &'static str) {
    ::metrics::counter!(AUDIT_EVENTS, "event" => event, "reason" => reason).increment(1);
}

/// The label value of what clients name (story namespaces, event types): the value itself for the first
/// `max` distinct values this process sees, `other` for the rest, so clients cannot grow the label set.
#[derive(Debug)]
pub(crate) struct CappedLabel {
    max: usize,
    seen: std::sync::RwLock<std::collections::HashSet<std::sync::Arc<str>>>,
}

/// What a label holds past its cap.
pub(crate) const OTHER: &str = "other";

impl CappedLabel {
    pub(crate) fn new(max: usize) -> Self {
        Self { max, seen: std::sync::RwLock::new(std::collections::HashSet::new()) }
    }

    pub(crate) fn value(&self, raw: &str) -> ::metrics::SharedString {
        if let Ok(seen) = self.seen.read()
            && let Some(known) = seen.get(raw)
        {
            return ::metrics::SharedString::from(std::sync::Arc::clone(known));
        }
        match self.seen.write() {
            Ok(mut seen) if seen.len() < self.max => {
                let value: std::sync::Arc<str> = raw.into();
                seen.insert(std::sync::Arc::clone(&value));
                ::metrics::SharedString::from(value)
            }
            _ => ::metrics::SharedString::const_str(OTHER),
        }
    }
}

/// The bounded labels of story events.
#[derive(Debug)]
pub(crate) struct EventLabels {
    pub(crate) namespaces: CappedLabel,
    pub(crate) event_types: CappedLabel,
}

pub(crate) fn event_published(
    labels: &EventLabels,
    story: &storyline_core::StoryId,
    event_type: &storyline_core::EventType,
    tier: crate::auth::Tier,
) {
    ::metrics::counter!(
        EVENTS_PUBLISHED,
        "namespace" => labels.namespaces.value(story.namespace()),
        "event_type" => labels.event_types.value(event_type.as_str()),
        "tier" => tier.as_str()
    )
    .increment(1);
}

/// Why a stream ended (the `reason` label of `storyline_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The reader went away (or the stream ended for no reason of the server's).
    Client,
    Shutdown,
    SlowConsumer,
    TokenExpired,
    TokenRevoked,
}

impl CloseReason {
    const ALL: [Self; 5] = [Self::Client, Self::Shutdown, Self::SlowConsumer, Self::TokenExpired, Self::TokenRevoked];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
        }
    }
}

/// Counts an open stream for as long as it lives: active and opened by tier; when dropped, closed by tier and
/// [`OpenStream::reason`], and its duration.
///
/// It lives in every open stream, so it is small: the open time is kept in tenths of a second since the process
/// started (a `u32`: 13 years), not as a 16-byte `Instant`; the duration buckets start at one second.
#[derive(Debug)]
pub(crate) struct OpenStream {
    opened_ds: u32,
    tier: crate::auth::Tier,
    /// Why it ends; `Client` unless the server ends it.
    pub(crate) reason: CloseReason,
}

/// Tenths of a second since the first call in this process.
fn deciseconds() -> u32 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    u32::try_from(elapsed.as_millis() / 100).unwrap_or(u32::MAX)
}

impl OpenStream {
    pub(crate) fn open(tier: crate::auth::Tier) -> Self {
        ::metrics::counter!(CONNECTIONS_OPENED, "tier" => tier.as_str()).increment(1);
        ::metrics::gauge!(CONNECTIONS_ACTIVE, "tier" => tier.as_str()).increment(1.0);
        Self { opened_ds: deciseconds(), tier, reason: CloseReason::Client }
    }
}

impl OpenStream {
    /// How long the stream has been open, in seconds (tenths of a second resolution).
    pub(crate) fn seconds_open(&self) -> f64 {
        f64::from(deciseconds().saturating_sub(self.opened_ds)) / 10.0
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let tier = self.tier.as_str();
        ::metrics::gauge!(CONNECTIONS_ACTIVE, "tier" => tier).decrement(1.0);
        ::metrics::counter!(CONNECTIONS_CLOSED, "tier" => tier, "reason" => self.reason.as_str()).increment(1);
        ::metrics::histogram!(CONNECTION_DURATION, "tier" => tier).record(self.seconds_open());
    }
}

/// Every `reason` of [`stream_open_failed`].
const OPEN_FAILURE_REASONS: &[&str] = &["auth", "bad_request", "limit", "shutdown", "broker", "error"];

/// A stream open that failed before the stream started (`reason`: see the metric's help).
pub(crate) fn stream_open_failed(error: &crate::error::ApiError) {
    use crate::error::ApiError as E;
    let reason = match error {
        E::Unauthenticated(..) | E::Forbidden(_) | E::IpDenied => "auth",
        E::BadStoryId(_)
        | E::BadEventId { .. }
        | E::BadQuery(_)
        | E::BadPath(_)
        | E::TooManyStories { .. }
        | E::CursorMismatch { .. }
        | E::HeadersTooLarge { .. } => "bad_request",
        E::RateLimited { .. } | E::AtCapacity { .. } => "limit",
        E::Draining { .. } => "shutdown",
        E::Unavailable { .. } => "broker",
        _ => "error",
    };
    ::metrics::counter!(STREAM_OPEN_FAILURES, "reason" => reason).increment(1);
}

/// The fan-out engine's meters: per-event delivery handles (resolved once per event, recorded per delivery),
/// resumes, replays and subscriber lag.
#[derive(Debug)]
pub(crate) struct HubMeters {
    labels: std::sync::Arc<EventLabels>,
    exact: ::metrics::Counter,
    gap: ::metrics::Counter,
    replayed: ::metrics::Counter,
    /// The largest lag reported since the last scrape.
    max_lag: std::sync::atomic::AtomicUsize,
}

fn outcome_label(outcome: ResumeOutcome) -> &'static str {
    match outcome {
        ResumeOutcome::Exact => "exact",
        ResumeOutcome::Gap => "gap",
    }
}

impl HubMeters {
    pub(crate) fn new(labels: std::sync::Arc<EventLabels>) -> Self {
        // The recorder must be in place before handles are taken, or they would be no-ops.
        let _ = handle();
        Self {
            labels,
            exact: ::metrics::counter!(RESUMES, "outcome" => outcome_label(ResumeOutcome::Exact)),
            gap: ::metrics::counter!(RESUMES, "outcome" => outcome_label(ResumeOutcome::Gap)),
            replayed: ::metrics::counter!(REPLAYED_EVENTS),
            max_lag: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Sets the lag gauge to the largest lag since the previous scrape, and starts over.
    pub(crate) fn scrape_lag(&self) {
        let lag = self.max_lag.swap(0, std::sync::atomic::Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)] // a count of events, far below 2^52
        ::metrics::gauge!(SUBSCRIBER_LAG).set(lag as f64);
    }
}

impl storyline_hub::Observer for HubMeters {
    fn event_meters(&self, story: &storyline_core::StoryId, event_type: &storyline_core::EventType) -> EventMeters {
        let namespace = self.labels.namespaces.value(story.namespace());
        EventMeters {
            delivered: ::metrics::counter!(
                EVENTS_DELIVERED,
                "namespace" => namespace.clone(),
                "event_type" => self.labels.event_types.value(event_type.as_str())
            ),
            latency: ::metrics::histogram!(DELIVERY_LATENCY, "namespace" => namespace),
        }
    }

    fn resumed(&self, outcome: ResumeOutcome) {
        match outcome {
            ResumeOutcome::Exact => self.exact.increment(1),
            ResumeOutcome::Gap => self.gap.increment(1),
        }
    }

    fn replayed(&self, events: usize) {
        self.replayed.increment(u64::try_from(events).unwrap_or(u64::MAX));
    }

    fn lag(&self, events: usize) {
        self.max_lag.fetch_max(events, std::sync::atomic::Ordering::Relaxed);
    }

    fn fan_out_span(&self, event: &storyline_core::StoredEvent) -> tracing::Span {
        crate::telemetry::fan_out_span(event)
    }
}

/// Why trace spans were dropped (the `reason` label of `storyline_trace_spans_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanDrop {
    /// Their batch was handed to the exporter, which failed.
    ExportFailed,
    /// They ended while the export queue was full, and never entered it.
    QueueFull,
}

impl SpanDrop {
    const ALL: [Self; 2] = [Self::ExportFailed, Self::QueueFull];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExportFailed => "export_failed",
            Self::QueueFull => "queue_full",
        }
    }
}

/// Counts trace spans dropped, and why.
pub fn trace_spans_dropped(reason: SpanDrop, spans: usize) {
    let _ = handle();
    ::metrics::counter!(TRACE_SPANS_DROPPED, "reason" => reason.as_str())
        .increment(u64::try_from(spans).unwrap_or(u64::MAX));
}

/// Records one delivery of `frame`: counted, and its latency from ingress accept to now.
pub(crate) fn delivered(frame: &storyline_hub::EventFrame) {
    frame.written();
    frame.meters.delivered.increment(1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    #[allow(clippy::cast_precision_loss)] // milliseconds of latency, far below 2^52
    frame.meters.latency.record(now_ms.saturating_sub(frame.accepted_ms) as f64 / 1000.0);
}

pub(crate) fn http_request(route: &str, method: &str, status: u16, seconds: f64) {
    ::metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string()).increment(1);
    ::metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method.to_owned()).record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_gauge_shows_the_largest_lag_since_the_previous_scrape() {
        use storyline_hub::Observer;
        let labels = EventLabels { namespaces: CappedLabel::new(1), event_types: CappedLabel::new(1) };
        let meters = HubMeters::new(std::sync::Arc::new(labels));
        let gauge = || crate::meters::handle().render();
        meters.lag(5);
        meters.lag(3);
        meters.scrape_lag();
        assert!(gauge().contains("\nstoryline_subscriber_lag_events 5\n"), "{}", gauge());
        meters.scrape_lag();
        assert!(gauge().contains("\nstoryline_subscriber_lag_events 0\n"), "nothing read since: {}", gauge());
    }

    /// Alive tasks of runtime `id` as the gauge counts them; `None` when it is not registered.
    fn counted(id: tokio::runtime::Id) -> Option<usize> {
        let runtimes = runtimes().lock().unwrap();
        runtimes.iter().find(|(h, _)| h.id() == id).map(|(h, _)| h.metrics().num_alive_tasks())
    }

    #[test]
    fn alive_tasks_are_counted_on_registered_runtimes_while_registered() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let id = runtime.handle().id();
        runtime.block_on(async {
            assert_eq!(counted(id), None, "not registered yet");
            let registration = RuntimeRegistration::current().unwrap();
            let again = RuntimeRegistration::current().unwrap();
            assert_eq!(counted(id), Some(0));
            let tasks: Vec<_> = (0..3).map(|_| tokio::spawn(std::future::pending::<()>())).collect();
            assert_eq!(counted(id), Some(3));
            collect_runtime_tasks();
            assert!(handle().render().contains("\nstoryline_runtime_alive_tasks "), "the gauge is rendered");
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
            assert_eq!(counted(id), Some(0), "ended tasks are not counted");
            drop(again);
            assert_eq!(counted(id), Some(0), "still registered once");
            drop(registration);
            assert_eq!(counted(id), None, "the last registration gone");
        });
    }

    #[test]
    fn capped_labels_keep_the_first_values_and_call_the_rest_other() {
        let label = CappedLabel::new(2);
        assert_eq!(label.value("a").as_ref(), "a");
        assert_eq!(label.value("b").as_ref(), "b");
        assert_eq!(label.value("c").as_ref(), OTHER, "past the cap");
        assert_eq!(label.value("a").as_ref(), "a", "known values keep their label");
        assert_eq!(label.value("d").as_ref(), OTHER);
    }
}
