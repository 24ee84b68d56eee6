//! Per-token revocation: `POST`/`GET /v1/admin/revocations`, the 401 `token-revoked` on every request with a
//! revoked token, and the `token-revoked` frame that ends its open streams within one heartbeat, on this
//! instance and on another sharing the broker.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use storyline_broker_memory::MemoryBroker;
use storyline_core::{Broker, Retention};
use storyline_server::{ServerConfig, auth::Tier};
use storyline_testkit::{RedisServer, SseStream, TestApp, poll_until, spawn_app_with, test_config};

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, redis_broker, spawn_with};

both_brokers!(
    a_token_revoked_by_jti_is_refused_on_every_request_and_its_open_stream_ends_with_a_token_revoked_frame,
    revoking_a_sub_refuses_every_token_of_it_and_ends_all_its_streams_but_no_one_elses,
    only_admin_tier_tokens_may_revoke_or_list_revocations,
    a_revocation_that_is_not_valid_is_422_and_stores_nothing,
    an_expired_revocation_no_longer_applies_and_is_no_longer_listed,
    a_revocation_on_one_instance_ends_a_stream_on_another_within_a_heartbeat,
);

/// Short, so that "within one heartbeat" is quick to see.
const HEARTBEAT: Duration = Duration::from_millis(300);

fn config() -> ServerConfig {
    ServerConfig { heartbeat: HEARTBEAT, ..test_config() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The `jti` of a token the test minted (read without verifying it).
fn jti_of(token: &str) -> String {
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap();
    claims["jti"].as_str().expect("minted tokens carry a jti").to_owned()
}

fn admin(app: &TestApp) -> String {
    app.token_with("ops", "read:*", Some(Tier::Admin), Duration::from_secs(3600))
}

async fn revoke_as(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/admin/revocations"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Revokes with an admin token and asserts 201.
async fn revoke(app: &TestApp, body: Value) -> Value {
    let response = revoke_as(app, &admin(app), &body).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "revoke {body}: {answer}");
    answer
}

async fn list(app: &TestApp) -> Value {
    let response = app.client.get(app.url("/v1/admin/revocations")).bearer_auth(admin(app)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn history_as(app: &TestApp, token: &str) -> reqwest::Response {
    app.client.get(app.url("/v1/stories/s/events")).bearer_auth(token).send().await.unwrap()
}

async fn stream_as(app: &TestApp, story: &str, token: &str) -> SseStream {
    app.open_stream_request(app.client.get(app.url(&format!("/v1/stories/{story}/stream"))).bearer_auth(token)).await
}

/// Reads the stream to its end and returns its last frame, which must be `token-revoked` with `revoked: by`.
async fn assert_ends_revoked(stream: &mut SseStream, by: &str, case: &str) {
    let rest = stream.until_end(FRAME).await;
    let last = rest.last().unwrap_or_else(|| panic!("case {case}: the stream ended without a frame"));
    assert_eq!(last.event.as_deref(), Some("token-revoked"), "case {case}: the last frame says why: {rest:?}");
    assert_eq!(last.json(), json!({ "revoked": by }), "case {case}: what was revoked");
    assert_eq!(last.id, None, "case {case}: it moves no Last-Event-ID");
    assert!(stream.raw.ends_with(b"\n\n"), "case {case}: the stream ended at a frame boundary");
}

async fn assert_revoked(response: reqwest::Response, case: &str) {
    let problem = assert_problem(response, 401, case).await;
    assert_eq!(problem["type"], "urn:storyline:problem:token-revoked", "case {case}: {problem}");
}

async fn a_token_revoked_by_jti_is_refused_on_every_request_and_its_open_stream_ends_with_a_token_revoked_frame(
    kind: Kind,
) {
    let app = spawn_with(kind, Retention::default(), config()).await;
    let leaked = app.token("ann", "read:* write:*");
    let other = app.token("ann", "read:* write:*");
    let mut stream = stream_as(&app, "s", &leaked).await;
    assert_eq!(stream.status, 200);
    let id = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(id.as_str()));

    let until = now() + 3600;
    let stored = revoke(&app, json!({ "jti": jti_of(&leaked), "until": until })).await;
    assert_eq!(stored, json!({ "jti": jti_of(&leaked), "until": until }), "the answer is the entry stored");

    assert_ends_revoked(&mut stream, "jti", "open stream").await;
    assert_revoked(history_as(&app, &leaked).await, "history with the revoked token").await;
    assert_revoked(app.post_as("s", &leaked, r#"{"type":"chapter","data":2}"#).send().await.unwrap(), "publish").await;
    let reopened = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&leaked).send().await.unwrap();
    assert_revoked(reopened, "stream open").await;
    assert_eq!(history_as(&app, &other).await.status(), 200, "another token of the same sub still works");
    let series = "storyline_connections_closed_total{tier=\"member\",reason=\"token_revoked\"}";
    poll_until("the close is counted as token_revoked", FRAME, || async {
        (app.metric(series).await >= 1.0).then_some(())
    })
    .await;
}

async fn revoking_a_sub_refuses_every_token_of_it_and_ends_all_its_streams_but_no_one_elses(kind: Kind) {
    let app = spawn_with(kind, Retention::default(), config()).await;
    let (first, second) = (app.token("mallory", "read:*"), app.token("mallory", "read:*"));
    let bystander = app.token("ann", "read:*");
    let mut streams = [stream_as(&app, "s", &first).await, stream_as(&app, "t", &second).await];
    let mut unaffected = stream_as(&app, "s", &bystander).await;

    revoke(&app, json!({ "sub": "mallory", "until": now() + 600 })).await;
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_ends_revoked(stream, "sub", &format!("mallory's stream {i}")).await;
    }
    let fresh = app.token("mallory", "read:*");
    assert_revoked(history_as(&app, &fresh).await, "a token of the sub minted after the revocation").await;

    let id = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(unaffected.next_event(FRAME).await.id.as_deref(), Some(id.as_str()), "another sub's stream goes on");
    assert_eq!(history_as(&app, &bystander).await.status(), 200);
}

async fn only_admin_tier_tokens_may_revoke_or_list_revocations(kind: Kind) {
    let app = spawn_with(kind, Retention::default(), config()).await;
    let body = json!({ "sub": "ann", "until": now() + 600 });
    for (case, tier) in [("member", None), ("agent", Some(Tier::Agent)), ("guest", Some(Tier::Guest))] {
        let token = app.token_with("someone", "read:* write:*", tier, Duration::from_secs(600));
        let problem = assert_problem(revoke_as(&app, &token, &body).await, 403, case).await;
        assert_eq!(problem["type"], "urn:storyline:problem:forbidden", "case {case}");
        let listed = app.client.get(app.url("/v1/admin/revocations")).bearer_auth(&token).send().await.unwrap();
        assert_problem(listed, 403, &format!("{case} lists")).await;
    }
    let anonymous = app
        .client
        .post(app.url("/v1/admin/revocations"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401, "no token").await;
    assert_eq!(list(&app).await, json!({ "revocations": [] }), "nothing was revoked");
    assert_eq!(history_as(&app, &app.token("ann", "read:*")).await.status(), 200);
}

async fn a_revocation_that_is_not_valid_is_422_and_stores_nothing(kind: Kind) {
    let app = spawn_with(kind, Retention::default(), config()).await;
    let token = admin(&app);
    let later = now() + 600;
    for (case, body) in [
        ("both jti and sub", json!({ "jti": "a", "sub": "b", "until": later })),
        ("neither", json!({ "until": later })),
        ("until in the past", json!({ "sub": "ann", "until": now() - 1 })),
        ("until more than ten years ahead", json!({ "sub": "ann", "until": now() + 11 * 365 * 86_400 })),
        ("no until", json!({ "sub": "ann" })),
        ("empty sub", json!({ "sub": "", "until": later })),
        ("control character", json!({ "sub": "a\u{7}", "until": later })),
    ] {
        let problem = assert_problem(revoke_as(&app, &token, &body).await, 422, case).await;
        assert_eq!(problem["type"], "urn:storyline:problem:invalid-revocation", "case {case}");
    }
    let not_json = app
        .client
        .post(app.url("/v1/admin/revocations"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_problem(not_json, 400, "malformed JSON").await;
    assert_eq!(list(&app).await, json!({ "revocations": [] }), "nothing was stored");
}

async fn an_expired_revocation_no_longer_applies_and_is_no_longer_listed(kind: Kind) {
    let app = spawn_with(kind, Retention::default(), config()).await;
    let token = app.token("ann", "read:*");
    let until = now() + 2;
    revoke(&app, json!({ "sub": "ann", "until": until })).await;
    revoke(&app, json!({ "sub": "kept", "until": now() + 600 })).await;
    assert_revoked(history_as(&app, &token).await, "while the entry is in force").await;
    let listed = list(&app).await;
    assert!(listed["revocations"].as_array().unwrap().contains(&json!({ "sub": "ann", "until": until })), "{listed}");

    poll_until("the expired revocation stops applying", Duration::from_secs(15), || async {
        (history_as(&app, &token).await.status() == 200).then_some(())
    })
    .await;
    let listed = list(&app).await;
    assert_eq!(listed["revocations"].as_array().unwrap().len(), 1, "only the entry in force: {listed}");
    assert_eq!(listed["revocations"][0]["sub"], "kept");
    let mut stream = stream_as(&app, "s", &token).await;
    assert_eq!(stream.status, 200, "and streams open again");
    let id = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(id.as_str()));
}

/// Two instances on one store: two servers on one memory broker, or two servers with their own connections to
/// one redis-server.
async fn two_instances(kind: Kind) -> (TestApp, TestApp, Option<RedisServer>) {
    match kind {
        Kind::Memory => {
            let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(Retention::default()));
            (spawn_app_with(Arc::clone(&broker), config()).await, spawn_app_with(broker, config()).await, None)
        }
        Kind::Redis => {
            let server = RedisServer::start();
            let a = spawn_app_with(redis_broker(&server, Retention::default()).await, config()).await;
            let b = spawn_app_with(redis_broker(&server, Retention::default()).await, config()).await;
            (a, b, Some(server))
        }
    }
}

async fn a_revocation_on_one_instance_ends_a_stream_on_another_within_a_heartbeat(kind: Kind) {
    let (a, b, _redis) = two_instances(kind).await;
    let token = b.token("mallory", "read:*");
    let mut stream = stream_as(&b, "s", &token).await;
    assert_eq!(stream.status, 200);
    // B has read the list before the revocation: what follows is B learning of a change.
    assert_eq!(history_as(&b, &token).await.status(), 200);

    revoke(&a, json!({ "jti": jti_of(&token), "until": now() + 600 })).await;
    assert_ends_revoked(&mut stream, "jti", "stream on the other instance").await;
    assert_revoked(history_as(&b, &token).await, "a request to the other instance").await;
    let listed = list(&b).await;
    assert_eq!(listed["revocations"][0]["jti"], jti_of(&token), "both instances list it: {listed}");
}
