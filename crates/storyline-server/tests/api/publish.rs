//! `POST /v1/stories/{story}/events`.

use serde_json::{Value, json};
use storyline_core::EventId;

use crate::helpers::{Kind, assert_problem, both_brokers, redis_broker, spawn, spawn_with};

both_brokers!(
    publish_answers_201_with_the_receipt,
    ids_strictly_increase_within_a_story,
    a_non_json_content_type_is_415,
    malformed_json_is_400,
    json_that_is_not_an_event_is_422,
    invalid_or_reserved_event_types_are_422,
    a_body_over_the_limit_is_413,
    an_invalid_story_id_is_400,
    an_idempotency_key_replays_the_same_id_and_appends_nothing,
    an_idempotency_key_is_scoped_to_its_story,
    concurrent_posts_with_one_idempotency_key_append_once,
    an_idempotency_key_reused_for_a_different_event_is_422_and_appends_nothing,
    an_invalid_idempotency_key_is_400,
    the_event_data_is_stored_verbatim,
);

async fn publish_answers_201_with_the_receipt(kind: Kind) {
    let app = spawn(kind).await;
    let before = now_ms();
    let receipt = app.publish("s1", "chapter", json!({"text": "hi"})).await;
    assert!(EventId::parse(receipt["id"].as_str().unwrap()).is_ok(), "id is <ms>-<seq>: {receipt}");
    assert_eq!(receipt["story"], "s1");
    assert_eq!(receipt["type"], "chapter");
    let ts = receipt["ts"].as_u64().expect("ts is an integer");
    assert!(ts >= before && ts <= now_ms(), "ts {ts} is the accept time in ms");
    assert_eq!(receipt.as_object().unwrap().len(), 4, "exactly id, story, type, ts: {receipt}");
    assert_eq!(app.all_ids("s1").await, vec![receipt["id"].as_str().unwrap().to_owned()]);
}

async fn ids_strictly_increase_within_a_story(kind: Kind) {
    let app = spawn(kind).await;
    let mut last = EventId::ZERO;
    for n in 0..50 {
        let receipt = app.publish("s", "tick", json!(n)).await;
        let id = EventId::parse(receipt["id"].as_str().unwrap()).unwrap();
        assert!(id > last, "event {n}: {id} after {last}");
        last = id;
    }
}

async fn a_non_json_content_type_is_415(kind: Kind) {
    let app = spawn(kind).await;
    let body = json!({"type": "chapter", "data": 1}).to_string();
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut request =
            app.client.post(app.url("/v1/stories/s/events")).bearer_auth(app.admin_token()).body(body.clone());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        assert_problem(request.send().await.unwrap(), 415, &format!("{content_type:?}")).await;
    }
    let ok = app
        .client
        .post(app.url("/v1/stories/s/events"))
        .bearer_auth(app.admin_token())
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201, "application/json with a charset is JSON");
    assert_eq!(app.all_ids("s").await.len(), 1, "only the valid POST appended");
}

async fn malformed_json_is_400(kind: Kind) {
    let app = spawn(kind).await;
    for body in ["{", "{\"type\":\"a\",\"data\":}", "nope", "", "{\"type\":\"a\",\"data\":1} {}"] {
        let response = app
            .client
            .post(app.url("/v1/stories/s/events"))
            .bearer_auth(app.admin_token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, body).await;
    }
    assert!(app.all_ids("s").await.is_empty(), "nothing appended");
}

async fn json_that_is_not_an_event_is_422(kind: Kind) {
    let app = spawn(kind).await;
    let cases = [
        json!([]),
        json!("chapter"),
        json!({"type": "chapter"}),
        json!({"data": 1}),
        json!({"type": 5, "data": 1}),
        json!({"type": "chapter", "data": 1, "extra": true}),
    ];
    for body in cases {
        let response = app.post_event_request("s", &body).send().await.unwrap();
        assert_problem(response, 422, &body.to_string()).await;
    }
    assert!(app.all_ids("s").await.is_empty(), "nothing appended");
}

async fn invalid_or_reserved_event_types_are_422(kind: Kind) {
    let app = spawn(kind).await;
    let long = "a".repeat(65);
    for event_type in ["", "Chapter", "1st", "with space", "a\nid: 1", "gap", "token-expired", "storyline.x", &long] {
        let response = app.post_event("s", event_type, json!(1)).await;
        assert_problem(response, 422, event_type).await;
    }
    assert!(app.all_ids("s").await.is_empty(), "nothing appended");
}

async fn a_body_over_the_limit_is_413(kind: Kind) {
    let config = storyline_server::ServerConfig { body_limit_bytes: 1024, ..storyline_testkit::test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let big = json!({"type": "chapter", "data": "x".repeat(2000)});
    let response = app.post_event_request("s", &big).send().await.unwrap();
    let problem = assert_problem(response, 413, "declared length").await;
    assert!(problem["detail"].as_str().unwrap().contains("1024"), "detail names the limit: {problem}");
    // Without a Content-Length (chunked), the limit still holds while reading.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>("x".repeat(400))));
    let response = app
        .client
        .post(app.url("/v1/stories/s/events"))
        .bearer_auth(app.admin_token())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "chunked").await;
    let fits = json!({"type": "chapter", "data": "x".repeat(900)});
    assert_eq!(app.post_event_request("s", &fits).send().await.unwrap().status(), 201, "a body under the limit");
    assert_eq!(app.all_ids("s").await.len(), 1, "only the one under the limit appended");
}

async fn an_invalid_story_id_is_400(kind: Kind) {
    let app = spawn(kind).await;
    let long = "a".repeat(129);
    for story in ["-leading-dash", "has%20space", "dot%2F%2E%2E", "%C3%A9", "a%7Bb%7D", &long] {
        let response = app.post_event(story, "chapter", json!(1)).await;
        assert_problem(response, 400, story).await;
    }
    let max = "a".repeat(128);
    assert_eq!(app.post_event(&max, "chapter", json!(1)).await.status(), 201, "128 characters is allowed");
}

async fn an_idempotency_key_replays_the_same_id_and_appends_nothing(kind: Kind) {
    let app = spawn(kind).await;
    let body = json!({"type": "chapter", "data": {"n": 1}});
    let first = app.post_event_request("s", &body).header("idempotency-key", "retry-42").send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = app.post_event_request("s", &body).header("idempotency-key", "retry-42").send().await.unwrap();
    assert_eq!(again.status(), 200, "a replay answers 200");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the replay carries the first receipt");
    assert_eq!(app.all_ids("s").await, vec![first["id"].as_str().unwrap().to_owned()], "one event stored");
    let other = app.post_event_request("s", &body).header("idempotency-key", "retry-43").send().await.unwrap();
    assert_eq!(other.status(), 201, "another key appends");
}

async fn an_idempotency_key_is_scoped_to_its_story(kind: Kind) {
    let app = spawn(kind).await;
    let body = json!({"type": "chapter", "data": 1});
    for story in ["a", "b"] {
        let response = app.post_event_request(story, &body).header("idempotency-key", "k").send().await.unwrap();
        assert_eq!(response.status(), 201, "story {story}");
    }
}

async fn concurrent_posts_with_one_idempotency_key_append_once(kind: Kind) {
    let app = spawn(kind).await;
    let body = json!({"type": "chapter", "data": 1});
    let posts = (0..20).map(|_| app.post_event_request("s", &body).header("idempotency-key", "same").send());
    let responses = futures::future::join_all(posts).await;
    let mut ids = Vec::new();
    let mut created = 0;
    for response in responses {
        let response = response.unwrap();
        created += usize::from(response.status() == 201);
        assert!(matches!(response.status().as_u16(), 200 | 201), "status {}", response.status());
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_eq!(created, 1, "exactly one POST created the event");
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "every answer names the same id: {ids:?}");
    assert_eq!(app.all_ids("s").await.len(), 1);
}

/// IETF httpapi Idempotency-Key draft: the key reused with a different request (another event type or data) is
/// refused with 422 `idempotency-key-mismatch`, appends nothing, and leaves the first receipt for real retries.
async fn an_idempotency_key_reused_for_a_different_event_is_422_and_appends_nothing(kind: Kind) {
    let app = spawn(kind).await;
    let post =
        |body: &'static str| app.post_as("s", &app.admin_token(), body).header("idempotency-key", "reused").send();
    let first = post(r#"{"type":"chapter","data":{"n":1}}"#).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    for (case, body) in [
        ("other data", r#"{"type":"chapter","data":{"n":2}}"#),
        ("other type", r#"{"type":"retitled","data":{"n":1}}"#),
    ] {
        let problem = assert_problem(post(body).await.unwrap(), 422, case).await;
        assert_eq!(problem["type"], "urn:storyline:problem:idempotency-key-mismatch", "case {case}");
    }
    // The same request, laid out differently outside the data (the data is stored as sent), is a retry.
    let retry = post("{ \"data\": {\"n\":1},\n  \"type\": \"chapter\" }").await.unwrap();

    assert_eq!(retry.status(), 200, "a real retry after the refusals");
    assert_eq!(retry.json::<Value>().await.unwrap(), first, "... carries the first receipt");
    assert_eq!(app.all_ids("s").await, vec![first["id"].as_str().unwrap().to_owned()], "nothing else appended");
}

/// Redis only: two instances share the idempotency records. Concurrent POSTs with one key, spread over both, some
/// with one event and some with another, store exactly one event; each other POST waits for it and is answered
/// 200 with its receipt (the same event) or 422 (another): never 409, never a second event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_checked_across_instances_sharing_redis() {
    let server = storyline_testkit::RedisServer::start();
    let retention = storyline_core::Retention::default();
    let apps = [
        storyline_testkit::spawn_app(redis_broker(&server, retention.clone()).await).await,
        storyline_testkit::spawn_app(redis_broker(&server, retention).await).await,
    ];
    let bodies = [r#"{"type":"chapter","data":"a"}"#, r#"{"type":"chapter","data":"b"}"#];
    let posts = (0..20).map(|i| {
        let (app, body) = (&apps[i % 2], bodies[(i / 2) % 2]);
        let request = app.post_as("shared", &app.admin_token(), body).header("idempotency-key", "across");
        async move { (body, request.send().await.unwrap()) }
    });
    let mut answers = Vec::new();
    for (body, response) in futures::future::join_all(posts).await {
        let status = response.status().as_u16();
        answers.push((body, status, response.text().await.unwrap()));
    }

    let created: Vec<_> = answers.iter().filter(|(_, status, _)| *status == 201).collect();
    assert_eq!(created.len(), 1, "exactly one POST created the event: {answers:?}");
    let (winner, _, receipt) = created[0];
    for (body, status, answer) in &answers {
        match status {
            201 => {}
            200 => {
                assert_eq!(body, winner, "only the stored event's copies are answered 200");
                assert_eq!(answer, receipt, "... with its receipt");
            }
            422 => {
                assert_ne!(body, winner, "a copy of the stored event was refused");
                assert!(answer.contains("urn:storyline:problem:idempotency-key-mismatch"), "{answer}");
            }
            other => panic!("status {other}: {answer}"),
        }
    }
    assert!(answers.iter().any(|(_, status, _)| *status == 422), "the other event was refused: {answers:?}");
    for app in &apps {
        assert_eq!(app.all_ids("shared").await.len(), 1, "one event, seen from both instances");
    }
}

async fn an_invalid_idempotency_key_is_400(kind: Kind) {
    let app = spawn(kind).await;
    let body = json!({"type": "chapter", "data": 1});
    let long = "k".repeat(129);
    for key in ["has space", long.as_str(), ""] {
        let response = app.post_event_request("s", &body).header("idempotency-key", key).send().await.unwrap();
        assert_problem(response, 400, &format!("key {key:?}")).await;
    }
    assert!(app.all_ids("s").await.is_empty(), "nothing appended");
}

async fn the_event_data_is_stored_verbatim(kind: Kind) {
    let app = spawn(kind).await;
    let data = json!({"text": "line one\nline two", "emoji": "🐉", "nested": {"list": [1, 2.5, null, true]}, "quote": "\"x\""});
    app.publish("s", "chapter", data.clone()).await;
    let (_, page) = app.history("s", "").await;
    assert_eq!(page["events"][0]["data"], data);
    assert_eq!(page["events"][0]["author"], "tester", "author is the token's sub");
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}
