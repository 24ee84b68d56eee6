//! Fault 1: Redis stops under load and starts again on the same data directory (AOF `everysec`): stopped as an
//! operator stops it (`SHUTDOWN`), and killed (`SIGKILL`, a crash: with `everysec` the AOF is written to the
//! kernel before Redis answers, so a process crash loses nothing acknowledged; a host crash could).
//!
//! During the outage a POST answers 503 with `Retry-After` (within the broker timeout), `/readyz` answers 503,
//! and open streams stay open with their heartbeats. Once Redis is back every stream continues where it was:
//! every event acknowledged before or after the outage reaches every subscriber, none twice on a connection.

use std::time::{Duration, Instant};

use storyline_testkit::poll_until;

use crate::harness::{BROKER_TIMEOUT, Cluster, DEADLINE, Publisher, Reconnect, SubscribeOptions, Subscriber};

/// How Redis goes away.
#[derive(Debug, Clone, Copy)]
enum Outage {
    Shutdown,
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_event_and_every_stream_stays_open() {
    redis_outage(Outage::Shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_under_load_loses_no_acknowledged_event_and_every_stream_stays_open() {
    redis_outage(Outage::Kill).await;
}

async fn redis_outage(how: Outage) {
    // Arrange: two instances; two stories, each read on both instances and written through its own instance.
    let mut cluster = Cluster::start(2, &[]).await;
    let stories = ["restart-a", "restart-b"];
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for story in stories {
        for i in 0..cluster.len() {
            // Pinned to its instance: the point is that the stream survives the outage, not that it moves.
            let options = SubscribeOptions { reconnect: Reconnect::SameTarget, ..SubscribeOptions::default() };
            subscribers.push(cluster.subscriber(&format!("{story}@{i}"), story, cluster.targets(&[i]), options));
        }
    }
    for subscriber in &subscribers {
        subscriber.wait_connected(1).await;
    }
    let publishers = cluster.publishers_alternating(&stories, 20).await;

    // Act: stop Redis.
    let heartbeats_before: Vec<u64> = subscribers.iter().map(Subscriber::heartbeats).collect();
    let outage_started = Instant::now();
    match how {
        Outage::Shutdown => cluster.redis.stop().await,
        Outage::Kill => cluster.redis.kill(),
    }

    // During the outage: not ready, POST refused quickly with Retry-After, streams open with heartbeats.
    let mut readyz_503_after = Vec::new();
    for i in 0..cluster.len() {
        readyz_503_after.push(cluster.wait_readyz(i, 503).await);
    }
    let client_timeout = BROKER_TIMEOUT + Duration::from_secs(5);
    let probe = cluster.post(0, "restart-probe", "restart-probe-0", 0, client_timeout).await;
    assert_eq!(probe.status, Some(503), "a POST during the outage: {probe:?}");
    let retry_after = probe.retry_after.unwrap_or_else(|| panic!("a 503 carries Retry-After: {probe:?}"));
    assert!(
        probe.elapsed < client_timeout,
        "the 503 came within the broker timeout plus slack ({client_timeout:?}): {:?}",
        probe.elapsed
    );
    poll_until("every open stream gets two heartbeats during the outage", DEADLINE, || async {
        subscribers.iter().zip(&heartbeats_before).all(|(s, before)| s.heartbeats() >= before + 2).then_some(())
    })
    .await;
    let acked_during_outage: Vec<usize> = publishers.iter().map(Publisher::acked).collect();

    // Act: start Redis again.
    cluster.redis.start_again().await;
    let outage = outage_started.elapsed();
    let mut ready_again_after = Vec::new();
    for i in 0..cluster.len() {
        ready_again_after.push(cluster.wait_readyz(i, 200).await);
    }
    for (publisher, before) in publishers.iter().zip(&acked_during_outage) {
        publisher.wait_acked(before + 20).await;
    }
    // The refused POST appended nothing, then or after the restart.
    let probe_stored = cluster.history("restart-probe").await;

    // Assert
    let injected = format!(
        "redis-server {} (AOF everysec) under load for {outage:.1?}, started again on its data dir; \
         readyz 503 after {readyz_503_after:.1?}, 200 again after {ready_again_after:.1?}; POST during outage: {} \
         in {:.0?} with Retry-After {retry_after}s; heartbeats during outage >= 2 on every stream",
        match how {
            Outage::Shutdown => "stopped (SHUTDOWN)",
            Outage::Kill => "killed (SIGKILL)",
        },
        probe.status.unwrap_or_default(),
        probe.elapsed,
    );
    let test = match how {
        Outage::Shutdown => "redis_restart",
        Outage::Kill => "redis_crash",
    };
    let tally = cluster.finish(test, injected, publishers, Vec::new(), subscribers).await;
    tally.assert_exact();
    assert!(probe_stored.is_empty(), "a POST answered 503 appended nothing: {probe_stored:?}");
    for subscriber in &tally.subscribers {
        assert_eq!(
            subscriber.connections,
            1,
            "{}: the stream stayed open through the outage\n{}",
            subscriber.name,
            tally.details()
        );
    }
    let answered_503: u64 = tally.published.iter().map(|p| p.unavailable).sum();
    assert!(answered_503 > 0, "publishers met the outage (503 + Retry-After)\n{}", tally.details());
}
