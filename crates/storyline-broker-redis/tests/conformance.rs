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

// --- Redis only: what the append script leaves in Redis ---

mod records {
    use std::time::Duration;

    use fred::prelude::*;
    use storyline_broker_redis::{RedisBroker, RedisConfig};
    use storyline_core::{
        Broker, EventData, EventId, EventType, Idempotency, IdempotencyKey, Metadata, NewEvent, PageLimit, Retention,
        StoryId,
    };
    use storyline_testkit::{DEFAULT_DEADLINE, RedisServer, poll_until};

    fn event(data: &str) -> NewEvent {
        NewEvent {
            event_type: EventType::parse("chapter").unwrap(),
            data: EventData::from_json_text(data).unwrap(),
            author: "a".into(),
            ts: 1,
            meta: Metadata::new(),
        }
    }

    async fn connect(server: &RedisServer, retention: Retention) -> (RedisBroker, Client) {
        let broker = RedisBroker::connect(RedisConfig { retention, ..RedisConfig::new(server.url()) }).await.unwrap();
        let client = Client::new(Config::from_url(&server.url()).unwrap(), None, None, None);
        client.init().await.unwrap();
        (broker, client)
    }

    /// An idempotency record written before fingerprints existed (`<id> <type> <ts>`) still answers: taken to
    /// match, it replays its receipt for any request with its key, as it did when it was written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idempotency_record_without_a_fingerprint_is_taken_to_match() {
        let server = RedisServer::start();
        let (broker, redis) = connect(&server, Retention::default()).await;
        let story = StoryId::parse("legacy").unwrap();
        let _: () = redis.set("storyline:{legacy}:idem:old-key", "5-0 chapter 123", None, None, false).await.unwrap();

        let key = IdempotencyKey::parse("old-key").unwrap();
        let sent = event(r#"{"any":"thing"}"#);
        let idempotency = Idempotency::for_event(key, &sent);
        let answer = broker.append(&story, sent, Some(&idempotency)).await.unwrap();

        assert!(answer.duplicate, "answered from the old record");
        assert_eq!((answer.receipt.id, answer.receipt.ts), (EventId::new(5, 0), 123), "with its receipt");
        let page = broker.read_after(&story, EventId::ZERO, PageLimit::default()).await.unwrap();
        assert!(page.events.is_empty(), "nothing stored");
    }

    /// With a story TTL every append sets the expiry of the story's stream, its metadata and its idempotency
    /// keys, so they go together: no key outlives its stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_story_ttl_the_stream_its_metadata_and_its_keys_expire_together() {
        const TTL: Duration = Duration::from_millis(1_500);
        let server = RedisServer::start();
        let retention = Retention { story_ttl: Some(TTL), ..Retention::default() };
        let (broker, redis) = connect(&server, retention).await;
        let story = StoryId::parse("ttl").unwrap();
        let sent = event("1");
        let idempotency = Idempotency::for_event(IdempotencyKey::parse("k").unwrap(), &sent);
        broker.append(&story, sent, Some(&idempotency)).await.unwrap();
        let keys = ["storyline:{ttl}:log", "storyline:{ttl}:meta", "storyline:{ttl}:idem:k"];

        let mut ttls = Vec::new();
        for key in keys {
            ttls.push(redis.pttl::<i64, _>(key).await.unwrap());
        }
        assert!(ttls.iter().all(|t| (1..=1_500).contains(t)), "every key expires within the TTL: {ttls:?}");
        assert!(ttls[2] <= ttls[0], "the key does not outlive the stream: {ttls:?}");
        poll_until("the story's keys to expire", DEFAULT_DEADLINE, || async {
            let left: i64 = redis.exists(keys.to_vec()).await.unwrap();
            (left == 0).then_some(())
        })
        .await;
    }
}
