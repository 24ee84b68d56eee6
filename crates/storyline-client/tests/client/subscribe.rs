//! `Client::subscribe`: every event once and in order, across restarts, cut connections, at-least-once resumes
//! and token expiry; gaps surfaced; refusals waited out.

use std::{sync::atomic::Ordering, time::Duration};

use futures::StreamExt;
use serde_json::json;
use storyline_client::{Client, Event, EventId, EventType, Item, Receipt, SubscribeOptions};
use storyline_server::ServerConfig;
use storyline_testkit::{spawn_app_with, test_config};

use crate::support::{Env, Kind, Minter, Proxy, WAIT, both_brokers, events, retention, story, tally};

both_brokers!(
    events_arrive_once_each_in_publish_order,
    a_server_restart_mid_stream_loses_and_repeats_nothing,
    events_a_server_repeats_after_a_resume_are_dropped,
    expiring_tokens_are_refreshed_without_losing_or_repeating_an_event,
    a_resume_past_retention_surfaces_a_gap_then_the_retained_events,
);

fn from_the_start() -> SubscribeOptions {
    SubscribeOptions { last_event_id: Some(EventId::ZERO) }
}

async fn publish_n(client: &Client, story: &str, from: u64, n: u64) -> Vec<Receipt> {
    let story = crate::support::story(story);
    let mut receipts = Vec::new();
    for seq in from..from + n {
        let event = Event::new(EventType::parse("step").unwrap(), json!({"seq": seq}));
        receipts.push(client.publish(&story, &event).await.expect("publish"));
    }
    receipts
}

/// Publishes `total` events from a task, one every `pause` (pacing, not a wait for a condition).
fn paced(client: Client, story: &'static str, total: u64, pause: Duration) -> tokio::task::JoinHandle<Vec<Receipt>> {
    tokio::spawn(async move {
        let mut receipts = Vec::new();
        for seq in 0..total {
            receipts.extend(publish_n(&client, story, seq, 1).await);
            tokio::time::sleep(pause).await;
        }
        receipts
    })
}

fn ids(receipts: &[Receipt]) -> Vec<EventId> {
    receipts.iter().map(|r| r.id).collect()
}

async fn events_arrive_once_each_in_publish_order(kind: Kind) {
    let env = Env::start(kind).await;
    let mut subscription = env.client().subscribe(&story("sub-order"), from_the_start());
    let publisher = env.client();
    let published = tokio::spawn(async move { publish_n(&publisher, "sub-order", 0, 50).await });
    let got = events(&mut subscription, 50).await;
    let receipts = published.await.unwrap();
    let (lost, duplicates, in_order) = tally(&ids(&receipts), &got.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!((lost, duplicates, in_order), (0, 0, true));
    let seqs: Vec<u64> = got.iter().map(|e| e.data["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>(), "data as published");
    assert_eq!(subscription.stats().connects, 1);
}

async fn a_server_restart_mid_stream_loses_and_repeats_nothing(kind: Kind) {
    const TOTAL: u64 = 120;
    let env = Env::start(kind).await;
    let proxy = Proxy::start(env.app.addr).await;
    let client = env.client_at(&proxy.base);
    let mut subscription = client.subscribe(&story("sub-restart"), from_the_start());
    // The publisher goes through the proxy too: its retries carry it over the restart.
    let published = paced(client.clone(), "sub-restart", TOTAL, Duration::from_millis(10));
    let mut got = events(&mut subscription, 40).await;

    // Restart: stop the app (its streams end), start another on the same data, send traffic there.
    env.app.stop().await;
    let second = spawn_app_with(env.backend.reconnect().await, env.config.clone()).await;
    proxy.point_at(Some(second.addr));

    got.extend(events(&mut subscription, usize::try_from(TOTAL).unwrap() - 40).await);
    let receipts = published.await.unwrap();
    let (lost, duplicates, in_order) = tally(&ids(&receipts), &got.iter().map(|e| e.id).collect::<Vec<_>>());
    let stats = subscription.stats();
    eprintln!(
        "restart ({kind:?}): {TOTAL} published, {} delivered, lost {lost}, duplicates {duplicates}; {stats:?}",
        got.len()
    );
    assert_eq!((lost, duplicates, in_order), (0, 0, true), "{stats:?}");
    assert!(stats.connects >= 2, "it reconnected: {stats:?}");
    assert_eq!(
        second.all_ids("sub-restart").await.len(),
        usize::try_from(TOTAL).unwrap(),
        "one stored event per publish"
    );
    second.stop().await;
}

async fn events_a_server_repeats_after_a_resume_are_dropped(kind: Kind) {
    let env = Env::start(kind).await;
    let proxy = Proxy::start(env.app.addr).await;
    let client = env.client_at(&proxy.base);
    let mut subscription = client.subscribe(&story("sub-dup"), from_the_start());
    let first = publish_n(&env.client(), "sub-dup", 0, 10).await;
    let mut got = events(&mut subscription, 10).await;

    // The next resume goes back to the start (an at-least-once server): the 10 seen events come again.
    proxy.rewrite_resume_to(Some("0"));
    proxy.cut();
    let second = publish_n(&env.client(), "sub-dup", 10, 5).await;
    got.extend(events(&mut subscription, 5).await);

    let expected: Vec<EventId> = ids(&first).into_iter().chain(ids(&second)).collect();
    let (lost, duplicates, in_order) = tally(&expected, &got.iter().map(|e| e.id).collect::<Vec<_>>());
    let stats = subscription.stats();
    assert_eq!((lost, duplicates, in_order), (0, 0, true), "{stats:?}");
    assert_eq!(stats.duplicates_dropped, 10, "the replayed events were dropped: {stats:?}");
    let resumed = proxy.seen().into_iter().filter(|s| s.request_line.contains("/stream")).nth(1).expect("a reopen");
    assert_eq!(resumed.header("last-event-id"), Some(first[9].id.to_string().as_str()), "resumed after the last seen");
}

async fn expiring_tokens_are_refreshed_without_losing_or_repeating_an_event(kind: Kind) {
    const TOTAL: u64 = 60;
    let env = Env::start(kind).await;
    // Tokens valid for 2 s (whole seconds: 1 to 2 s in fact), so a 7-second run sees several expiries.
    let minter = Minter::new(&env.config, Duration::from_secs(2));
    let source = minter.clone();
    let reader = Client::builder(&env.app.base)
        .token_source(move || {
            let token = source.mint();
            async move { token }
        })
        .build()
        .unwrap();
    let mut subscription = reader.subscribe(&story("sub-expiry"), from_the_start());
    let published = paced(env.client(), "sub-expiry", TOTAL, Duration::from_millis(120)); // over ~7 s
    let got = events(&mut subscription, usize::try_from(TOTAL).unwrap()).await;
    let receipts = published.await.unwrap();
    let (lost, duplicates, in_order) = tally(&ids(&receipts), &got.iter().map(|e| e.id).collect::<Vec<_>>());
    let stats = subscription.stats();
    let minted = minter.minted.load(Ordering::Relaxed);
    eprintln!(
        "expiry ({kind:?}): {TOTAL} published, {} delivered, lost {lost}, duplicates {duplicates}, {minted} tokens minted; {stats:?}",
        got.len()
    );
    assert_eq!((lost, duplicates, in_order), (0, 0, true), "{stats:?}");
    assert!(stats.token_refreshes >= 2, "several expiries, each refreshed: {stats:?}");
    assert_eq!(stats.connects, stats.token_refreshes + 1, "every reconnect was a token refresh: {stats:?}");
}

async fn a_resume_past_retention_surfaces_a_gap_then_the_retained_events(kind: Kind) {
    let env = Env::start_with(kind, retention(5), test_config()).await;
    let receipts = publish_n(&env.client(), "sub-gap", 0, 20).await;
    let options = SubscribeOptions { last_event_id: Some(receipts[2].id) };
    let mut subscription = env.client().subscribe(&story("sub-gap"), options);
    let first = tokio::time::timeout(WAIT, subscription.next()).await.expect("an item").expect("not ended");
    let Ok(Item::Gap(gap)) = first else { panic!("a gap first: {first:?}") };
    assert_eq!(gap.requested, receipts[2].id);
    let retained = env.app.all_ids("sub-gap").await;
    assert_eq!(gap.resumed_from.to_string(), retained[0], "resumes from the oldest retained");
    let got = events(&mut subscription, retained.len()).await;
    assert_eq!(got.iter().map(|e| e.id.to_string()).collect::<Vec<_>>(), retained);
    eprintln!("gap ({kind:?}): 20 published, retention 5, resume after #3: gap {gap:?}, then {} events", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_refused_at_capacity_is_retried_after_retry_after() {
    // A short heartbeat: the server notices the closed stream (and frees its place) at its next write.
    let config = ServerConfig {
        max_streams: std::num::NonZeroUsize::new(1),
        heartbeat: Duration::from_secs(1),
        ..test_config()
    };
    let env = Env::start_with(Kind::Memory, storyline_core::Retention::default(), config).await;
    let hog = env.app.open_stream("other", None).await;
    assert_eq!(hog.status, 200, "the one stream the instance holds");
    let proxy = Proxy::start(env.app.addr).await;
    let mut subscription = env.client_at(&proxy.base).subscribe(&story("sub-capacity"), from_the_start());
    let first = tokio::spawn(async move {
        let got = events(&mut subscription, 1).await;
        (got, subscription.stats())
    });
    storyline_testkit::poll_until("an open refused at capacity", WAIT, || async {
        proxy.seen().iter().any(|s| s.status == Some(503)).then_some(())
    })
    .await;
    drop(hog);
    let receipt = publish_n(&env.client(), "sub-capacity", 0, 1).await;
    let (got, stats) = first.await.unwrap();
    assert_eq!(got[0].id, receipt[0].id);
    assert!(stats.refusals >= 1, "{stats:?}");
}
