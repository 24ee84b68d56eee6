//! Fault 3: a graceful rolling deploy of two instances, under load.
//!
//! Each instance in turn gets SIGTERM: `/readyz` fails at once and new streams are refused, its open streams end
//! spread over the drain window (each after a jittered `retry:` frame), it still answers POSTs (one is sent to it
//! while it drains, and must be acknowledged and delivered), and it exits
//! 0 within the window (plus the grace for in-flight requests); then a new process takes its place. Readers follow
//! the `retry:` hints, as EventSource does, and reconnect to the other instance with `Last-Event-ID`. At the end no
//! acknowledged event is lost, and the other instance saw the moved readers' stream opens spread over the window,
//! not in one burst.

use std::time::{Duration, Instant};

use storyline_testkit::poll_until;

use crate::harness::{
    Ack, Cluster, DEADLINE, PublishReport, Publisher, Reconnect, ReconnectDelay, SubscribeOptions, Subscriber,
};

/// `STORYLINE_DRAIN_WINDOW_SECS` of both instances.
const WINDOW: Duration = Duration::from_secs(3);
/// `STORYLINE_SHUTDOWN_GRACE_SECS`.
const GRACE: Duration = Duration::from_secs(2);
/// Readers of each instance (spread over the stories).
const READERS_PER_INSTANCE: usize = 40;
/// Slices of the drain window in which the other instance's stream opens are counted.
const SLICES: usize = 6;

/// Stream opens an instance has counted so far (every tier).
async fn opened(cluster: &Cluster, i: usize) -> Option<f64> {
    cluster.metric_total(i, "storyline_connections_opened_total", "").await
}

/// SIGTERMs instance `i` and follows its drain: readiness, a POST while it drains, the other instance's stream
/// opens per slice of the window, the exit. Returns a one-line account, the opens per slice, and the POST's
/// acknowledgement.
async fn drain(cluster: &mut Cluster, i: usize) -> (String, Vec<f64>, Ack) {
    let other = 1 - i;
    let before = opened(cluster, other).await.expect("the other instance's metrics");
    let started = Instant::now();
    cluster.sigterm(i);
    let not_ready_after = cluster.wait_readyz(i, 503).await;
    // A draining instance still takes POSTs (a load balancer needs a moment to act on readiness).
    let key = format!("{DRAINING_STORY}-during-drain-{i}");
    let post = cluster.post(i, DRAINING_STORY, &key, 0, Duration::from_secs(5)).await;
    assert_eq!(post.status, Some(201), "a POST to a draining instance is served: {post:?}");
    let ack = Ack::of(&post);
    // The other instance's stream opens, sampled at every slice boundary of the window (and a slice past it, for
    // the last readers' retry pause).
    let mut per_slice = Vec::new();
    let mut previous = before;
    for slice in 1..=SLICES + 1 {
        let boundary = started + WINDOW * u32::try_from(slice).unwrap() / u32::try_from(SLICES).unwrap();
        tokio::time::sleep_until(boundary.into()).await; // sampling at fixed points of the window, not waiting
        let now = opened(cluster, other).await.expect("the other instance's metrics");
        per_slice.push(now - previous);
        previous = now;
    }
    let status = cluster.wait_exit(i, WINDOW + GRACE + Duration::from_secs(5)).await;
    let exited_after = started.elapsed();
    assert!(status.success(), "instance {i} exits 0 after SIGTERM: {status:?}");
    let account = format!(
        "instance {i}: not ready after {not_ready_after:.2?}, exited 0 after {exited_after:.2?}, \
         opens on instance {other} per {:?} of the window {per_slice:?}",
        WINDOW / u32::try_from(SLICES).unwrap()
    );
    (account, per_slice, ack)
}

/// The story a POST to each draining instance goes to (one the readers read).
const DRAINING_STORY: &str = "deploy-0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_event_and_spreads_the_reconnects_over_the_drain_window() {
    let window = WINDOW.as_secs().to_string();
    let grace = GRACE.as_secs().to_string();
    let env = [
        ("STORYLINE_DRAIN_WINDOW_SECS", window.as_str()),
        ("STORYLINE_SHUTDOWN_GRACE_SECS", grace.as_str()),
        // The readers' reconnect pause after a drained stream: 200 ms plus up to 100 ms of jitter.
        ("STORYLINE_RETRY_MS", "200"),
    ];
    let mut cluster = Cluster::start(2, &env).await;
    let stories: Vec<String> = (0..4).map(|n| format!("deploy-{n}")).collect();
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for i in 0..2 {
        for r in 0..READERS_PER_INSTANCE {
            let story = &stories[r % stories.len()];
            let options = SubscribeOptions {
                reconnect: Reconnect::NextTarget,
                delay: ReconnectDelay::RetryHint(Duration::from_millis(200)),
            };
            subscribers.push(cluster.subscriber(
                &format!("{story}@{i}#{r}"),
                story,
                cluster.targets(&[i, 1 - i]),
                options,
            ));
        }
    }
    for subscriber in &subscribers {
        subscriber.wait_connected(1).await;
    }
    let publishers = cluster.publishers_alternating(&stories, 10).await;

    // Act: roll instance 0, then instance 1, each replaced by a new process once it has exited.
    let mut accounts = Vec::new();
    let mut slices = Vec::new();
    let mut during_drain = Vec::new();
    for i in 0..2 {
        let (account, per_slice, ack) = drain(&mut cluster, i).await;
        accounts.push(account);
        during_drain.push(ack);
        slices.push(per_slice);
        cluster.replace(i, &env).await;
        cluster.wait_readyz(i, 200).await;
        let acked: Vec<usize> = publishers.iter().map(Publisher::acked).collect();
        for (publisher, before) in publishers.iter().zip(&acked) {
            publisher.wait_acked(before + 10).await;
        }
    }
    // Readers of instance 0 moved to 1 when 0 drained and back to 0 when 1 drained; readers of 1 moved once.
    poll_until("every reader has followed each drain of its instance to the other", DEADLINE, || async {
        subscribers.iter().all(|s| s.connections() >= if s.name.contains("@0") { 3 } else { 2 }).then_some(())
    })
    .await;

    // Assert
    let injected = format!(
        "rolling restart (SIGTERM, drain window {WINDOW:?}, grace {GRACE:?}, then a new process) of both of 2 \
         instances under {} readers and 4 publishers; {}",
        subscribers.len(),
        accounts.join("; ")
    );
    let posted_while_draining = PublishReport::manual(DRAINING_STORY, during_drain);
    let tally = cluster.finish("rolling_deploy", injected, publishers, vec![posted_while_draining], subscribers).await;
    tally.assert_exact();
    for (i, per_slice) in slices.iter().enumerate() {
        let moved: f64 = per_slice.iter().sum();
        let busiest = per_slice.iter().copied().fold(0.0, f64::max);
        assert!(moved >= READERS_PER_INSTANCE as f64, "instance {i}'s readers moved to the other: {per_slice:?}");
        assert!(
            busiest <= moved / 2.0,
            "the reconnects to the other instance were spread over the window, not one burst: {per_slice:?}"
        );
    }
}
