//! `Client::publish`: receipts, one stored event per call whatever the retries, and what is retried.

use std::time::Duration;

use serde_json::json;
use storyline_client::{Client, Event, EventType, HistoryQuery, IdempotencyKey, RetryPolicy};
use storyline_server::limits::LimitsConfig;
use storyline_testkit::test_config;

use crate::support::{Action, Env, Kind, Proxy, both_brokers, story};

both_brokers!(
    a_publish_returns_the_receipt_of_the_stored_event,
    an_answer_lost_twice_is_retried_with_the_same_key_and_stores_one_event,
);

async fn a_publish_returns_the_receipt_of_the_stored_event(kind: Kind) {
    let env = Env::start(kind).await;
    let story = story("pub-receipt");
    let event = Event::new(EventType::parse("note").unwrap(), json!({"text": "hello", "n": [1, 2]}));
    let receipt = env.client().publish(&story, &event).await.expect("publish");
    assert_eq!((receipt.story.as_str(), receipt.event_type.as_str(), receipt.replayed), ("pub-receipt", "note", false));
    let page = env.client().history(&story, HistoryQuery::default()).await.expect("history");
    assert_eq!(page.events.len(), 1);
    assert_eq!((page.events[0].id, &page.events[0].data), (receipt.id, &json!({"text": "hello", "n": [1, 2]})));
    assert_eq!(page.events[0].author, "tester");
}

async fn an_answer_lost_twice_is_retried_with_the_same_key_and_stores_one_event(kind: Kind) {
    let env = Env::start(kind).await;
    let proxy = Proxy::start(env.app.addr).await;
    proxy.then(&[Action::LoseAnswer, Action::LoseAnswer]);
    let story = story("pub-lost");
    let event = Event::new(EventType::parse("note").unwrap(), json!({"seq": 1}));
    let receipt = env.client_at(&proxy.base).publish(&story, &event).await.expect("publish through lost answers");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 3, "two lost answers, then the answer: {seen:?}");
    let keys: Vec<_> = seen.iter().map(|s| s.header("idempotency-key").unwrap_or("none").to_owned()).collect();
    assert!(
        keys[0].starts_with("sc-") && keys.iter().all(|k| *k == keys[0]),
        "one generated key on every attempt: {keys:?}"
    );
    let statuses: Vec<_> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [Some(201), Some(200), Some(200)], "stored by the first attempt, replayed after");
    assert!(receipt.replayed, "the receipt is the first attempt's event");
    let ids = env.app.all_ids("pub-lost").await;
    assert_eq!(ids, [receipt.id.to_string()], "one stored event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_append_is_retried_with_the_same_key_until_it_is_confirmed_once() {
    let env = Env::start(Kind::Redis).await;
    let proxy = Proxy::start(env.app.addr).await;
    let client = env.client_at(&proxy.base);
    let story = story("pub-unconfirmed");
    // Warm up: the append script is loaded, so the held write below is the append itself.
    client.publish(&story, &Event::new(EventType::parse("note").unwrap(), json!({"warm": true}))).await.unwrap();

    // Redis holds every write for 2.5 s: the server's 1 s command timeout passes with the append sent, which
    // the server answers 503 `unconfirmed` with Retry-After.
    let redis = env.backend.redis.as_ref().unwrap();
    assert_eq!(redis_command(redis.port(), &["CLIENT", "PAUSE", "2500", "WRITE"]).await, "+OK\r\n");
    let key = IdempotencyKey::parse("agent-7-step-3").unwrap();
    let event = Event::new(EventType::parse("note").unwrap(), json!({"step": 3})).idempotency_key(key);
    let receipt = client.publish(&story, &event).await.expect("publish through unconfirmed answers");

    let attempts: Vec<_> = proxy.seen().into_iter().skip(1).collect();
    let statuses: Vec<_> = attempts.iter().map(|s| s.status).collect();
    assert!(attempts.len() >= 2 && statuses[0] == Some(503), "503 unconfirmed first, then a retry: {statuses:?}");
    assert!(matches!(statuses.last(), Some(Some(200 | 201))), "{statuses:?}");
    assert!(attempts.iter().all(|s| s.header("idempotency-key") == Some("agent-7-step-3")), "{attempts:?}");
    let page = client.history(&story, HistoryQuery::default()).await.unwrap();
    let stored: Vec<_> = page.events.iter().filter(|e| e.data == json!({"step": 3})).collect();
    assert_eq!(stored.len(), 1, "one stored event: {:?}", page.events);
    assert_eq!(stored[0].id, receipt.id);
    eprintln!("unconfirmed: {} attempts, statuses {statuses:?}, 1 stored event", attempts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_publish_waits_retry_after_and_succeeds() {
    let config = storyline_server::ServerConfig {
        limits: LimitsConfig { publish_per_story: 1, ..LimitsConfig::unlimited() },
        ..test_config()
    };
    let env = Env::start_with(Kind::Memory, storyline_core::Retention::default(), config).await;
    let proxy = Proxy::start(env.app.addr).await;
    let client = env.client_at(&proxy.base);
    let story = story("pub-limited");
    let mut receipts = Vec::new();
    for n in 0..3 {
        let event = Event::new(EventType::parse("note").unwrap(), json!({"n": n}));
        receipts.push(client.publish(&story, &event).await.expect("publish through 429").id.to_string());
    }
    let statuses: Vec<_> = proxy.seen().iter().map(|s| s.status).collect();
    assert!(statuses.contains(&Some(429)), "the limit was hit: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == Some(201)).count(), 3, "{statuses:?}");
    assert_eq!(env.app.all_ids("pub-limited").await, receipts, "three events, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_retries_returns_the_transient_error() {
    // Nothing listens on a port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .token("t")
        .retry(RetryPolicy::none())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let event = Event::new(EventType::parse("note").unwrap(), 1);
    let error = client.publish(&story("s"), &event).await.expect_err("nothing listens");
    assert!(matches!(error, storyline_client::Error::Network(_)), "{error:?}");
    assert!(error.is_transient());
}

/// Sends one command to a redis-server in RESP and returns its first reply chunk.
async fn redis_command(port: u16, args: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to redis");
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    socket.write_all(command.as_bytes()).await.expect("send to redis");
    let mut reply = vec![0u8; 256];
    let n = socket.read(&mut reply).await.expect("redis reply");
    String::from_utf8_lossy(&reply[..n]).into_owned()
}
