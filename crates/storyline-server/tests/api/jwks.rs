//! Tokens signed with public-key algorithms, verified against a JWKS file or URL; algorithm confusion refused.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use storyline_server::{ServerConfig, jwks::JwksSource};
use storyline_testkit::{DEFAULT_DEADLINE, JwksServer, fixture, jwks_of, poll_until, sign_with_fixture, test_config};

use crate::helpers::{Kind, assert_problem, both_brokers, spawn_with};

both_brokers!(rs256_and_es256_tokens_verify_against_a_jwks_file_and_confused_tokens_do_not);

const EVENT: &str = r#"{"type":"a","data":1}"#;

fn claims() -> serde_json::Value {
    json!({"sub": "agent-7", "scope": "read:* write:*", "tier": "agent"})
}

fn hs256(secret: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut claims = claims();
    claims["exp"] = exp.into();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

async fn rs256_and_es256_tokens_verify_against_a_jwks_file_and_confused_tokens_do_not(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks_of(&["rsa-1", "ec-1"]).to_string()).unwrap();
    let config = ServerConfig { jwks: Some(JwksSource::new(Some(file), None)), ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;

    let accepted = [
        ("RS256 with its kid", sign_with_fixture("rsa-1", Algorithm::RS256, Some("rsa-1"), claims())),
        ("ES256 with its kid", sign_with_fixture("ec-1", Algorithm::ES256, Some("ec-1"), claims())),
        ("HS256 with the secret still works", app.token("ann", "write:*")),
    ];
    for (case, token) in &accepted {
        assert_eq!(app.post_as("s", token, EVENT).send().await.unwrap().status(), 201, "{case}");
    }

    let rsa_public_pem = std::fs::read(fixture("rsa-1.pub.pem")).unwrap();
    let rsa_jwk = jwks_of(&["rsa-1"]);
    let modulus = rsa_jwk["keys"][0]["n"].as_str().unwrap().as_bytes().to_vec();
    let mut expired = claims();
    expired["exp"] = 1_000_000.into();
    let refused = [
        // Algorithm confusion: HMAC "signed" with the public key's bytes, naming the RSA key.
        ("HS256 keyed with the RSA public key PEM", hs256(&rsa_public_pem, "rsa-1")),
        ("HS256 keyed with the RSA modulus", hs256(&modulus, "rsa-1")),
        ("RS256 naming the EC key", sign_with_fixture("rsa-1", Algorithm::RS256, Some("ec-1"), claims())),
        ("RS512 with an RS256-pinned key", sign_with_fixture("rsa-1", Algorithm::RS512, Some("rsa-1"), claims())),
        ("PS256 with an RS256-pinned key", sign_with_fixture("rsa-1", Algorithm::PS256, Some("rsa-1"), claims())),
        ("signed by a key not in the set", sign_with_fixture("rsa-2", Algorithm::RS256, Some("rsa-1"), claims())),
        ("unknown kid", sign_with_fixture("rsa-2", Algorithm::RS256, Some("rsa-2"), claims())),
        ("no kid, no unnamed key", sign_with_fixture("rsa-1", Algorithm::RS256, None, claims())),
        ("expired", sign_with_fixture("rsa-1", Algorithm::RS256, Some("rsa-1"), expired)),
    ];
    for (case, token) in &refused {
        let body = assert_problem(app.post_as("s", token, EVENT).send().await.unwrap(), 401, case).await;
        assert!(!body.to_string().contains(token.as_str()), "{case}: the token is not echoed");
    }
    assert_eq!(app.all_ids("s").await.len(), accepted.len(), "refused tokens appended nothing");
}

/// The identity provider adds a key: a token naming it is refused until the JWKS URL is re-fetched, which that
/// very token triggers. When the URL then fails, the keys in force stay.
#[tokio::test]
async fn a_key_rotated_in_at_the_jwks_url_is_picked_up_and_a_failing_url_keeps_the_old_keys() {
    let idp = JwksServer::start(&jwks_of(&["rsa-1"])).await;
    let source = JwksSource { min_refetch: Duration::ZERO, ..JwksSource::new(None, Some(idp.url())) };
    let app = spawn_with(
        Kind::Memory,
        storyline_core::Retention::default(),
        ServerConfig { jwks: Some(source), ..test_config() },
    )
    .await;
    let old = sign_with_fixture("rsa-1", Algorithm::RS256, Some("rsa-1"), claims());
    let new = sign_with_fixture("rsa-2", Algorithm::RS256, Some("rsa-2"), claims());
    let status = |token: String| {
        let request = app.post_as("s", &token, EVENT);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    poll_until("the first fetch brings rsa-1", DEFAULT_DEADLINE, || async {
        (status(old.clone()).await == 201).then_some(())
    })
    .await;
    assert_eq!(status(new.clone()).await, 401, "rsa-2 is not published yet");

    idp.serve(200, &jwks_of(&["rsa-1", "rsa-2"]).to_string());
    poll_until("a token naming rsa-2 triggers a re-fetch that brings it", DEFAULT_DEADLINE, || async {
        (status(new.clone()).await == 201).then_some(())
    })
    .await;

    idp.serve(500, "{\"error\": \"down\"}");
    let failures = || app.metric("storyline_jwks_refresh_failures_total");
    let before = failures().await;
    let unknown = sign_with_fixture("rsa-2", Algorithm::RS256, Some("rsa-3"), claims());
    poll_until("an unknown kid triggers a fetch, which fails", DEFAULT_DEADLINE, || async {
        assert_eq!(status(unknown.clone()).await, 401);
        (failures().await > before).then_some(())
    })
    .await;
    assert_eq!(status(old).await, 201, "rsa-1 still verifies after a failed refresh");
    assert_eq!(status(new).await, 201, "rsa-2 still verifies after a failed refresh");
}

/// The identity provider serves its JWKS over HTTPS with a certificate from a private CA, trusted through the
/// JWKS CA file. It rotates: adds a key (a token signed with it verifies once the set is re-fetched), then
/// removes the old one (a token signed with that is refused from the next refresh on).
#[tokio::test]
async fn a_jwks_url_over_https_is_trusted_through_its_ca_file_and_follows_a_key_rotation() {
    let idp = JwksServer::start_https(&jwks_of(&["rsa-1"])).await;
    assert!(idp.url().starts_with("https://127.0.0.1:"), "{}", idp.url());
    let source = JwksSource {
        min_refetch: Duration::ZERO,
        refresh: Duration::from_millis(200),
        ca_file: Some(fixture("tls-ca.pem")),
        ..JwksSource::new(None, Some(idp.url()))
    };
    let app = spawn_with(
        Kind::Memory,
        storyline_core::Retention::default(),
        ServerConfig { jwks: Some(source), ..test_config() },
    )
    .await;
    let old = sign_with_fixture("rsa-1", Algorithm::RS256, Some("rsa-1"), claims());
    let new = sign_with_fixture("rsa-2", Algorithm::RS256, Some("rsa-2"), claims());
    let status = |token: String| {
        let request = app.post_as("s", &token, EVENT);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    poll_until("the first fetch over HTTPS brings rsa-1", DEFAULT_DEADLINE, || async {
        (status(old.clone()).await == 201).then_some(())
    })
    .await;
    assert_eq!(status(new.clone()).await, 401, "rsa-2 is not published yet");

    idp.serve(200, &jwks_of(&["rsa-1", "rsa-2"]).to_string());
    poll_until("rsa-2 verifies once the set is re-fetched", DEFAULT_DEADLINE, || async {
        (status(new.clone()).await == 201).then_some(())
    })
    .await;
    assert_eq!(status(old.clone()).await, 201, "both keys verify during the rotation");

    idp.serve(200, &jwks_of(&["rsa-2"]).to_string());
    poll_until("rsa-1 is refused once the provider removed it", DEFAULT_DEADLINE, || async {
        (status(old.clone()).await == 401).then_some(())
    })
    .await;
    assert_eq!(status(new).await, 201, "the new key still verifies");
}

/// Without the CA file the private CA is not trusted: every fetch fails (counted) and no key comes in.
#[tokio::test]
async fn a_jwks_url_over_https_with_an_untrusted_certificate_brings_no_keys() {
    let idp = JwksServer::start_https(&jwks_of(&["rsa-1"])).await;
    let source = JwksSource { min_refetch: Duration::ZERO, ..JwksSource::new(None, Some(idp.url())) };
    let app = spawn_with(
        Kind::Memory,
        storyline_core::Retention::default(),
        ServerConfig { jwks: Some(source), ..test_config() },
    )
    .await;
    let token = sign_with_fixture("rsa-1", Algorithm::RS256, Some("rsa-1"), claims());
    let failures = || app.metric("storyline_jwks_refresh_failures_total");
    let before = failures().await;
    poll_until("a fetch against the untrusted certificate fails", DEFAULT_DEADLINE, || async {
        assert_eq!(app.post_as("s", &token, EVENT).send().await.unwrap().status(), 401, "no key was taken");
        (failures().await > before).then_some(())
    })
    .await;
}
