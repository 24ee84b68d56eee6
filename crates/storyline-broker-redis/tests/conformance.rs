//! The broker conformance suite against the Redis broker: every case on its own throwaway `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_core::{Broker, Retention};
use storyline_testkit::RedisServer;

storyline_testkit::broker_conformance_tests! {
    // fred spawns tasks (connection readers, reconnects) and the tailer runs its own read loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    factory = {
        // Owned by the closure, so the server lives exactly as long as the test.
        let server = RedisServer::start();
        move |retention: Retention| {
            let url = server.url();
            async move {
                let broker = RedisBroker::connect(RedisConfig { retention, ..RedisConfig::new(url) })
                    .await
                    .expect("connect to the test's redis-server");
                Arc::new(broker) as Arc<dyn Broker>
            }
        }
    },
}
