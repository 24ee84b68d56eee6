//! Abuse limits: publish rates per principal (by tier) and per story, stream opens per client IP (through trusted
//! proxies only), concurrent streams per principal, and the IP allow/deny lists. Each refusal is fast, says when
//! to retry, and changes nothing.

use std::time::Duration;

use serde_json::json;
use storyline_server::{
    ServerConfig,
    auth::Tier,
    limits::{LimitsConfig, TierRates},
    network::NetworkPolicy,
};
use storyline_testkit::{poll_until, test_config};

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, spawn_with};

both_brokers!(
    publishing_past_a_principals_rate_is_429_with_retry_after_and_appends_nothing,
    a_hot_story_is_limited_whoever_writes_to_it,
    stream_opens_are_limited_per_client_ip_and_forwarded_for_counts_only_from_trusted_proxies,
    a_principal_may_hold_only_so_many_streams_and_a_closed_one_frees_its_place,
    denied_and_unlisted_addresses_get_403_on_every_route,
);

const EVENT: &str = r#"{"type":"a","data":1}"#;

fn with_limits(limits: LimitsConfig) -> ServerConfig {
    ServerConfig { limits, heartbeat: Duration::from_millis(200), ..test_config() }
}

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

async fn rate_limited(response: reqwest::Response, case: &str) -> serde_json::Value {
    let retry_after: u64 =
        response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("Retry-After");
    assert!(retry_after >= 1, "{case}: Retry-After {retry_after}");
    let problem = assert_problem(response, 429, case).await;
    assert_eq!(problem["type"], "urn:storyline:problem:rate-limited", "{case}");
    problem
}

async fn publishing_past_a_principals_rate_is_429_with_retry_after_and_appends_nothing(kind: Kind) {
    let rates = TierRates { guest: 1, member: 2, agent: 4, admin: 0 };
    let app = spawn_with(
        kind,
        storyline_core::Retention::default(),
        with_limits(LimitsConfig { publish_per_sub: rates, ..LimitsConfig::unlimited() }),
    )
    .await;
    let member = app.token_with("ann", "write:*", Some(Tier::Member), Duration::from_secs(600));
    let agent = app.token_with("bot", "write:*", Some(Tier::Agent), Duration::from_secs(600));
    let statuses = |token: String, n: usize| {
        let app = &app;
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(app.post_as("m", &token, EVENT).send().await.unwrap().status().as_u16());
            }
            out
        }
    };
    // A burst of one second's worth, then 429 (the test runs well within that second's refill for 2 and 4/s:
    // a refill can only turn a 429 into a 201, so the counts below are checked as at-least/at-most).
    let ann = statuses(member.clone(), 4).await;
    assert_eq!(&ann[..2], [201, 201], "member burst: {ann:?}");
    assert!(ann.contains(&429), "member past 2/s: {ann:?}");
    let bot = statuses(agent, 6).await;
    assert_eq!(&bot[..4], [201, 201, 201, 201], "agent gets more: {bot:?}");
    assert!(bot.contains(&429), "agent past 4/s: {bot:?}");
    let other = app.token_with("cat", "write:*", Some(Tier::Member), Duration::from_secs(600));
    assert_eq!(app.post_as("m", &other, EVENT).send().await.unwrap().status(), 201, "per principal");

    // The refusal itself: Retry-After, problem+json, and nothing appended.
    let before = app.all_ids("m").await.len();
    let refused = loop {
        let response = app.post_as("m", &member, EVENT).send().await.unwrap();
        if response.status() == 429 {
            break response;
        }
    };
    let problem = rate_limited(refused, "member over its rate").await;
    assert!(problem["detail"].as_str().unwrap().contains("per principal"), "{problem}");
    assert_eq!(app.all_ids("m").await.len(), before, "a refused publish appends nothing");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("storyline_audit_events_total{event=\"rate_limited\",reason=\"publish_rate_per_sub\"}"),
        "counted by limit"
    );
}

async fn a_hot_story_is_limited_whoever_writes_to_it(kind: Kind) {
    let app = spawn_with(
        kind,
        storyline_core::Retention::default(),
        with_limits(LimitsConfig { publish_per_story: 3, ..LimitsConfig::unlimited() }),
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let writer = app.token_with(&format!("w{i}"), "write:*", Some(Tier::Agent), Duration::from_secs(600));
        statuses.push(app.post_as("hot", &writer, EVENT).send().await.unwrap().status().as_u16());
    }
    assert_eq!(&statuses[..3], [201, 201, 201], "{statuses:?}");
    assert!(statuses.contains(&429), "six different writers, one story past 3/s: {statuses:?}");
    let writer = app.token_with("w0", "write:*", Some(Tier::Agent), Duration::from_secs(600));
    assert_eq!(app.post_as("cold", &writer, EVENT).send().await.unwrap().status(), 201, "other stories are fine");
}

async fn stream_opens_are_limited_per_client_ip_and_forwarded_for_counts_only_from_trusted_proxies(kind: Kind) {
    let trusting = ServerConfig {
        network: NetworkPolicy { trusted_proxies: nets(&["127.0.0.0/8"]), ..NetworkPolicy::default() },
        ..with_limits(LimitsConfig { stream_opens_per_ip: 2, ..LimitsConfig::unlimited() })
    };
    let app = spawn_with(kind, storyline_core::Retention::default(), trusting).await;
    let open = |forwarded_for: &'static str| {
        let request = app
            .client
            .get(app.url("/v1/stories/s/stream"))
            .bearer_auth(app.admin_token())
            .header("x-forwarded-for", forwarded_for);
        app.open_stream_request(request)
    };
    let mut kept = Vec::new();
    for _ in 0..2 {
        let stream = open("203.0.113.1").await;
        assert_eq!(stream.status, 200);
        kept.push(stream);
    }
    let third = open("203.0.113.1").await;
    assert_eq!(third.status, 429, "third open from one client within the second");
    assert!(third.headers.get("retry-after").is_some());
    assert_eq!(open("203.0.113.2").await.status, 200, "another client behind the same proxy has its own budget");

    // Without trust, X-Forwarded-For is ignored: every request is the loopback peer's, however it varies the header.
    let untrusting = with_limits(LimitsConfig { stream_opens_per_ip: 2, ..LimitsConfig::unlimited() });
    let app = spawn_with(kind, storyline_core::Retention::default(), untrusting).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let request = app
            .client
            .get(app.url("/v1/stories/s/stream"))
            .bearer_auth(app.admin_token())
            .header("x-forwarded-for", format!("198.51.100.{i}"));
        let stream = app.open_stream_request(request).await;
        statuses.push(stream.status.as_u16());
        kept.push(stream);
    }
    assert_eq!(statuses, [200, 200, 429], "a spoofed X-Forwarded-For does not buy a new budget");
}

async fn a_principal_may_hold_only_so_many_streams_and_a_closed_one_frees_its_place(kind: Kind) {
    let app = spawn_with(
        kind,
        storyline_core::Retention::default(),
        with_limits(LimitsConfig { streams_per_principal: 2, ..LimitsConfig::unlimited() }),
    )
    .await;
    let ann = app.token_with("ann", "read:* write:*", None, Duration::from_secs(600));
    let open = |token: String| {
        let request = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(token);
        app.open_stream_request(request)
    };
    let mut first = open(ann.clone()).await;
    let second = open(ann.clone()).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    let third = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&ann).send().await.unwrap();
    let problem = rate_limited(third, "third concurrent stream").await;
    assert!(problem["detail"].as_str().unwrap().contains("concurrent"), "{problem}");
    let bob = app.token_with("bob", "read:*", None, Duration::from_secs(600));
    assert_eq!(open(bob).await.status, 200, "another principal is not affected");

    // The open streams keep working, and a closed one gives its place back.
    let id = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(first.next_event(FRAME).await.id.as_deref(), Some(id.as_str()));
    drop(second);
    poll_until("the closed stream's place is free again", FRAME, || async {
        let response = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&ann).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

async fn denied_and_unlisted_addresses_get_403_on_every_route(kind: Kind) {
    let denying = ServerConfig {
        network: NetworkPolicy { deny: nets(&["127.0.0.0/8"]), ..NetworkPolicy::default() },
        ..test_config()
    };
    let app = spawn_with(kind, storyline_core::Retention::default(), denying).await;
    for path in ["/healthz", "/v1/stories/s/events", "/v1/stories/s/stream", "/nope"] {
        let response = app.client.get(app.url(path)).bearer_auth(app.admin_token()).send().await.unwrap();
        let problem = assert_problem(response, 403, path).await;
        assert_eq!(problem["type"], "urn:storyline:problem:ip-denied", "{path}");
    }
    let post = app.post_as("s", &app.admin_token(), EVENT).send().await.unwrap();
    assert_problem(post, 403, "POST from a denied address").await;

    // An allow list that does not name the client; a trusted proxy forwarding for an allowed client passes.
    let allowing = ServerConfig {
        network: NetworkPolicy {
            allow: nets(&["10.0.0.0/8"]),
            trusted_proxies: nets(&["127.0.0.1/32"]),
            ..NetworkPolicy::default()
        },
        ..test_config()
    };
    let app = spawn_with(kind, storyline_core::Retention::default(), allowing).await;
    let direct = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_problem(direct, 403, "loopback is not on the allow list").await;
    let forwarded =
        app.post_as("s", &app.admin_token(), EVENT).header("x-forwarded-for", "10.1.2.3").send().await.unwrap();
    assert_eq!(forwarded.status(), 201, "an allowed client through a trusted proxy");
    let outsider =
        app.post_as("s", &app.admin_token(), EVENT).header("x-forwarded-for", "192.0.2.1").send().await.unwrap();
    assert_problem(outsider, 403, "a client outside the allow list through a trusted proxy").await;
    let history = app
        .client
        .get(app.url("/v1/stories/s/events"))
        .bearer_auth(app.admin_token())
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = history.json().await.unwrap();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1), "only the allowed POST appended: {page}");
}
