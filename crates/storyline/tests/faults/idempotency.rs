//! Idempotency across instances: a retried POST with the same `Idempotency-Key` never creates a second event,
//! whichever instance it lands on, whether the first answer was received, lost to a client timeout, or raced by
//! concurrent retries; and once the idempotency window has passed, the same key appends a new event.

use std::time::{Duration, Instant};

use storyline_testkit::poll_until;

use crate::harness::{Ack, Attempt, Cluster, DEADLINE, Reconnect, SubscribeOptions, Subscriber};

/// Client timeout for POSTs that are expected to be answered.
const ANSWERED: Duration = Duration::from_secs(5);

/// One subscriber per instance, each pinned to it, connected.
async fn subscribers_on_every_instance(cluster: &Cluster, story: &str) -> Vec<Subscriber> {
    let mut subscribers = Vec::new();
    for i in 0..cluster.len() {
        let options = SubscribeOptions { reconnect: Reconnect::SameTarget, ..SubscribeOptions::default() };
        subscribers.push(cluster.subscriber(&format!("{story}@{i}"), story, cluster.targets(&[i]), options));
    }
    for subscriber in &subscribers {
        subscriber.wait_connected(1).await;
    }
    subscribers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_instance_gets_the_first_receipt_and_appends_nothing() {
    let cluster = Cluster::start(2, &[]).await;
    let story = "idem-retry";
    let subscribers = subscribers_on_every_instance(&cluster, story).await;

    let mut acks = Vec::new();
    let mut retries = 0;
    for seq in 0..10u64 {
        let key = format!("{story}-{seq}");
        let (here, there) = (usize::from(seq % 2 == 1), usize::from(seq % 2 == 0));
        let first = cluster.post(here, story, &key, seq, ANSWERED).await;
        assert_eq!(first.status, Some(201), "first POST of {key}: {first:?}");
        for (slot, case) in [(there, "retry on the other instance"), (here, "retry on the same instance")] {
            let retry = cluster.post(slot, story, &key, seq, ANSWERED).await;
            retries += 1;
            assert_eq!(retry.status, Some(200), "{case} of {key}: {retry:?}");
            assert_eq!(retry.receipt, first.receipt, "{case} of {key}: the first receipt");
        }
        acks.push(Ack::of(&first));
    }

    let injected = format!(
        "10 POSTs, each retried with its Idempotency-Key on the other instance and on its own ({retries} retries)"
    );
    let tally = cluster.finish_manual("idempotency_retry_on_other_instance", injected, story, acks, subscribers).await;
    tally.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_with_one_key_on_two_instances_append_one_event() {
    let cluster = Cluster::start(2, &[]).await;
    let story = "idem-race";
    let subscribers = subscribers_on_every_instance(&cluster, story).await;

    const KEYS: u64 = 5;
    const RACERS: usize = 8;
    let mut acks = Vec::new();
    for seq in 0..KEYS {
        let key = format!("{story}-{seq}");
        let racers = (0..RACERS).map(|n| cluster.post(n % 2, story, &key, seq, ANSWERED));
        let answers = futures::future::join_all(racers).await;
        let created: Vec<&Attempt> = answers.iter().filter(|a| a.status == Some(201)).collect();
        assert_eq!(created.len(), 1, "{key}: exactly one of {RACERS} concurrent POSTs appends: {answers:?}");
        for answer in &answers {
            assert!(matches!(answer.status, Some(200 | 201)), "{key}: {answer:?}");
            assert_eq!(answer.receipt, created[0].receipt, "{key}: every racer gets the one receipt");
        }
        acks.push(Ack::of(created[0]));
    }

    let injected = format!("{KEYS} keys, each POSTed {RACERS} times at once across 2 instances");
    let tally = cluster.finish_manual("idempotency_concurrent_retries", injected, story, acks, subscribers).await;
    tally.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_client_timeout_lands_on_another_instance_without_a_second_event() {
    let cluster = Cluster::start(2, &[]).await;
    let story = "idem-timeout";
    let subscribers = subscribers_on_every_instance(&cluster, story).await;
    // Loads the append script into Redis's script cache, so the POST below is the append itself.
    let warm_key = format!("{story}-warm");
    let warm = cluster.post(0, story, &warm_key, 0, ANSWERED).await;
    assert_eq!(warm.status, Some(201), "{warm:?}");

    // Inject: Redis holds every write for 1.5 s, so the append waits in Redis past the client's timeout.
    let pause = cluster.redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    assert_eq!(pause, "+OK\r\n", "CLIENT PAUSE");
    let key = format!("{story}-0");
    // Every attempt sends the same event (seq 0): a retry repeats its request (another body with the key would be
    // refused as 422 idempotency-key-mismatch).
    let first = cluster.post(0, story, &key, 0, Duration::from_millis(300)).await;
    assert!(first.timed_out, "the client gave up on the first answer: {first:?}");

    // The retry, same key, on the other instance: until answered (503 + Retry-After while writes are held).
    let mut unavailable = 0;
    let deadline = Instant::now() + DEADLINE;
    let retry = loop {
        let retry = cluster.post(1, story, &key, 0, ANSWERED).await;
        match retry.status {
            Some(200 | 201) => break retry,
            Some(503) => {
                unavailable += 1;
                let wait = Duration::from_secs(retry.retry_after.expect("503 with Retry-After"));
                assert!(Instant::now() + wait < deadline, "the retry is answered within {DEADLINE:?}: {retry:?}");
                // Retry-After: the server's instruction, not a wait for a condition.
                tokio::time::sleep(wait).await;
            }
            _ => panic!("the retry: {retry:?}"),
        }
    };
    let stored: Vec<_> =
        cluster.history(story).await.into_iter().filter(|e| e.key.as_deref() == Some(key.as_str())).collect();
    assert_eq!(stored.len(), 1, "one event for {key}: {stored:?}");
    let retry_id = retry.receipt.as_ref().unwrap().id;
    assert_eq!(stored[0].id, retry_id, "the retry's receipt names the stored event");

    // What instance 0 answered the attempt the client gave up on (the last POST in its access log: the warm-up
    // came before it), and which attempt's body was stored.
    let first_answer = cluster
        .instance(0)
        .logs_containing("storyline::access")
        .into_iter()
        .rev()
        .find(|l| l.contains("method=POST"))
        .and_then(|line| line.split_once("status=").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| "nothing logged".to_owned());
    let outcome = match retry.status {
        Some(200) => "200: an earlier attempt (the timed-out first one, or a retry answered 503) had appended it",
        _ => "201: no earlier attempt had appended it",
    };
    let injected = format!(
        "CLIENT PAUSE 1500 WRITE; POST timed out on the client after {:.0?} (instance 0 logged it status={first_answer}); \
         retried on the other instance ({unavailable} x 503 + Retry-After first), answered {outcome}",
        first.elapsed
    );
    let acks = vec![Ack::of(&warm), Ack::of(&retry)];
    let tally = cluster.finish_manual("idempotency_lost_answer", injected, story, acks, subscribers).await;
    tally.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_idempotency_window_the_same_key_appends_a_new_event() {
    const WINDOW: Duration = Duration::from_secs(1);
    let cluster = Cluster::start(2, &[("STORYLINE_IDEMPOTENCY_WINDOW_SECS", "1")]).await;
    let story = "idem-window";
    let subscribers = subscribers_on_every_instance(&cluster, story).await;
    let key = format!("{story}-0");

    let sent = Instant::now();
    let first = cluster.post(0, story, &key, 0, ANSWERED).await;
    assert_eq!(first.status, Some(201), "{first:?}");
    let retry = cluster.post(1, story, &key, 0, ANSWERED).await;
    // Redis set the key after `sent`, so a retry answered within the window of `sent` is inside the window.
    if sent.elapsed() < WINDOW {
        assert_eq!(retry.status, Some(200), "a retry within the window: {retry:?}");
        assert_eq!(retry.receipt, first.receipt);
    }

    // Until the window has passed, every retry is answered with the first receipt and appends nothing.
    let mut replays = 0u32;
    let second = poll_until("the key appends again after the window", DEADLINE, || {
        let (cluster, key, first) = (&cluster, &key, &first);
        replays += 1;
        async move {
            let again = cluster.post(1, story, key, 0, ANSWERED).await;
            match again.status {
                Some(201) => Some(again),
                Some(200) => {
                    assert_eq!(again.receipt, first.receipt, "within the window: the first receipt");
                    None
                }
                _ => panic!("{again:?}"),
            }
        }
    })
    .await;
    let window_seen = sent.elapsed();
    assert!(window_seen >= WINDOW, "the key was remembered for the whole window ({window_seen:?})");
    let (first_id, second_id) = (first.receipt.as_ref().unwrap().id, second.receipt.as_ref().unwrap().id);
    assert!(second_id > first_id, "a new event: {first_id} then {second_id}");

    let injected = format!(
        "STORYLINE_IDEMPOTENCY_WINDOW_SECS=1; one key POSTed, retried on the other instance until it appended \
         again after {window_seen:.1?} ({} replays answered 200 meanwhile)",
        replays - 1
    );
    let acks = vec![Ack::of(&first), Ack::of(&second)];
    let tally = cluster
        .finish_manual("idempotency_window", injected, story, acks, subscribers)
        .await
        .allowing_repeated_key(&key, 2);
    tally.assert_exact();
}
