//! The Redis broker on a real three-master Redis Cluster (each test its own, from the test kit's
//! [`RedisCluster`]): the broker conformance suite, tails across slots and nodes, scripts reloaded per node, and
//! two storyline instances sharing the cluster through the real HTTP server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/scripts.rs"]
mod support_scripts;
use support_scripts::script_shas;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use fred::prelude::*;
use futures::StreamExt;
use serde_json::json;
use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_core::{
    Broker, BrokerError, EventData, EventId, EventStream, EventType, Metadata, NewEvent, PageLimit, Retention,
    StoredEvent, StoryId, TailItem,
};
use storyline_testkit::{RedisCluster, TestApp, spawn_app};

/// How long a test waits for the next item of a tail or the next SSE frame.
const ITEM: Duration = Duration::from_secs(10);

/// Slots a three-master cluster made by `redis-cli --cluster create` gives each master: 0-5460, 5461-10922,
/// 10923-16383.
const NODE_SLOT_STARTS: [u16; 3] = [0, 5461, 10923];

mod conformance {
    use std::sync::Arc;

    use storyline_core::{Broker, Retention};
    use storyline_testkit::RedisCluster;

    storyline_testkit::broker_conformance_tests! {
        // fred spawns tasks (connection readers, reconnects) and the tailer runs its own read loop.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        factory = {
            // Owned by the closure, so the cluster lives exactly as long as the test.
            let cluster = RedisCluster::start();
            move |retention: Retention| {
                let url = cluster.url();
                async move { Arc::new(super::connect(&url, retention).await) as Arc<dyn Broker> }
            }
        },
    }
}

async fn connect(url: &str, retention: Retention) -> RedisBroker {
    RedisBroker::connect(RedisConfig { retention, ..RedisConfig::new(url) })
        .await
        .expect("connect to the test's cluster")
}

fn story(name: &str) -> StoryId {
    StoryId::parse(name).unwrap_or_else(|e| panic!("story id {name:?}: {e}"))
}

/// The hash slot of every key of `story` (they all carry the story id as their hash tag).
fn slot_of(story: &StoryId) -> u16 {
    fred::util::redis_keyslot(story.as_str().as_bytes())
}

/// Which master owns `slot`, as an index into [`NODE_SLOT_STARTS`].
fn node_of(slot: u16) -> usize {
    NODE_SLOT_STARTS.iter().rposition(|start| slot >= *start).unwrap_or(0)
}

/// Story ids spread over the cluster: two on each master, plus two that share one slot (so one `XREAD` names both).
fn stories_across_the_cluster() -> Vec<StoryId> {
    let mut per_node: [Vec<StoryId>; 3] = Default::default();
    for n in 0.. {
        let candidate = story(&format!("spread:{n}"));
        let node = &mut per_node[node_of(slot_of(&candidate))];
        if node.len() < 2 {
            node.push(candidate);
        }
        if per_node.iter().all(|stories| stories.len() == 2) {
            break;
        }
    }
    let mut seen: HashMap<u16, StoryId> = HashMap::new();
    let shared_slot = (0..)
        .map(|n| story(&format!("same-slot:{n}")))
        .find_map(|candidate| seen.insert(slot_of(&candidate), candidate.clone()).map(|earlier| [earlier, candidate]))
        .expect("two ids share a slot (birthday bound: a few hundred tries)");
    per_node.into_iter().flatten().chain(shared_slot).collect()
}

/// A plain connection to one master, for looking behind the broker's back.
async fn node(port: u16) -> Client {
    let client = Client::new(Config::from_url(&format!("redis://127.0.0.1:{port}")).unwrap(), None, None, None);
    client.init().await.unwrap();
    client
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_type: EventType::parse("chapter").expect("event type"),
        data: EventData::from_json_text(&json!({ "n": n }).to_string()).expect("event data"),
        author: format!("author-{n}"),
        ts: n,
        meta: Metadata::new(),
    }
}

async fn append(broker: &dyn Broker, story: &StoryId, n: u64) -> EventId {
    broker.append(story, event(n), None).await.unwrap_or_else(|e| panic!("append {n} to {story}: {e}")).receipt.id
}

async fn next_event(tail: &mut EventStream, what: &str) -> StoredEvent {
    match tokio::time::timeout(ITEM, tail.next()).await {
        Ok(Some(Ok(TailItem::Event(event)))) => event,
        Ok(Some(Ok(TailItem::Gap(gap)))) => panic!("{what}: unexpected gap {gap:?}"),
        Ok(Some(Err(e))) => panic!("{what}: tail failed: {e}"),
        Ok(None) => panic!("{what}: tail ended"),
        Err(_) => panic!("{what}: nothing within {ITEM:?}"),
    }
}

/// Tails on stories whose keys live in different slots on every master (two of them in one slot) see every
/// event of their own story, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_on_stories_across_slots_and_nodes_see_every_event_in_order_once() {
    // Arrange
    let cluster = RedisCluster::start();
    let broker = connect(&cluster.url(), Retention::default()).await;
    let stories = stories_across_the_cluster();
    let mut tails: Vec<EventStream> = stories.iter().map(|s| broker.tail(s, EventId::ZERO)).collect();

    // Act: every story written at once, round after round, so reads of several slots and nodes interleave.
    const ROUNDS: u64 = 30;
    let mut appended: Vec<Vec<EventId>> = vec![Vec::new(); stories.len()];
    for round in 0..ROUNDS {
        let ids = futures::future::join_all(stories.iter().map(|s| append(&broker, s, round))).await;
        for (log, id) in appended.iter_mut().zip(ids) {
            log.push(id);
        }
    }

    // Assert
    for port in cluster.ports() {
        let keys: u64 = node(port).await.dbsize().await.unwrap();
        assert!(keys > 0, "the stories have keys on every master, 127.0.0.1:{port} included");
    }
    for ((story, tail), want) in stories.iter().zip(&mut tails).zip(&appended) {
        let mut got = Vec::new();
        for i in 0..ROUNDS {
            let event = next_event(tail, &format!("event {i} of {story}")).await;
            assert_eq!(&event.story, story, "a tail sees only its own story");
            got.push(event.id);
        }
        assert_eq!(&got, want, "the tail on {story} (slot {}) sees its events in order", slot_of(story));
    }
    // Exactly once: a fresh append is the very next item of every tail.
    for (story, tail) in stories.iter().zip(&mut tails) {
        let sentinel = append(&broker, story, 1_000).await;
        assert_eq!(next_event(tail, &format!("sentinel of {story}")).await.id, sentinel, "{story}: no duplicate");
    }
}

/// A master that lost its script cache (a restart, a failover to a fresh node) answers `NOSCRIPT`; the broker
/// loads the scripts again and the append, read and tail all go through, on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_on_a_master_that_lost_them() {
    // Arrange: scripts in use on every master, then flushed everywhere.
    let cluster = RedisCluster::start();
    let broker = connect(&cluster.url(), Retention::default()).await;
    let stories = stories_across_the_cluster();
    for s in &stories {
        append(&broker, s, 0).await;
    }
    for port in cluster.ports() {
        let node = node(port).await;
        let _: () = node.script_flush(false).await.unwrap();
        let loaded: Vec<bool> =
            node.script_exists(vec![fred::util::sha1_hash(include_str!("../scripts/append.lua"))]).await.unwrap();
        assert_eq!(loaded, vec![false], "the append script is gone from 127.0.0.1:{port}");
        node.quit().await.unwrap();
    }

    // Act + Assert
    for s in &stories {
        let mut tail = broker.tail(s, EventId::ZERO);
        let id = append(&broker, s, 1).await;
        let page = broker.read_after(s, EventId::ZERO, PageLimit::new(100).expect("page limit")).await.expect("read");
        assert_eq!(page.events.len(), 2, "{s}: both events read back");
        assert_eq!(next_event(&mut tail, "first").await.id, page.events[0].id, "{s}: tail from zero");
        assert_eq!(next_event(&mut tail, "second").await.id, id, "{s}: tail sees the new event");
    }
    for port in cluster.ports() {
        let node = node(port).await;
        let loaded: Vec<bool> =
            node.script_exists(vec![fred::util::sha1_hash(include_str!("../scripts/append.lua"))]).await.unwrap();
        assert_eq!(loaded, vec![true], "the append script is loaded again on 127.0.0.1:{port}");
        node.quit().await.unwrap();
    }
}

/// Two storyline instances on one cluster, each with its own broker and server.
async fn two_instances(cluster: &RedisCluster) -> (TestApp, TestApp) {
    let a = spawn_app(Arc::new(connect(&cluster.url(), Retention::default()).await)).await;
    let b = spawn_app(Arc::new(connect(&cluster.url(), Retention::default()).await)).await;
    (a, b)
}

/// An event posted to instance A reaches a reader streaming from instance B, in order, every time. Also measures
/// the delivery latency (POST on A answered → frame on B) and prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_on_one_instance_reaches_a_reader_on_the_other() {
    // Arrange
    let cluster = RedisCluster::start();
    let (a, b) = two_instances(&cluster).await;
    let mut reader = b.open_stream("tale", Some("0")).await;
    assert_eq!(reader.status, 200, "the stream opens on B");

    // Act + Assert: one event at a time, so each delivery is timed on its own.
    let mut latencies = Vec::new();
    for n in 0..40u64 {
        // Pacing, not waiting for anything: spreads the posts over the phases of B's poll interval, as
        // independent writers would, instead of always posting just after B's last poll.
        tokio::time::sleep(Duration::from_millis((n * 17) % 50)).await;
        let receipt = a.publish("tale", "chapter", json!({ "n": n })).await;
        let posted = Instant::now();
        let frame = reader.next_event(ITEM).await;
        latencies.push(posted.elapsed());
        assert_eq!(frame.id.as_deref(), receipt["id"].as_str(), "event {n} arrives on B, in order");
        assert_eq!(frame.json()["data"], json!({ "n": n }), "event {n} arrives intact");
    }
    latencies.sort();
    eprintln!(
        "cluster delivery latency A→B over {} events: min {:?}, median {:?}, p90 {:?}, max {:?}",
        latencies.len(),
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        latencies[latencies.len() - 1]
    );
}

/// A reader that drops from instance B resumes on instance A with `Last-Event-ID`: no loss, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resumes_on_the_other_instance_with_no_loss_or_duplicate() {
    // Arrange: a reader on B sees part of the story, then drops.
    let cluster = RedisCluster::start();
    let (a, b) = two_instances(&cluster).await;
    let mut reader = b.open_stream("tale", Some("0")).await;
    for n in 0..10 {
        a.publish("tale", "chapter", json!(n)).await;
    }
    let first = reader.events(4, ITEM).await;
    let last_seen = first.last().and_then(|f| f.id.clone()).expect("an id");
    drop(reader);
    for n in 10..15 {
        b.publish("tale", "chapter", json!(n)).await;
    }

    // Act: it reconnects to the other instance.
    let mut resumed = a.open_stream("tale", Some(&last_seen)).await;
    let rest = resumed.events(11, ITEM).await;
    let live = b.publish("tale", "chapter", json!(15)).await;
    let next = resumed.next_event(ITEM).await;

    // Assert
    let mut seen: Vec<String> = first.into_iter().chain(rest).map(|f| f.id.expect("an id")).collect();
    assert_eq!(seen, a.all_ids("tale").await[..15].to_vec(), "no gap, no duplicate across the reconnect");
    seen.push(next.id.expect("an id"));
    assert_eq!(seen.last().map(String::as_str), live["id"].as_str(), "then live events from B, the next one first");
    assert_eq!(seen, b.all_ids("tale").await, "both instances read the same log");
}

/// With a story TTL on a cluster, each story's stream, metadata and idempotency keys (all in its slot, on its
/// master) carry the expiry and vanish together; a reader resuming from an id of the expired story, on the other
/// instance, gets a `gap` frame before the new story's first event, never a silent hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_story_ttl_keys_expire_together_on_every_master_and_a_resumed_reader_gets_a_gap() {
    const TTL: Duration = Duration::from_millis(1_500);
    // Arrange: two instances with the TTL; a story on each master written through instance A.
    let cluster = RedisCluster::start();
    let retention = Retention { story_ttl: Some(TTL), ..Retention::default() };
    let a = spawn_app(Arc::new(connect(&cluster.url(), retention.clone()).await)).await;
    let b = spawn_app(Arc::new(connect(&cluster.url(), retention).await)).await;
    let redis = Client::new(Config::from_url(&cluster.url()).unwrap(), None, None, None);
    redis.init().await.unwrap();
    let stories: Vec<StoryId> = stories_across_the_cluster().into_iter().step_by(2).take(3).collect();
    let mut first_ids = Vec::new();
    for s in &stories {
        let request = a.post_event_request(s.as_str(), &json!({"type": "chapter", "data": 1}));
        let receipt: serde_json::Value =
            request.header("idempotency-key", "k").send().await.unwrap().json().await.unwrap();
        first_ids.push(receipt["id"].as_str().unwrap().to_owned());
        a.publish(s.as_str(), "chapter", json!(2)).await;
    }
    let keys_of = |s: &StoryId| ["log", "meta", "idem:k"].map(|suffix| format!("storyline:{{{s}}}:{suffix}"));

    // Assert: every key of every story expires within the TTL, the idempotency key no later than its stream.
    for s in &stories {
        let mut ttls = Vec::new();
        for key in keys_of(s) {
            ttls.push(redis.pttl::<i64, _>(key).await.unwrap());
        }
        assert!(ttls.iter().all(|t| (1..=1_500).contains(t)), "{s} (slot {}): expiries {ttls:?}", slot_of(s));
        assert!(ttls[2] <= ttls[0], "{s}: the idempotency key does not outlive the stream: {ttls:?}");
    }
    storyline_testkit::poll_until("every story's keys to expire", ITEM, || async {
        let mut left = 0;
        for s in &stories {
            left += redis.exists::<i64, _>(keys_of(s).to_vec()).await.unwrap();
        }
        (left == 0).then_some(())
    })
    .await;

    // Act: each story starts afresh through B; a reader resumes on A from the expired story's first id.
    for (s, old) in stories.iter().zip(&first_ids) {
        let reused = b.post_event_request(s.as_str(), &json!({"type": "chapter", "data": "new"}));
        let reused = reused.header("idempotency-key", "k").send().await.unwrap();
        assert_eq!(reused.status(), 201, "{s}: the key expired with its story: a new event, not 422");
        let new: serde_json::Value = reused.json().await.unwrap();
        let mut reader = a.open_stream(s.as_str(), Some(old)).await;

        // Assert
        let gap = reader.next_event(ITEM).await;
        assert_eq!(gap.event.as_deref(), Some("gap"), "{s}: a gap frame first, not a silent hole: {gap:?}");
        assert_eq!(gap.json()["requested"], json!(old), "{s}: the gap starts at the resume id");
        let next = reader.next_event(ITEM).await;
        assert_eq!(next.id.as_deref(), new["id"].as_str(), "{s}: then the new story's first event");
    }
}

/// fred's URL forms pick the deployment: a `redis-sentinel://` URL naming its service is accepted (the broker
/// starts not-ready while no sentinel answers), one without the service name is a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_is_accepted_and_one_without_a_service_name_is_not() {
    let port = storyline_testkit::free_port();
    let quick = |url: String| RedisConfig { command_timeout: Duration::from_millis(100), ..RedisConfig::new(url) };

    let sentinel = RedisBroker::connect(quick(format!(
        "redis-sentinel://127.0.0.1:{port}/0?sentinelServiceName=mymaster&node=127.0.0.1:{port}"
    )))
    .await;
    let broker = sentinel.expect("a sentinel URL is accepted");
    assert!(matches!(broker.ping().await, Err(BrokerError::Unavailable(_))), "not ready while no sentinel answers");

    let nameless = RedisBroker::connect(quick(format!("redis-sentinel://127.0.0.1:{port}"))).await;
    assert!(
        matches!(&nameless, Err(BrokerError::Unavailable(e)) if e.starts_with("bad Redis URL")),
        "a sentinel URL needs sentinelServiceName: {nameless:?}"
    );
}

/// Whether master `port` has every script.
async fn has_every_script(port: u16) -> bool {
    let node = node(port).await;
    let loaded: Vec<bool> = node.script_exists(script_shas()).await.unwrap();
    node.quit().await.unwrap();
    loaded.iter().all(|l| *l)
}

/// The scripts are on every master as soon as the broker is connected, before anything ran; and when every
/// master loses them and the broker's connections are cut (as a restart does), they are loaded on every master
/// again as the connections come back, before any append is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_are_loaded_on_every_master_at_connect_and_after_every_reconnect() {
    // Arrange + Act
    let cluster = RedisCluster::start();
    let broker = connect(&cluster.url(), Retention::default()).await;

    // Assert: at connect.
    for port in cluster.ports() {
        assert!(has_every_script(port).await, "every script loaded on 127.0.0.1:{port} at connect");
    }

    // One master at a time (each cut makes the broker reconnect; cutting the next one before that is done could
    // cut connections fred has not yet noticed are new): the master forgets the scripts and drops every client
    // connection but the one asking, as a restart does.
    for port in cluster.ports() {
        let node = node(port).await;
        let _: () = node.script_flush(false).await.unwrap();
        let _: Value =
            node.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "normal", "SKIPME", "yes"]).await.unwrap();
        node.quit().await.unwrap();
        assert!(!has_every_script(port).await, "127.0.0.1:{port} lost the scripts");

        // Act + Assert: nothing is sent through the broker; its reconnect listeners alone reload.
        storyline_testkit::poll_until(&format!("scripts back on 127.0.0.1:{port}"), ITEM, || async move {
            has_every_script(port).await.then_some(())
        })
        .await;
    }
    // Appends work on every master again. A pooled connection the last cut killed may be noticed only by the
    // first write on it (503 `unconfirmed` / `unavailable` to a client, which retries), so retry those, as a client
    // does, within the deadline; any other error fails the test.
    for s in &stories_across_the_cluster() {
        storyline_testkit::poll_until(&format!("an append to {s} after the cuts"), ITEM, || async {
            match broker.append(s, event(1), None).await {
                Ok(_) => Some(()),
                Err(BrokerError::Unconfirmed(_) | BrokerError::Unavailable(_)) => None,
                Err(e) => panic!("append to {s}: {e}"),
            }
        })
        .await;
    }
}

/// How long a tail on a healthy master may take to see an event while another master hangs. The poll interval
/// (50 ms) is the expected pace; the hung master costs the command timeout (4 s below) per read, so a tail held
/// back by it would take that long.
const LIVE: Duration = Duration::from_millis(1_500);

/// The master that owns `story`'s slot, found by asking each one for the keys in it.
async fn owner_of(cluster: &RedisCluster, story: &StoryId) -> u16 {
    for port in cluster.ports() {
        let node = node(port).await;
        let keys: u64 = node.cluster_count_keys_in_slot(slot_of(story)).await.unwrap();
        node.quit().await.unwrap();
        if keys > 0 {
            return port;
        }
    }
    panic!("no master holds the keys of {story}");
}

/// A master whose process stops answering (frozen, as a long fork, swap or a silent partition does) makes
/// readiness fail, naming that master only; tails on stories of the other masters keep receiving their events
/// at their own pace, not at the frozen master's timeouts and backoff; and once it answers again, its stories'
/// tails carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_fails_readiness_by_name_and_does_not_hold_back_tails_on_the_others() {
    // Arrange: a node timeout longer than the test, so the other masters keep serving their slots.
    let cluster = RedisCluster::start_with(&["--cluster-node-timeout", "120000"]);
    let config = RedisConfig { command_timeout: Duration::from_secs(4), ..RedisConfig::new(cluster.url()) };
    let broker = RedisBroker::connect(config).await.expect("connect to the test's cluster");
    broker.ping().await.expect("ready while every master answers");
    let stories = stories_across_the_cluster();
    let mut tails: Vec<EventStream> = stories.iter().map(|s| broker.tail(s, EventId::ZERO)).collect();
    let mut owners = Vec::new();
    for (s, tail) in stories.iter().zip(&mut tails) {
        let id = append(&broker, s, 0).await;
        assert_eq!(next_event(tail, &format!("first event of {s}")).await.id, id);
        owners.push(owner_of(&cluster, s).await);
    }
    let frozen = owners[0];
    let (on_frozen, live): (Vec<_>, Vec<_>) =
        stories.iter().zip(tails.iter_mut()).zip(&owners).partition(|(_, owner)| **owner == frozen);
    assert!(!live.is_empty() && !on_frozen.is_empty(), "stories on the frozen master and on others");

    // Act
    cluster.node(frozen).pause();

    // Assert: readiness names the frozen master, and only it.
    match broker.ping().await {
        Err(BrokerError::Unavailable(why)) => {
            assert!(why.contains(&format!("127.0.0.1:{frozen}")), "the frozen master is named: {why}");
            for port in cluster.ports().into_iter().filter(|p| *p != frozen) {
                assert!(!why.contains(&format!("127.0.0.1:{port}")), "a healthy master is not named: {why}");
            }
        }
        other => panic!("readiness fails while a master is frozen, got {other:?}"),
    }
    // Assert: tails on the other masters keep pace, round after round, while the frozen master's reads time out.
    let mut live = live;
    for round in 1..=6u64 {
        for ((story, tail), _) in &mut live {
            let id = append(&broker, story, round).await;
            let arrived = tokio::time::timeout(LIVE, tail.next()).await;
            match arrived {
                Ok(Some(Ok(TailItem::Event(event)))) => assert_eq!(event.id, id, "round {round} on {story}"),
                Ok(other) => panic!("round {round} on {story}: unexpected {other:?}"),
                Err(_) => panic!("round {round} on {story}: held back more than {LIVE:?} by the frozen master"),
            }
        }
    }

    // Assert: once the master answers again, its stories' tails carry on.
    cluster.node(frozen).resume();
    for ((story, tail), _) in on_frozen {
        let id = append(&broker, story, 100).await;
        assert_eq!(next_event(tail, &format!("{story} after the master is back")).await.id, id);
    }
    broker.ping().await.expect("ready again");
}

/// A master whose process is killed refuses connections, and fred then reconnects the whole cluster client, so
/// nothing answers: readiness still names the master that is gone. Once it is back (same port, same cluster
/// identity, empty script cache), the broker is ready again and that master has every script before any append
/// is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_readiness_by_name_and_once_back_has_every_script_before_any_append() {
    // Arrange
    let mut cluster = RedisCluster::start_with(&["--cluster-node-timeout", "120000"]);
    let config = RedisConfig { command_timeout: Duration::from_secs(1), ..RedisConfig::new(cluster.url()) };
    let broker = RedisBroker::connect(config).await.expect("connect to the test's cluster");
    broker.ping().await.expect("ready while every master answers");
    let killed = cluster.ports()[0];

    // Act
    cluster.kill_node(killed);

    // Assert: once the client is reconnecting (nothing answers; before that the ping of each master fails on its
    // own), readiness still says which master is gone.
    let why = storyline_testkit::poll_until("readiness fails as not connected", ITEM, || {
        let broker = &broker;
        async move {
            match broker.ping().await {
                Err(BrokerError::Unavailable(why)) if why.starts_with("not connected") => Some(why),
                _ => None,
            }
        }
    })
    .await;
    assert!(why.contains(&format!("127.0.0.1:{killed}")), "the killed master is named: {why}");
    for port in cluster.ports().into_iter().filter(|p| *p != killed) {
        assert!(!why.contains(&format!("lost: 127.0.0.1:{port}")), "a healthy master is not reported lost: {why}");
    }

    // Act: the master comes back.
    cluster.restart_node(killed);

    // Assert: ready again, the scripts are on it before anything is sent, and appends go through everywhere.
    storyline_testkit::poll_until("ready again", Duration::from_secs(30), || {
        let broker = &broker;
        async move { broker.ping().await.ok() }
    })
    .await;
    storyline_testkit::poll_until("the scripts on the restarted master", ITEM, || async move {
        has_every_script(killed).await.then_some(())
    })
    .await;
    for s in &stories_across_the_cluster() {
        append(&broker, s, 1).await;
    }
}
