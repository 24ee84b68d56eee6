//! Backends for the contract suite, and the macro that runs one test body against both.

use std::{num::NonZeroUsize, ops::Deref, sync::Arc, time::Duration};

use storyline_broker_memory::MemoryBroker;
use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_core::{Broker, Retention};
use storyline_server::ServerConfig;
use storyline_testkit::{RedisServer, TestApp, spawn_app_with, test_config};

/// Per-frame deadline: generous for slow CI machines; tests never assert on elapsed time.
pub(crate) const FRAME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Memory,
    Redis,
}

/// A running app and, for Redis, the redis-server it owns.
pub(crate) struct Env {
    pub(crate) app: TestApp,
    pub(crate) redis: Option<RedisServer>,
}

impl Deref for Env {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

pub(crate) fn retention(max_events: usize) -> Retention {
    let mut retention = Retention::default();
    retention.log.max_events = NonZeroUsize::new(max_events).unwrap();
    retention
}

pub(crate) async fn broker(kind: Kind, retention: Retention) -> (Arc<dyn Broker>, Option<RedisServer>) {
    match kind {
        Kind::Memory => (Arc::new(MemoryBroker::new(retention)), None),
        Kind::Redis => {
            let server = RedisServer::start();
            (redis_broker(&server, retention).await, Some(server))
        }
    }
}

pub(crate) async fn redis_broker(server: &RedisServer, retention: Retention) -> Arc<dyn Broker> {
    let config =
        RedisConfig { retention, command_timeout: Duration::from_millis(1_000), ..RedisConfig::new(server.url()) };
    Arc::new(RedisBroker::connect(config).await.expect("connect to the test redis-server"))
}

/// An app on a given redis-server (for tests that stop and restart it).
pub(crate) async fn spawn_on_redis(server: RedisServer) -> Env {
    let broker = redis_broker(&server, Retention::default()).await;
    Env { app: spawn_app_with(broker, test_config()).await, redis: Some(server) }
}

pub(crate) async fn spawn(kind: Kind) -> Env {
    spawn_with(kind, Retention::default(), test_config()).await
}

pub(crate) async fn spawn_with(kind: Kind, retention: Retention, config: ServerConfig) -> Env {
    let (broker, redis) = broker(kind, retention).await;
    Env { app: spawn_app_with(broker, config).await, redis }
}

/// Asserts a problem+json response with the given status, returning its body.
pub(crate) async fn assert_problem(response: reqwest::Response, status: u16, case: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "case {case}: status");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(content_type, "application/problem+json", "case {case}: content type");
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "case {case}: body status");
    for field in ["type", "title", "detail"] {
        assert!(body[field].as_str().is_some_and(|s| !s.is_empty()), "case {case}: problem lacks {field}: {body}");
    }
    body
}

/// Generates `memory::<case>` and `redis::<case>` tests calling `super::<case>(Kind)`.
macro_rules! both_brokers {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::helpers::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::helpers::Kind::Redis).await
                }
            )*
        }
    };
}
pub(crate) use both_brokers;
