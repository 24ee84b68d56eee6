//! A revoked token is final: a `token-revoked` frame ends the subscription unless the token source has another
//! token, and the revoked one is never sent again.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use serde_json::json;
use storyline_client::{Client, Error, Event, EventId, EventType, Item, SubscribeOptions};
use storyline_server::{ServerConfig, auth::Tier};
use storyline_testkit::test_config;

use crate::support::{Env, Kind, Minter, Proxy, WAIT, both_brokers, story};

both_brokers!(
    a_revoked_token_ends_the_subscription_with_token_revoked_and_is_not_sent_again,
    a_subscription_whose_jti_is_revoked_goes_on_with_a_different_token_from_the_source,
);

fn config() -> ServerConfig {
    ServerConfig { heartbeat: Duration::from_millis(300), ..test_config() }
}

fn jti_of(env: &Env, token: &str) -> String {
    let keys = storyline_server::auth::JwtKeys::with_rules(
        &storyline_server::auth::JwtSecret::new(storyline_testkit::TEST_SECRET),
        env.config.token_rules.clone(),
    );
    keys.verify(token).unwrap().jti.expect("minted tokens carry a jti")
}

/// Revokes `token`'s jti through the admin endpoint.
async fn revoke(env: &Env, token: &str) {
    let admin = env.app.token_with("ops", "read:*", Some(Tier::Admin), Duration::from_secs(600));
    let until = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let response = env
        .app
        .client
        .post(env.app.url("/v1/admin/revocations"))
        .bearer_auth(admin)
        .json(&json!({ "jti": jti_of(env, token), "until": until }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn publish(env: &Env, name: &str, n: u64) -> EventId {
    let event = Event::new(EventType::parse("step").unwrap(), json!({ "n": n }));
    env.client().publish(&story(name), &event).await.unwrap().id
}

async fn next(subscription: &mut storyline_client::Subscription) -> Option<Result<Item, Error>> {
    tokio::time::timeout(WAIT, subscription.next()).await.expect("the subscription moves within the deadline")
}

async fn a_revoked_token_ends_the_subscription_with_token_revoked_and_is_not_sent_again(kind: Kind) {
    let env = Env::start_with(kind, storyline_core::Retention::default(), config()).await;
    let token = env.app.token("reader", "read:*");
    let proxy = Proxy::start(env.app.addr).await;
    let reader = Client::builder(&proxy.base).token(token.clone()).build().unwrap();
    let mut subscription = reader.subscribe(&story("revoked"), SubscribeOptions { last_event_id: Some(EventId::ZERO) });
    let id = publish(&env, "revoked", 1).await;
    assert!(matches!(next(&mut subscription).await, Some(Ok(Item::Event(e))) if e.id == id));

    revoke(&env, &token).await;
    let end = next(&mut subscription).await;
    assert!(matches!(&end, Some(Err(Error::TokenRevoked(p))) if p.status == 401), "{end:?}");
    assert!(next(&mut subscription).await.is_none(), "the subscription ended");
    let opens = proxy.seen().into_iter().filter(|s| s.request_line.contains("/stream")).count();
    assert_eq!(opens, 1, "the revoked token was not sent again: {:?}", subscription.stats());
}

async fn a_subscription_whose_jti_is_revoked_goes_on_with_a_different_token_from_the_source(kind: Kind) {
    let env = Env::start_with(kind, storyline_core::Retention::default(), config()).await;
    let minter = Minter::new(&env.config, Duration::from_secs(3600));
    let minted = Arc::new(Mutex::new(Vec::<String>::new()));
    let (source, record) = (minter.clone(), Arc::clone(&minted));
    let reader = Client::builder(&env.app.base)
        .token_source(move || {
            let token = source.mint();
            if let Ok(t) = &token {
                record.lock().unwrap().push(t.clone());
            }
            async move { token }
        })
        .build()
        .unwrap();
    let mut subscription = reader.subscribe(&story("rotated"), SubscribeOptions { last_event_id: Some(EventId::ZERO) });
    let first = publish(&env, "rotated", 1).await;
    assert!(matches!(next(&mut subscription).await, Some(Ok(Item::Event(e))) if e.id == first));

    let in_use = minted.lock().unwrap().last().cloned().unwrap();
    revoke(&env, &in_use).await;
    let second = publish(&env, "rotated", 2).await;
    let got = next(&mut subscription).await;
    assert!(matches!(&got, Some(Ok(Item::Event(e))) if e.id == second), "resumed with a new token: {got:?}");
    let stats = subscription.stats();
    assert_eq!((stats.token_refreshes, stats.connects), (1, 2), "one new token, one reopen: {stats:?}");
    assert!(!minted.lock().unwrap().iter().skip(1).any(|t| *t == in_use), "the revoked token was not minted again");
}
