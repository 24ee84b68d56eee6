//! Fault 2: `kill -9` of one of two instances under load, with publishers and subscribers on both.
//!
//! The killed instance's subscribers reconnect to the other with `Last-Event-ID`, its publishers move there and
//! retry their unanswered events with the same `Idempotency-Key`. At the end, for every subscriber, the set of
//! ids received (deduplicated across reconnects) equals the set acknowledged on its story, and the broker holds
//! every acknowledged event once. A POST whose answer died with the instance is retried on the other one and
//! gets the stored event's id, with no second event.

use storyline_testkit::poll_until;

use crate::harness::{
    Ack, Cluster, DEADLINE, PublishReport, Publisher, Reconnect, SubscribeOptions, Subscriber, post_unread,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_no_acknowledged_event_and_its_readers_resume_on_the_other() {
    // Arrange: two instances, four stories; every story read on both instances and written through one.
    let mut cluster = Cluster::start(2, &[]).await;
    let stories: Vec<String> = (0..4).map(|n| format!("kill-{n}")).collect();
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for story in &stories {
        for i in 0..2 {
            let options = SubscribeOptions { reconnect: Reconnect::NextTarget, ..SubscribeOptions::default() };
            subscribers.push(cluster.subscriber(&format!("{story}@{i}"), story, cluster.targets(&[i, 1 - i]), options));
        }
    }
    for subscriber in &subscribers {
        subscriber.wait_connected(1).await;
    }
    let publishers = cluster.publishers_alternating(&stories, 30).await;
    poll_until("every subscriber has received events", DEADLINE, || async {
        subscribers.iter().all(|s| s.delivered() > 0).then_some(())
    })
    .await;

    // A POST to the doomed instance whose answer is never read: wait until the broker holds it.
    let (lost_story, lost_key) = (stories[0].as_str(), "kill-0-lost-answer");
    let unread = post_unread(&cluster.url(0), &cluster.writer_token, lost_story, lost_key, 0).await;
    let stored = poll_until("the unanswered POST is stored", DEADLINE, || async {
        cluster.history(lost_story).await.into_iter().find(|e| e.key.as_deref() == Some(lost_key))
    })
    .await;

    // Act: kill -9 instance 0 under load; the unanswered POST's answer dies with it.
    let acked_at_kill: Vec<usize> = publishers.iter().map(Publisher::acked).collect();
    let pid = cluster.instance(0).pid();
    cluster.kill9(0);
    drop(unread);

    // The lost answer's retry lands on instance 1 with the same key: the first receipt, no second event.
    let retry = cluster.post(1, lost_story, lost_key, 0, std::time::Duration::from_secs(5)).await;
    assert_eq!(retry.status, Some(200), "the retry finds the stored event: {retry:?}");
    let retried_id = retry.receipt.as_ref().expect("a receipt").id;
    assert_eq!(retried_id, stored.id, "the retry answers the stored event's id");
    let lost_answer = PublishReport::manual(lost_story, vec![Ack::of(&retry)]);

    // The killed instance's readers come back on the other; every publisher keeps being acknowledged.
    for subscriber in subscribers.iter().filter(|s| s.name.ends_with("@0")) {
        subscriber.wait_connected(2).await;
    }
    for (publisher, before) in publishers.iter().zip(&acked_at_kill) {
        publisher.wait_acked(before + 30).await;
    }

    // Assert
    let injected = format!(
        "kill -9 of instance 0 of 2 (pid {pid}) after {} acknowledged events, 4 stories, publishers and subscribers \
         on both; one POST's answer lost with it and retried on instance 1 (200, same id {retried_id})",
        acked_at_kill.iter().sum::<usize>()
    );
    let tally = cluster.finish("instance_kill", injected, publishers, vec![lost_answer], subscribers).await;
    tally.assert_exact();
    for subscriber in tally.subscribers.iter().filter(|s| s.name.ends_with("@0")) {
        let connections = &subscriber.report.connections;
        let resumed = &connections[1..];
        assert!(
            resumed.iter().any(|c| c.slot == 1 && c.resumed_after.as_deref().is_some_and(|id| id != "0")),
            "{}: reconnected to instance 1 with Last-Event-ID\n{}",
            subscriber.name,
            tally.details()
        );
    }
    let stored_for_key =
        cluster.history(lost_story).await.iter().filter(|e| e.key.as_deref() == Some(lost_key)).count();
    assert_eq!(stored_for_key, 1, "one event for the key whose answer was lost");
}
