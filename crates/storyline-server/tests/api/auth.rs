//! Tokens: where they are read from, and what they allow.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, spawn};

both_brokers!(
    a_request_without_a_token_is_401_and_appends_nothing,
    invalid_expired_and_foreign_tokens_are_401,
    writing_without_write_scope_is_403_and_appends_nothing,
    reading_without_read_scope_is_403,
    prefix_and_exact_scopes_match_story_ids,
    the_token_may_come_from_the_query_or_a_cookie,
);

async fn a_request_without_a_token_is_401_and_appends_nothing(kind: Kind) {
    let app = spawn(kind).await;
    let post = app
        .client
        .post(app.url("/v1/stories/s/events"))
        .header("content-type", "application/json")
        .body(r#"{"type":"a","data":1}"#);
    let response = post.send().await.unwrap();
    assert_eq!(
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"storyline\"")
    );
    assert_problem(response, 401, "POST without token").await;
    for path in ["/v1/stories/s/stream", "/v1/stories/s/events"] {
        assert_problem(app.client.get(app.url(path)).send().await.unwrap(), 401, path).await;
    }
    assert!(app.all_ids("s").await.is_empty());
}

async fn invalid_expired_and_foreign_tokens_are_401(kind: Kind) {
    let app = spawn(kind).await;
    let foreign = storyline_server::auth::JwtKeys::new(&storyline_server::auth::JwtSecret::new(
        "some-other-secret-entirely-0000",
    ))
    .mint("eve", "read:* write:*", None, Duration::from_secs(60))
    .unwrap();
    // Signed with the right secret, but expired long ago / lacking `sub`.
    let expired = sign(json!({"sub": "ann", "exp": 1_000_000, "scope": "read:* write:*"}));
    let no_sub = sign(json!({"exp": 4_000_000_000u64, "scope": "read:* write:*"}));
    let cases =
        [("garbage", "not.a.jwt".to_owned()), ("foreign secret", foreign), ("expired", expired), ("no sub", no_sub)];
    for (case, token) in cases {
        let response = app.post_as("s", &token, r#"{"type":"a","data":1}"#).send().await.unwrap();
        assert_problem(response, 401, case).await;
    }
    let basic = app
        .client
        .get(app.url("/v1/stories/s/events"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "Basic scheme").await;
    assert!(app.all_ids("s").await.is_empty());
}

async fn writing_without_write_scope_is_403_and_appends_nothing(kind: Kind) {
    let app = spawn(kind).await;
    let reader = app.token("rita", "read:*");
    let response = app.post_as("s", &reader, r#"{"type":"a","data":1}"#).send().await.unwrap();
    assert_problem(response, 403, "read-only token").await;
    assert!(app.all_ids("s").await.is_empty());
}

async fn reading_without_read_scope_is_403(kind: Kind) {
    let app = spawn(kind).await;
    let writer = app.token("will", "write:*");
    for path in ["/v1/stories/s/stream", "/v1/stories/s/events"] {
        let response = app.client.get(app.url(path)).bearer_auth(&writer).send().await.unwrap();
        assert_problem(response, 403, path).await;
    }
}

async fn prefix_and_exact_scopes_match_story_ids(kind: Kind) {
    let app = spawn(kind).await;
    let token = app.token("pat", "write:public:* write:exact read:public:*");
    let post = |story: &str| app.post_as(story, &token, r#"{"type":"a","data":1}"#).send();
    assert_eq!(post("public:dragon").await.unwrap().status(), 201, "prefix pattern");
    assert_eq!(post("exact").await.unwrap().status(), 201, "exact pattern");
    assert_eq!(post("exactly").await.unwrap().status(), 403, "an exact pattern is not a prefix");
    assert_eq!(post("private:x").await.unwrap().status(), 403, "outside the prefix");
    let read = app.client.get(app.url("/v1/stories/private:x/events")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(read.status(), 403);
}

async fn the_token_may_come_from_the_query_or_a_cookie(kind: Kind) {
    let app = spawn(kind).await;
    let token = app.token("eva", "read:*");
    let by_query = app.client.get(app.url(&format!("/v1/stories/s/stream?access_token={token}")));
    let mut stream = app.open_stream_request(by_query).await;
    assert_eq!(stream.status, 200, "EventSource-style ?access_token=");
    let receipt = app.publish("s", "chapter", json!(1)).await;
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), receipt["id"].as_str());
    let by_cookie = app
        .client
        .get(app.url("/v1/stories/s/events"))
        .header("cookie", format!("storyline_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200, "storyline_token cookie");
}

fn sign(claims: serde_json::Value) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(&Header::default(), &claims, &EncodingKey::from_secret(storyline_testkit::TEST_SECRET.as_bytes())).unwrap()
}
