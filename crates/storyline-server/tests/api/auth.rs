//! Tokens: where they are read from, and what they allow.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, spawn, spawn_with};

both_brokers!(
    a_request_without_a_token_is_401_and_appends_nothing,
    invalid_expired_and_foreign_tokens_are_401,
    writing_without_write_scope_is_403_and_appends_nothing,
    reading_without_read_scope_is_403,
    prefix_and_exact_scopes_match_story_ids,
    the_token_may_come_from_the_query_or_a_cookie,
    issuer_audience_not_before_and_algorithm_are_enforced,
    public_stories_are_readable_without_a_token_when_configured_and_nothing_else_is,
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

async fn issuer_audience_not_before_and_algorithm_are_enforced(kind: Kind) {
    let rules = storyline_server::auth::TokenRules {
        issuer: Some("https://auth.example".into()),
        audience: Some("storyline".into()),
        leeway: Duration::from_secs(5),
        public_read: Vec::new(),
    };
    let config = storyline_server::ServerConfig { token_rules: rules, ..storyline_testkit::test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = |extra: serde_json::Value| {
        let mut base = json!({"sub": "ann", "exp": now + 600, "scope": "read:* write:*"});
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base
    };
    let good = json!({"iss": "https://auth.example", "aud": "storyline"});
    let hs384 = {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let key = EncodingKey::from_secret(storyline_testkit::TEST_SECRET.as_bytes());
        encode(&Header::new(Algorithm::HS384), &claims(good.clone()), &key).unwrap()
    };
    // {"alg":"none","typ":"JWT"} . {"sub":"mallory","exp":4000000000,"scope":"read:* write:*",
    // "iss":"https://auth.example","aud":"storyline"} . (no signature)
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo0MDAwMDAwMDAwLCJzY29wZSI6InJlYWQ6KiB3cml0ZToqIiwiaXNzIjoiaHR0cHM6Ly9hdXRoLmV4YW1wbGUiLCJhdWQiOiJzdG9yeWxpbmUifQ.";
    let refused = [
        ("wrong issuer", sign(claims(json!({"iss": "https://evil.example", "aud": "storyline"})))),
        ("no issuer", sign(claims(json!({"aud": "storyline"})))),
        ("wrong audience", sign(claims(json!({"iss": "https://auth.example", "aud": "elsewhere"})))),
        ("no audience", sign(claims(json!({"iss": "https://auth.example"})))),
        ("not valid yet", sign(claims(json!({"iss": "https://auth.example", "aud": "storyline", "nbf": now + 600})))),
        ("alg none", unsigned.to_owned()),
        ("HS384", hs384),
    ];
    for (case, token) in refused {
        let response = app.post_as("s", &token, r#"{"type":"a","data":1}"#).send().await.unwrap();
        assert_problem(response, 401, case).await;
    }
    assert!(app.all_ids("s").await.is_empty(), "nothing appended by a refused token");
    let accepted = [
        ("all claims right", sign(claims(good.clone()))),
        (
            "nbf within the leeway",
            sign(claims(json!({"iss": "https://auth.example", "aud": "storyline", "nbf": now + 2}))),
        ),
        ("minted by the server's own keys", app.token("ann", "read:* write:*")),
    ];
    for (case, token) in accepted {
        let response = app.post_as("s", &token, r#"{"type":"a","data":1}"#).send().await.unwrap();
        assert_eq!(response.status(), 201, "{case}");
    }
}

async fn public_stories_are_readable_without_a_token_when_configured_and_nothing_else_is(kind: Kind) {
    let rules = storyline_server::auth::TokenRules { public_read: vec!["public:*".into()], ..Default::default() };
    let config = storyline_server::ServerConfig { token_rules: rules, ..storyline_testkit::test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let id = app.publish("public:tale", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    app.publish("private", "chapter", json!(1)).await;

    let history = app.client.get(app.url("/v1/stories/public:tale/events?after=0")).send().await.unwrap();
    assert_eq!(history.status(), 200, "history of a public story without a token");
    let body: serde_json::Value = history.json().await.unwrap();
    assert_eq!(body["events"][0]["id"], id.as_str());
    let mut stream = app.open_stream_request(app.client.get(app.url("/v1/stories/public:tale/stream"))).await;
    assert_eq!(stream.status, 200, "stream of a public story without a token");
    let live = app.publish("public:tale", "chapter", json!(2)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(live.as_str()));

    let private = app.client.get(app.url("/v1/stories/private/events?after=0")).send().await.unwrap();
    assert_problem(private, 401, "a story outside the public patterns").await;
    let write = app
        .client
        .post(app.url("/v1/stories/public:tale/events"))
        .header("content-type", "application/json")
        .body(r#"{"type":"chapter","data":3}"#)
        .send()
        .await
        .unwrap();
    assert_problem(write, 401, "writing without a token, even to a public story").await;
    let forged = app.client.get(app.url("/v1/stories/public:tale/events?after=0&access_token=not.a.jwt")).send().await;
    assert_problem(forged.unwrap(), 401, "an invalid token is not downgraded to a guest").await;
    assert_eq!(app.all_ids("public:tale").await.len(), 2, "nothing appended by the refused write");
}
