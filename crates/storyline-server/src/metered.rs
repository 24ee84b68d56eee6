//! The broker port, measured: a decorator that times every call and counts its failures, whatever the adapter
//! behind it (Redis or memory). The HTTP surface and the hub see only this.
//!
//! - `storyline_broker_operation_duration_seconds{op}`: append, read, bounds, ping (histogram).
//! - `storyline_broker_errors_total{op}`: the same ops and `tail` (errors a tail reports while it runs).
//! - `storyline_broker_up`: 1 after a call that succeeded, 0 after one that found the broker unavailable.

use std::{sync::Arc, time::Instant};

use futures::StreamExt;
use storyline_core::{
    Appended, Broker, BrokerError, EventId, EventStream, Idempotency, LogBounds, NewEvent, Page, PageLimit, StoryId,
};
use tracing::Instrument;

use crate::meters;

/// Every `op` label of the broker metrics.
pub(crate) const OPS: &[&str] = &["append", "read", "bounds", "ping", "tail"];

#[derive(Debug)]
pub(crate) struct MeteredBroker(Arc<dyn Broker>);

impl MeteredBroker {
    pub(crate) fn new(inner: Arc<dyn Broker>) -> Self {
        Self(inner)
    }
}

/// Records one call's duration and outcome.
fn observe<T>(op: &'static str, started: Instant, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
    meters::broker_call(op, started.elapsed().as_secs_f64(), result.as_ref().err());
    result
}

#[async_trait::async_trait]
impl Broker for MeteredBroker {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn append(
        &self,
        story: &StoryId,
        event: NewEvent,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BrokerError> {
        let span = crate::telemetry::broker_span("append", self.0.kind());
        let started = Instant::now();
        let result = self.0.append(story, event, idempotency).instrument(span.clone()).await;
        if result.as_ref().is_err_and(|e| *e != BrokerError::IdempotencyKeyMismatch) {
            span.record("otel.status_code", "ERROR");
        }
        observe("append", started, result)
    }

    async fn read_after(&self, story: &StoryId, after: EventId, limit: PageLimit) -> Result<Page, BrokerError> {
        let started = Instant::now();
        observe("read", started, self.0.read_after(story, after, limit).await)
    }

    fn tail(&self, story: &StoryId, after: EventId) -> EventStream {
        self.0
            .tail(story, after)
            .inspect(|item| {
                if let Err(e) = item {
                    meters::broker_error("tail", e);
                }
            })
            .boxed()
    }

    async fn bounds(&self, story: &StoryId) -> Result<LogBounds, BrokerError> {
        let started = Instant::now();
        observe("bounds", started, self.0.bounds(story).await)
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let started = Instant::now();
        observe("ping", started, self.0.ping().await)
    }

    fn rate_limits(&self) -> Option<Arc<dyn storyline_core::RateLimitStore>> {
        self.0.rate_limits()
    }

    fn revocations(&self) -> Option<Arc<dyn storyline_core::Revocations>> {
        self.0.revocations()
    }
}
