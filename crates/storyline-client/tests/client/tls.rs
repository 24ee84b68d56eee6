//! HTTPS: against storyline serving TLS itself (the test certificate, for `localhost` and 127.0.0.1, signed by the
//! test CA), a client given that CA publishes, subscribes and reads history over HTTP/2; a client that does not
//! trust it gets `Error::Tls` at once, from every call, and stores nothing. No process-wide crypto provider is
//! installed anywhere in this binary: the client brings its own (ring).

use futures::StreamExt;
use serde_json::json;
use storyline_client::{Client, Error, Event, EventId, EventType, HistoryQuery, SubscribeOptions};
use storyline_core::Retention;
use storyline_server::ServerConfig;
use storyline_testkit::{fixture, test_config};

use crate::support::{Env, Kind, WAIT, both_brokers, events, story};

both_brokers!(over_https_a_client_trusting_the_ca_publishes_subscribes_and_reads_history_over_http2);

fn tls_config() -> ServerConfig {
    let tls = storyline_server::tls::server_config(&fixture("tls-cert.pem"), &fixture("tls-key.pem"))
        .expect("the test certificate and key");
    ServerConfig { tls: Some(tls), ..test_config() }
}

fn test_ca() -> Vec<u8> {
    std::fs::read(fixture("tls-ca.pem")).expect("the test CA")
}

async fn start_tls(kind: Kind) -> Env {
    let env = Env::start_with(kind, Retention::default(), tls_config()).await;
    assert!(env.app.base.starts_with("https://"), "the test kit reports the TLS app as https: {}", env.app.base);
    env
}

/// `https://localhost:<port>`: the certificate's DNS name (the test kit's base names 127.0.0.1, its IP name).
fn localhost_base(env: &Env) -> String {
    format!("https://localhost:{}", env.app.addr.port())
}

fn note(n: u64) -> Event<serde_json::Value> {
    Event::new(EventType::parse("note").unwrap(), json!({ "n": n }))
}

async fn over_https_a_client_trusting_the_ca_publishes_subscribes_and_reads_history_over_http2(kind: Kind) {
    let env = start_tls(kind).await;
    for base in [env.app.base.clone(), localhost_base(&env)] {
        let client =
            Client::builder(&base).token(env.app.admin_token()).add_root_certificates_pem(test_ca()).build().unwrap();
        let story = story(if base.contains("localhost") { "tls-by-name" } else { "tls-by-ip" });

        let mut published = Vec::new();
        for n in 0..3 {
            published.push(client.publish(&story, &note(n)).await.unwrap_or_else(|e| panic!("{base}: publish: {e}")));
        }
        assert!(published.iter().all(|r| !r.replayed), "{base}: each stored once");

        let connection = client.open_stream(&story, Some(EventId::ZERO)).await.expect("a stream over TLS");
        assert_eq!(connection.http_version(), reqwest::Version::HTTP_2, "{base}: HTTP/2 negotiated by ALPN");
        drop(connection);

        // Replay from the start, then two more published while the subscription is open.
        let mut subscription = client.subscribe(&story, SubscribeOptions { last_event_id: Some(EventId::ZERO) });
        let replayed = events(&mut subscription, 3).await;
        for n in 3..5 {
            published.push(client.publish(&story, &note(n)).await.expect("publish while subscribed"));
        }
        let live = events(&mut subscription, 2).await;
        let got: Vec<_> = replayed.iter().chain(&live).map(|e| (e.id, e.data["n"].as_u64())).collect();
        let expected: Vec<_> = published.iter().zip(0..).map(|(r, n)| (r.id, Some(n))).collect();
        assert_eq!(got, expected, "{base}: exactly the published events, in order, once");
        let stats = subscription.stats();
        assert_eq!((stats.connects, stats.failures), (1, 0), "{base}: one stream, not resumed: {stats:?}");

        let page = client.history(&story, HistoryQuery::default()).await.expect("history over TLS");
        let ids: Vec<_> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, published.iter().map(|r| r.id).collect::<Vec<_>>(), "{base}: history holds the same events");
    }
    assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "no process-wide provider was needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_servers_ca_fails_with_a_tls_error_and_stores_nothing() {
    let env = start_tls(Kind::Memory).await;
    let story = story("tls-untrusted");
    // The system's roots only: the test CA is not among them.
    let client = Client::builder(localhost_base(&env)).token(env.app.admin_token()).build().unwrap();

    let publish = tokio::time::timeout(WAIT, client.publish(&story, &note(0))).await.expect("fails without retrying");
    let error = publish.expect_err("an untrusted certificate");
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
    assert!(!error.is_transient(), "not worth retrying: {error}");
    let text = error.to_string();
    assert!(text.starts_with("TLS failed") && text.contains("certificate"), "says what failed: {text}");

    let history = client.history(&story, HistoryQuery::default()).await.expect_err("an untrusted certificate");
    assert!(matches!(history, Error::Tls(_)), "{history:?}");

    let mut subscription = client.subscribe(&story, SubscribeOptions { last_event_id: Some(EventId::ZERO) });
    let first = tokio::time::timeout(WAIT, subscription.next()).await.expect("an item");
    assert!(matches!(first, Some(Err(Error::Tls(_)))), "{first:?}");
    assert!(tokio::time::timeout(WAIT, subscription.next()).await.expect("ended").is_none(), "then the end");

    assert_eq!(env.app.all_ids("tls-untrusted").await, Vec::<String>::new(), "nothing was stored");
    // The same server, trusted: the failure was the trust, not the server.
    let trusted = Client::builder(localhost_base(&env))
        .token(env.app.admin_token())
        .add_root_certificates_pem(test_ca())
        .build()
        .unwrap();
    let receipt = trusted.publish(&story, &note(1)).await.expect("published once the CA is trusted");
    assert_eq!(env.app.all_ids("tls-untrusted").await, [receipt.id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_bundle_without_a_certificate_is_refused_at_build() {
    for (case, pem) in [
        ("empty", b"".to_vec()),
        ("not PEM", b"not a certificate".to_vec()),
        ("a key, not a certificate", std::fs::read(fixture("tls-key.pem")).unwrap()),
    ] {
        let built = Client::builder("https://localhost:1").add_root_certificates_pem(pem).build();
        assert!(matches!(&built, Err(Error::InvalidRequest(m)) if m.contains("root certificate")), "{case}: {built:?}");
    }
}
