//! The adapter's Lua scripts are in Redis before they are needed: loaded at connect, and again as soon as a
//! connection comes back after Redis restarted with an empty script cache, so no append pays for (or fails on) a
//! `NOSCRIPT`. Each test on its own throwaway `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/scripts.rs"]
mod support_scripts;
use support_scripts::script_shas;

use std::time::Duration;

use fred::prelude::*;
use serde_json::json;
use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_core::{Broker, EventData, EventType, Metadata, NewEvent, StoryId};
use storyline_testkit::{RedisServer, poll_until};

/// How long a test waits for the broker to reconnect and reload.
const RECONNECT: Duration = Duration::from_secs(15);

const NO_PERSISTENCE: &[&str] = &["--save", "", "--appendonly", "no"];

async fn connect(server: &RedisServer) -> RedisBroker {
    let config = RedisConfig { command_timeout: Duration::from_secs(1), ..RedisConfig::new(server.url()) };
    RedisBroker::connect(config).await.expect("connect to the test's redis-server")
}

/// A plain connection, for looking behind the broker's back.
async fn plain(server: &RedisServer) -> Client {
    let client = Client::new(Config::from_url(&server.url()).unwrap(), None, None, None);
    client.init().await.unwrap();
    client
}

/// Which of the adapter's scripts the server has, by SHA-1 (`SCRIPT EXISTS`).
async fn loaded(client: &Client) -> Vec<bool> {
    client.script_exists(script_shas()).await.unwrap()
}

/// `NOSCRIPT` errors the server has answered since it started (the errorstats section of `INFO all`).
async fn noscript_errors(client: &Client) -> u64 {
    let info: String = client.info(Some(fred::types::InfoKind::All)).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_NOSCRIPT:count="))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_type: EventType::parse("chapter").expect("event type"),
        data: EventData::from_json_text(&json!({ "n": n }).to_string()).expect("event data"),
        author: "ann".into(),
        ts: n,
        meta: Metadata::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_is_loaded_at_connect_before_any_command_runs() {
    // Arrange
    let server = RedisServer::start();

    // Act
    let _broker = connect(&server).await;

    // Assert: nothing has run yet, and every script is there.
    let redis = plain(&server).await;
    assert_eq!(loaded(&redis).await, [true; 6], "every script loaded at connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_the_scripts_are_back_before_any_append_and_the_first_append_needs_no_reload() {
    // Arrange: a broker in use, then Redis restarts with an empty script cache.
    let mut server = RedisServer::start();
    let broker = connect(&server).await;
    let story = StoryId::parse("tale").unwrap();
    broker.append(&story, event(0), None).await.expect("append before the restart");
    server.restart(NO_PERSISTENCE);

    // Act: no command is sent through the broker; its reconnect listeners alone must reload.
    let redis = plain(&server).await;
    poll_until("every script loaded again after the restart", RECONNECT, || {
        let redis = redis.clone();
        async move { (loaded(&redis).await == [true; 6]).then_some(()) }
    })
    .await;

    // Assert: the first append after the restart goes through at once, without a NOSCRIPT round trip.
    broker.append(&story, event(1), None).await.expect("the first append after the restart succeeds");
    assert_eq!(noscript_errors(&redis).await, 0, "no script call met an empty cache");
}
