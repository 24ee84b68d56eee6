//! The broker conformance suite against the in-memory broker: every case, each on a fresh broker.
//!
//! Multi-threaded, so that the concurrency cases (idempotency races, parallel publishers) really run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use storyline_broker_memory::MemoryBroker;
use storyline_core::{Broker, Retention};

storyline_testkit::broker_conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    factory = |retention: Retention| async move { Arc::new(MemoryBroker::new(retention)) as Arc<dyn Broker> },
}
