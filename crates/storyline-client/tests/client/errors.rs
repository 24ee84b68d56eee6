//! Refusals come back as their own variants, with the problem's status and detail, and are not retried.

use futures::StreamExt;
use serde_json::json;
use storyline_client::{Client, Error, Event, EventId, EventType, HistoryQuery, SubscribeOptions};

use crate::support::{Env, Kind, WAIT, story};

fn event() -> Event<serde_json::Value> {
    Event::new(EventType::parse("note").unwrap(), json!({"n": 1}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_errors_carrying_the_problem() {
    let env = Env::start(Kind::Memory).await;
    let with = |token: String| Client::builder(&env.app.base).token(token).build().unwrap();
    let story = story("errors");

    let wrong_secret = {
        let keys = storyline_server::auth::JwtKeys::with_rules(
            &storyline_server::auth::JwtSecret::new("another-secret-0123456789abcdef0123"),
            env.config.token_rules.clone(),
        );
        keys.mint("mallory", "read:* write:*", None, std::time::Duration::from_secs(60)).unwrap()
    };
    let unauthenticated = with(wrong_secret).publish(&story, &event()).await.expect_err("401");
    assert!(
        matches!(&unauthenticated, Error::Unauthenticated(p) if p.status == 401 && !p.detail.is_empty()),
        "{unauthenticated:?}"
    );

    let reader = with(env.app.token("reader", "read:*"));
    let forbidden = reader.publish(&story, &event()).await.expect_err("403");
    assert!(matches!(&forbidden, Error::Forbidden(p) if p.status == 403), "{forbidden:?}");

    let deep: serde_json::Value =
        serde_json::from_str(&format!("{}1{}", "[".repeat(65), "]".repeat(65))).expect("65 nested arrays");
    let invalid =
        env.client().publish(&story, &Event::new(EventType::parse("note").unwrap(), deep)).await.expect_err("422");
    assert!(matches!(&invalid, Error::InvalidEvent(p) if p.status == 422 && p.detail.contains("64")), "{invalid:?}");

    let query = HistoryQuery { after: None, limit: Some(5000) };
    let bad_query = env.client().history(&story, query).await.expect_err("400");
    assert!(matches!(&bad_query, Error::BadQuery(p) if p.status == 400 && p.detail.contains("1000")), "{bad_query:?}");

    for (case, error) in [("401", &unauthenticated), ("403", &forbidden), ("422", &invalid), ("400", &bad_query)] {
        assert!(!error.is_transient(), "{case} is not retried");
        assert!(error.problem().is_some_and(|p| p.problem_type.starts_with("urn:storyline:problem:")), "{case}");
    }
    assert_eq!(env.app.all_ids("errors").await.len(), 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_refused_for_good_yields_the_error_and_ends() {
    let env = Env::start(Kind::Memory).await;
    let writer_only = Client::builder(&env.app.base).token(env.app.token("writer", "write:*")).build().unwrap();
    let mut subscription =
        writer_only.subscribe(&story("errors-sub"), SubscribeOptions { last_event_id: Some(EventId::ZERO) });
    let first = tokio::time::timeout(WAIT, subscription.next()).await.expect("an answer");
    assert!(matches!(first, Some(Err(Error::Forbidden(_)))), "{first:?}");
    assert!(tokio::time::timeout(WAIT, subscription.next()).await.expect("ended").is_none(), "then the end");

    let no_token = Client::builder(&env.app.base).build().unwrap();
    let mut subscription = no_token.subscribe(&story("errors-sub"), SubscribeOptions::default());
    let first = tokio::time::timeout(WAIT, subscription.next()).await.expect("an answer");
    assert!(matches!(first, Some(Err(Error::Unauthenticated(_)))), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_from_the_source_once() {
    let env = Env::start(Kind::Memory).await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (counter, good) = (std::sync::Arc::clone(&calls), env.app.admin_token());
    // The first token is one the server refuses; the second is good.
    let client = Client::builder(&env.app.base)
        .token_source(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let token = if n == 0 { "not-a-jwt".to_owned() } else { good.clone() };
            async move { Ok::<_, std::convert::Infallible>(token) }
        })
        .build()
        .unwrap();
    let receipt = client.publish(&story("errors-refresh"), &event()).await.expect("published with the new token");
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(env.app.all_ids("errors-refresh").await, [receipt.id.to_string()]);
}
