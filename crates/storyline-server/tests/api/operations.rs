//! Health, readiness, metrics, the OpenAPI document, routing errors, CORS and broker outages.

use serde_json::json;
use std::time::Duration;

use storyline_testkit::{poll_until, test_config};

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, spawn, spawn_on_redis, spawn_with};

both_brokers!(
    published_events_are_labelled_by_capped_namespace_and_event_type,
    deliveries_resumes_and_replays_are_counted,
    streams_are_counted_by_tier_and_closes_and_failed_opens_by_reason,
    healthz_and_readyz_answer_200_without_a_token,
    metrics_are_prometheus_text_without_a_token,
    the_openapi_document_is_served_and_lists_every_route,
    unknown_paths_are_404_and_wrong_methods_405_as_problem_json,
    every_response_carries_the_security_headers,
    cors_allows_only_configured_origins,
);

async fn healthz_and_readyz_answer_200_without_a_token(kind: Kind) {
    let app = spawn(kind).await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path} (load balancers health-check with HEAD)");
    }
}

async fn metrics_are_prometheus_text_without_a_token(kind: Kind) {
    let app = spawn(kind).await;
    app.publish("s", "chapter", json!(1)).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for name in [
        "storyline_events_published_total",
        "storyline_connections_active",
        "storyline_http_requests_total",
        "storyline_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "storyline_publish_duration_seconds_bucket",
        "storyline_broker_operation_duration_seconds_bucket{op=\"append\"",
        "storyline_broker_up 1",
        "storyline_active_stories",
        // Present from the start (at 0 until something happens), for rates and ratios in alerts.
        "storyline_connections_closed_total{tier=\"guest\",reason=\"slow_consumer\"}",
        "storyline_stream_open_failures_total{reason=\"broker\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    let value = |name: &str| {
        storyline_testkit::metric_value(&text, name).unwrap_or_else(|| panic!("{name} has no value:\n{text}"))
    };
    assert!(value("process_open_fds") >= 3.0 && value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_resident_memory_bytes") > 1_000_000.0, "a real RSS");
    assert!(!text.contains("story=\""), "no story ids as labels");
}

async fn the_openapi_document_is_served_and_lists_every_route(kind: Kind) {
    let app = spawn(kind).await;
    let served: serde_json::Value =
        app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let generated: serde_json::Value = serde_json::from_str(&storyline_server::openapi::pretty_json()).unwrap();
    assert_eq!(served, generated);
    for path in
        ["/v1/stories/{story}/events", "/v1/stories/{story}/stream", "/healthz", "/readyz", "/metrics", "/openapi.json"]
    {
        assert!(served["paths"][path].is_object(), "document lacks {path}");
    }
}

async fn unknown_paths_are_404_and_wrong_methods_405_as_problem_json(kind: Kind) {
    let app = spawn(kind).await;
    assert_problem(app.client.get(app.url("/nope")).send().await.unwrap(), 404, "unknown path").await;
    assert_problem(app.client.get(app.url("/v1/stories")).send().await.unwrap(), 404, "no story").await;
    let cases = [
        (reqwest::Method::DELETE, "/v1/stories/s/events", "GET, POST"),
        (reqwest::Method::POST, "/v1/stories/s/stream", "GET"),
        (reqwest::Method::PUT, "/healthz", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let response =
            app.client.request(method.clone(), app.url(path)).bearer_auth(app.admin_token()).send().await.unwrap();
        assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        assert_problem(response, 405, &format!("{method} {path}")).await;
    }
    assert!(app.all_ids("s").await.is_empty());
}

async fn every_response_carries_the_security_headers(kind: Kind) {
    let config = storyline_server::ServerConfig { cors_origins: vec!["https://app.example".into()], ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let expected = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("referrer-policy", "no-referrer"),
    ];
    let get = |path: &str| app.client.get(app.url(path));
    let requests = [
        ("healthz", get("/healthz")),
        ("404", get("/nope")),
        ("401", get("/v1/stories/s/events")),
        ("history", get("/v1/stories/s/events").bearer_auth(app.admin_token())),
        ("metrics", get("/metrics")),
        ("openapi", get("/openapi.json")),
        ("publish", app.post_event_request("s", &json!({"type": "chapter", "data": 1}))),
        (
            "preflight",
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/v1/stories/s/events"))
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST"),
        ),
    ];
    let mut responses = Vec::new();
    for (what, request) in requests {
        let response = request.send().await.unwrap();
        responses.push((what, response.status(), response.headers().clone()));
    }
    let stream = app.open_stream("s", None).await;
    responses.push(("stream", stream.status, stream.headers.clone()));
    for (what, status, headers) in responses {
        for (name, value) in expected {
            assert_eq!(headers.get(name).and_then(|v| v.to_str().ok()), Some(value), "{what} ({status}): {name}");
        }
    }
}

async fn cors_allows_only_configured_origins(kind: Kind) {
    let config = storyline_server::ServerConfig { cors_origins: vec!["https://app.example".into()], ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/stories/s/events"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type, idempotency-key")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "preflight: {}", preflight.status());
    assert_eq!(
        preflight.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    let allowed = preflight
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key"), "allowed headers: {allowed}");
    // EventSource resumes with Last-Event-ID; a cross-origin fetch-based reader must be allowed to send it.
    let stream_preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/stories/s/stream"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id, authorization")
        .send()
        .await
        .unwrap();
    assert!(stream_preflight.status().is_success(), "stream preflight: {}", stream_preflight.status());
    let allowed = stream_preflight
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(allowed.contains("last-event-id"), "allowed headers: {allowed}");
    let get = app
        .client
        .get(app.url("/v1/stories/s/events"))
        .bearer_auth(app.admin_token())
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    assert_eq!(
        get.headers().get("access-control-allow-credentials").and_then(|v| v.to_str().ok()),
        Some("true"),
        "credentials (the token cookie) for a listed origin"
    );
    let stranger = app
        .client
        .get(app.url("/v1/stories/s/events"))
        .bearer_auth(app.admin_token())
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 200, "non-browser semantics unchanged");
    assert!(stranger.headers().get("access-control-allow-origin").is_none(), "no CORS grant for an unlisted origin");
    assert!(
        stranger.headers().get("access-control-allow-credentials").is_none(),
        "no credentials for an unlisted origin"
    );
    // Without configuration nothing is granted.
    let plain = spawn(kind).await;
    let response = plain
        .client
        .get(plain.url("/v1/stories/s/events"))
        .bearer_auth(plain.admin_token())
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}

/// Redis only: the memory broker cannot become unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_is_unreachable_posts_and_readyz_answer_503_with_retry_after() {
    let mut env = spawn(Kind::Redis).await;
    env.publish("s", "chapter", json!(1)).await;
    env.redis.as_mut().unwrap().kill();
    let response = env.post_event("s", "chapter", json!(2)).await;
    assert!(response.headers().get("retry-after").is_some(), "Retry-After on 503");
    assert_problem(response, 503, "POST while Redis is down").await;
    let ready = env.client.get(env.url("/readyz")).send().await.unwrap();
    assert_problem(ready, 503, "readyz while Redis is down").await;
    assert_eq!(env.client.get(env.url("/healthz")).send().await.unwrap().status(), 200, "liveness is unaffected");
    // The failed calls are counted by op. (`storyline_broker_up` is one gauge per process, and other tests' brokers
    // are up meanwhile, so its value is not checked here.)
    for op in ["append", "ping"] {
        let errors = env.metric(&format!("storyline_broker_errors_total{{op=\"{op}\"}}")).await;
        assert!(errors >= 1.0, "{op} errors counted: {errors}");
    }
}

/// Redis only: during an outage each 503 carries its own Retry-After, drawn from [base, 2 x base] seconds (the
/// `broker_retry_after_secs` setting is the base), so the clients turned away do not all come back in one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_broker_outage_retry_after_is_jittered_between_the_base_and_twice_it() {
    const BASE: u64 = 3;
    let config = storyline_server::ServerConfig { retry_after_secs: 3, ..test_config() };
    let mut env = spawn_with(Kind::Redis, storyline_core::Retention::default(), config).await;
    env.publish("s", "chapter", json!(1)).await;
    env.redis.as_mut().unwrap().kill();

    let mut seen = Vec::new();
    for n in 0..40 {
        let response = env.post_event("s", "chapter", json!(n)).await;
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_problem(response, 503, &format!("POST {n} during the outage")).await;
        seen.push(retry_after.and_then(|v| v.parse::<u64>().ok()).expect("Retry-After in whole seconds"));
    }
    let readyz = env.client.get(env.url("/readyz")).send().await.unwrap();
    seen.extend(readyz.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()));

    assert!(seen.iter().all(|s| (BASE..=2 * BASE).contains(s)), "every Retry-After within [3, 6]: {seen:?}");
    assert!(seen.iter().any(|s| *s != seen[0]), "not all equal (clients would return in lockstep): {seen:?}");
    assert_eq!(seen.len(), 41, "readyz's 503 carries one too");
}

/// Redis only: an outage neither ends open streams nor turns away new ones, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_restarts_streams_stay_open_and_every_acknowledged_event_arrives() {
    const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always", "--save", ""];
    let mut env = spawn_on_redis(storyline_testkit::RedisServer::start_with(AOF)).await;
    let mut before = env.open_stream("s", Some("0")).await;
    let first = env.publish("s", "chapter", json!("before")).await;
    assert_eq!(before.next_event(FRAME).await.id.as_deref(), first["id"].as_str());

    env.redis.as_mut().unwrap().kill();
    assert_problem(env.post_event("s", "chapter", json!("lost?")).await, 503, "POST during the outage").await;
    // A reader reconnecting during the outage is answered 200 (EventSource would give up on a 503) ...
    let mut during = env.open_stream("s", first["id"].as_str()).await;
    assert_eq!(during.status, 200, "stream open during a broker outage");

    env.redis.as_mut().unwrap().restart(AOF);
    // ... and once Redis is back, publishing works again and both streams continue.
    let second = storyline_testkit::poll_until("POST succeeds after Redis restarts", FRAME, || async {
        let response = env.post_event("s", "chapter", json!("after")).await;
        if response.status() == 201 { response.json::<serde_json::Value>().await.ok() } else { None }
    })
    .await;
    assert_eq!(before.next_event(FRAME).await.id.as_deref(), second["id"].as_str(), "the open stream continued");
    assert_eq!(
        during.next_event(FRAME).await.id.as_deref(),
        second["id"].as_str(),
        "the stream opened during the outage caught up"
    );
    assert_eq!(
        env.all_ids("s").await,
        vec![first["id"].as_str().unwrap(), second["id"].as_str().unwrap()],
        "the 503 appended nothing"
    );
}

/// Redis only: an append that reached Redis but whose answer did not come back in time may have stored the event,
/// so the answer says exactly that (503 `unconfirmed`), and a retry with the same Idempotency-Key settles it
/// without storing a second event. Redis holds the write with `CLIENT PAUSE ... WRITE` past the broker's command
/// timeout (1 s here), then runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_redis_did_not_confirm_is_503_unconfirmed_and_a_retry_with_its_key_stores_nothing_twice() {
    let env = spawn(Kind::Redis).await;
    // Loads the append script: a held EVALSHA of a script Redis does not know yet would run as NOSCRIPT.
    env.publish("warm-up", "chapter", json!(0)).await;
    let port = env.redis.as_ref().unwrap().port().to_string();
    let pause = std::process::Command::new("redis-cli")
        .args(["-p", &port, "CLIENT", "PAUSE", "2500", "WRITE"])
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(pause.status.success(), "CLIENT PAUSE: {pause:?}");
    let body = json!({"type": "chapter", "data": "held"});
    let send = || env.post_event_request("s", &body).header("idempotency-key", "held-1").send();

    let held = send().await.unwrap();
    assert!(held.headers().get("retry-after").is_some(), "Retry-After on 503");
    let problem = assert_problem(held, 503, "append held past the command timeout").await;
    assert_eq!(problem["type"], "urn:storyline:problem:unconfirmed", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("Idempotency-Key"), "{problem}");

    // Once the pause ends Redis runs the held append: the 503 did not mean "not stored".
    let stored = poll_until("the held append is stored once Redis resumes writes", FRAME, || async {
        let (status, page) = env.history("s", "?after=0").await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        (status == 200 && !events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let retry = send().await.unwrap();
    assert_eq!(retry.status(), 200, "the retry finds the stored event");
    let receipt: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(receipt["id"], stored[0]["id"], "the retry answers with the held append's receipt");
    assert_eq!(env.all_ids("s").await, vec![stored[0]["id"].as_str().unwrap()], "one event, not two");
    let errors = env.metric("storyline_broker_errors_total{op=\"append\"}").await;
    assert!(errors >= 1.0, "the unconfirmed append is counted as a broker error: {errors}");
}

/// Redis only: an error reply that retrying cannot fix (here a wrong-type key) is a 500, not a 503 that clients
/// would retry forever while readiness stays green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_error_reply_is_a_500_without_retry_after_and_the_cause_is_not_leaked() {
    let env = spawn(Kind::Redis).await;
    let port = env.redis.as_ref().unwrap().port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "SET", "storyline:{broken}:log", "not-a-stream"])
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(out.status.success());
    let response = env.post_event("broken", "chapter", json!(1)).await;
    assert!(response.headers().get("retry-after").is_none());
    let problem = assert_problem(response, 500, "wrong-type key").await;
    assert!(!problem["detail"].as_str().unwrap().contains("WRONGTYPE"), "the cause stays in the logs: {problem}");
    assert_eq!(env.client.get(env.url("/readyz")).send().await.unwrap().status(), 200);
}

/// Streams are counted open and active by tier, closed by tier and reason with their duration, and failed opens
/// by reason. The registry is process-wide and tests run in parallel, so the checks are on increases.
async fn streams_are_counted_by_tier_and_closes_and_failed_opens_by_reason(kind: Kind) {
    // A reader's going is noticed at the next write: heartbeats every 200 ms.
    let config = storyline_server::ServerConfig { heartbeat: Duration::from_millis(200), ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    const ACTIVE: &str = "storyline_connections_active{tier=\"agent\"}";
    const OPENED: &str = "storyline_connections_opened_total{tier=\"agent\"}";
    const CLOSED: &str = "storyline_connections_closed_total{tier=\"agent\",reason=\"client\"}";
    const DURATIONS: &str = "storyline_connection_duration_seconds_count{tier=\"agent\"}";
    const AUTH: &str = "storyline_stream_open_failures_total{reason=\"auth\"}";
    const BAD: &str = "storyline_stream_open_failures_total{reason=\"bad_request\"}";
    let (opened, closed, durations) = (app.metric(OPENED).await, app.metric(CLOSED).await, app.metric(DURATIONS).await);
    let (auth, bad) = (app.metric(AUTH).await, app.metric(BAD).await);

    let agent = app.token_with("bot", "read:*", Some(storyline_server::auth::Tier::Agent), Duration::from_secs(600));
    let request = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&agent);
    let mut stream = app.open_stream_request(request).await;
    assert_eq!(stream.status, 200);
    stream.next_frame(FRAME).await;
    assert!(app.metric(OPENED).await >= opened + 1.0);
    assert!(app.metric(ACTIVE).await >= 1.0, "active while open");
    drop(stream);
    poll_until("the reader's close is counted with its duration", FRAME, || async {
        (app.metric(CLOSED).await >= closed + 1.0 && app.metric(DURATIONS).await >= durations + 1.0).then_some(())
    })
    .await;

    let no_token = app.client.get(app.url("/v1/stories/s/stream")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let bad_resume =
        app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&agent).header("last-event-id", "nope").send();
    assert_eq!(bad_resume.await.unwrap().status(), 400);
    assert!(app.metric(AUTH).await >= auth + 1.0, "auth failure counted");
    assert!(app.metric(BAD).await >= bad + 1.0, "bad resume id counted");
}

/// Published events are counted by namespace, event type and tier; clients cannot grow the label set past the
/// configured caps (the rest is `other`), and story ids never become labels.
async fn published_events_are_labelled_by_capped_namespace_and_event_type(kind: Kind) {
    let config =
        storyline_server::ServerConfig { metrics_max_namespaces: 2, metrics_max_event_types: 1, ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    for story in ["capns1:a", "capns2:b", "capns3:c", "capns3:d"] {
        app.publish(story, "captype.one", json!(1)).await;
    }
    app.publish("capns1:a", "captype.two", json!(2)).await;
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let published: Vec<&str> = text.lines().filter(|l| l.starts_with("storyline_events_published_total{")).collect();
    let has = |namespace: &str, event_type: &str| {
        published.iter().any(|l| {
            l.contains(&format!("namespace=\"{namespace}\"")) && l.contains(&format!("event_type=\"{event_type}\""))
        })
    };
    assert!(has("capns1", "captype.one") && has("capns2", "captype.one"), "{published:#?}");
    assert!(has("other", "captype.one"), "the third namespace is other: {published:#?}");
    assert!(has("capns1", "other"), "the second event type is other: {published:#?}");
    assert!(!text.contains("capns3") && !text.contains("captype.two"), "nothing past the caps is a label");
    assert!(!text.contains("capns1:a"), "no story ids");
}

/// Every delivery is counted by namespace and event type and its latency recorded; a stream opened with a resume
/// id counts as an exact resume or a gap; events read back from the log for a reader behind the live window are
/// counted as replayed. (The resume and replay counters are process-wide and other tests add to them
/// concurrently, so those are checked as at-least increments; the delivery series are this test's own namespace.)
async fn deliveries_resumes_and_replays_are_counted(kind: Kind) {
    let app = spawn(kind).await;
    let ns = format!("dlv{kind:?}").to_lowercase();
    let delivered = format!("storyline_events_delivered_total{{namespace=\"{ns}\",event_type=\"chapter\"}}");
    let latency = format!("storyline_delivery_latency_seconds_count{{namespace=\"{ns}\"}}");
    let exact = "storyline_resumes_total{outcome=\"exact\"}";
    let gap = "storyline_resumes_total{outcome=\"gap\"}";
    let replayed = "storyline_replayed_events_total";

    let live = format!("{ns}:live");
    let mut stream = app.open_stream(&live, None).await;
    app.publish(&live, "chapter", json!(1)).await;
    app.publish(&live, "chapter", json!(2)).await;
    stream.events(2, FRAME).await;
    assert_eq!(app.metric(&delivered).await, 2.0, "two deliveries, labelled by namespace and type");
    assert_eq!(app.metric(&latency).await, 2.0, "and two latencies recorded");
    let (exact0, gap0, replayed0) = (app.metric(exact).await, app.metric(gap).await, app.metric(replayed).await);

    // A reader resuming on a story with no feed yet: the feed starts at the head, so the event after the resume
    // point is read back from the log.
    let old = format!("{ns}:old");
    let first = app.publish(&old, "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    let second = app.publish(&old, "chapter", json!(2)).await["id"].as_str().unwrap().to_owned();
    let mut resumed = app.open_stream(&old, Some(&first)).await;
    assert_eq!(resumed.next_event(FRAME).await.id.as_deref(), Some(second.as_str()));
    assert!(app.metric(exact).await > exact0, "an exact resume is counted");
    assert!(app.metric(replayed).await > replayed0, "the replayed event is counted");
    assert_eq!(app.metric(&delivered).await, 3.0);

    // A resume id this story never issued: a gap frame, counted as a gap.
    let mut reset = app.open_stream(&old, Some("9999999999999-0")).await;
    let frame = reset.next_event(FRAME).await;
    assert_eq!(frame.event.as_deref(), Some("gap"), "{frame:?}");
    assert!(app.metric(gap).await > gap0, "a resume past the story's head is a gap");
}
