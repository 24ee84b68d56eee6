//! Publish limits across instances: with the Redis broker, every instance on one Redis shares one budget per
//! principal and per story (a GCRA in Redis); when Redis cannot answer, each instance falls back to its own
//! limiter, which still limits. (The memory broker has no shared store: its limits are per instance, as the
//! contract suite in `limits.rs` checks.)

use std::time::{Duration, Instant};

use storyline_core::Retention;
use storyline_server::{
    ServerConfig,
    auth::Tier,
    limits::{LimitsConfig, TierRates},
};
use storyline_testkit::{RedisServer, TestApp, spawn_app_with, test_config};

use crate::helpers::redis_broker;

const EVENT: &str = r#"{"type":"a","data":1}"#;

/// Two instances, each with its own broker, on one redis-server.
async fn two_instances(redis: &RedisServer, limits: LimitsConfig) -> (TestApp, TestApp) {
    let config = ServerConfig { limits, ..test_config() };
    let a = spawn_app_with(redis_broker(redis, Retention::default()).await, config.clone()).await;
    let b = spawn_app_with(redis_broker(redis, Retention::default()).await, config).await;
    (a, b)
}

/// `n` publishes to `story` with `token`, alternating between the two instances; their statuses, and how long
/// they took.
async fn alternate(a: &TestApp, b: &TestApp, story: &str, tokens: [&str; 2], n: usize) -> (Vec<u16>, Duration) {
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..n {
        let (app, token) = if i % 2 == 0 { (a, tokens[0]) } else { (b, tokens[1]) };
        statuses.push(app.post_as(story, token, EVENT).send().await.unwrap().status().as_u16());
    }
    (statuses, started.elapsed())
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_principals_publish_rate_is_shared_by_every_instance_and_holds_locally_without_redis() {
    // Arrange: 5 publishes per second per member; each instance alone would allow a burst of 5.
    let mut redis = RedisServer::start();
    let rates = TierRates { guest: 1, member: 5, agent: 5, admin: 0 };
    let (a, b) = two_instances(&redis, LimitsConfig { publish_per_sub: rates, ..LimitsConfig::unlimited() }).await;
    let ann = a.token_with("ann", "write:*", Some(Tier::Member), Duration::from_secs(600));

    // Act: 4 to A and 4 to B, alternating; per instance that is within the burst.
    let (statuses, took) = alternate(&a, &b, "s", [&ann, &ann], 8).await;

    // Assert: one budget of 5 for both. A refill (one per 200 ms) can only turn a 429 into a 201, so with the
    // time taken known, the 201s are bounded from above.
    let refills = usize::try_from(took.as_millis() / 200).unwrap_or(usize::MAX);
    assert!(count(&statuses, 201) <= 5 + refills, "the budget is shared: {statuses:?} in {took:?}");
    assert!(count(&statuses, 429) >= 1, "8 publishes against one budget of 5: {statuses:?} in {took:?}");
    assert_eq!(count(&statuses, 201) + count(&statuses, 429), 8, "{statuses:?}");

    // Act: Redis goes away. Each instance now decides with its own limiter (the append itself then fails: 503).
    redis.kill();
    let mut fallback = Vec::new();
    for _ in 0..8 {
        fallback.push(a.post_as("s", &ann, EVENT).send().await.unwrap().status().as_u16());
    }

    // Assert: still limited (never "no limit"), and the fallback is counted.
    assert!(count(&fallback, 429) >= 1, "A's own limiter refuses past 5/s: {fallback:?}");
    assert_eq!(count(&fallback, 429) + count(&fallback, 503), 8, "allowed ones fail at the broker: {fallback:?}");
    let fallbacks = a.metric("storyline_rate_limit_fallback_total{limit=\"publish_rate_per_sub\"}").await;
    assert!(fallbacks >= 1.0, "fallbacks counted: {fallbacks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_storys_publish_rate_is_shared_by_every_instance() {
    // Arrange: 4 publishes per second into one story, from anyone.
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis, LimitsConfig { publish_per_story: 4, ..LimitsConfig::unlimited() }).await;
    let ann = a.token_with("ann", "write:*", Some(Tier::Agent), Duration::from_secs(600));
    let bob = b.token_with("bob", "write:*", Some(Tier::Agent), Duration::from_secs(600));

    // Act: 3 writes to A by ann, 3 to B by bob, alternating.
    let (statuses, took) = alternate(&a, &b, "hot", [&ann, &bob], 6).await;

    // Assert (a refill every 250 ms, as above)
    let refills = usize::try_from(took.as_millis() / 250).unwrap_or(usize::MAX);
    assert!(count(&statuses, 201) <= 4 + refills, "one budget for the story: {statuses:?} in {took:?}");
    assert!(count(&statuses, 429) >= 1, "6 publishes against one budget of 4: {statuses:?} in {took:?}");
}
