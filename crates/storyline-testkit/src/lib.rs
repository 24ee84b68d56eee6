//! Dev-only test kit for storyline.
//!
//! - [`RedisServer`]: a throwaway `redis-server` on a free port, killed on drop. Never the system Redis.
//! - [`sign_with_fixture`], [`JwksServer`]: tokens signed with the test-only keys in `fixtures/`, and a JWKS
//!   endpoint whose keys a test rotates.
//! - [`poll_until`]: wait for a condition with a deadline instead of sleeping and hoping.
//! - [`conformance`]: the broker contract suite; each adapter's `tests/` runs every case against itself.
//! - [`spawn_app`]: the real server on a free port, with typed helpers ([`TestApp`]) and a raw SSE reader
//!   ([`SseStream`]) that keeps `retry:` and heartbeat comments.
//!
//! A failed expectation here is a test failure, so panicking with a clear message is the intended behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod app;
pub mod conformance;
mod keys;
mod redis_cluster;
mod redis_server;
mod sse;

use std::{future::Future, time::Duration};

pub use app::{
    Publisher, TEST_SECRET, TestApp, http_client, http_client_builder, spawn_app, spawn_app_with, test_config,
};
pub use keys::{JwksServer, fixture, jwks_of, sign_with_fixture};
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisServer, free_port};
pub use sse::{Frame, SseStream};

/// Default deadline for [`poll_until`]: generous, because CI machines are slow and shared.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Calls `check` until it returns `Some`, or panics with `what` once `deadline` has passed.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare name) in Prometheus text format.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
