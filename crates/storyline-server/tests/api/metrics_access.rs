//! Who can read `/metrics`: by default anyone who reaches the main listener (`operations.rs` checks that); with a
//! metrics listener of its own, only there (the main listener answers 404); with a metrics token, only requests
//! carrying it as a bearer token.

use std::{net::TcpListener, sync::Arc};

use storyline_broker_memory::MemoryBroker;
use storyline_server::{Application, MetricsToken, ServerConfig};
use storyline_testkit::{http_client, test_config};

use crate::helpers::assert_problem;

const TOKEN: &str = "metrics-token-0123456789abcdef";

/// A running app: its main base URL and, when asked for, the metrics listener's.
struct Running {
    base: String,
    metrics_base: Option<String>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn start(config: ServerConfig, separate_metrics_listener: bool) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_listener = separate_metrics_listener.then(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let broker = Arc::new(MemoryBroker::new(storyline_core::Retention::default()));
    let app = Application::build_with_metrics_listener(config, broker, listener, metrics_listener).unwrap();
    let base = format!("http://{}", app.local_addr());
    let metrics_base = app.metrics_addr().map(|addr| format!("http://{addr}"));
    assert_eq!(metrics_base.is_some(), separate_metrics_listener);
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    Running { base, metrics_base, handle }
}

#[tokio::test]
async fn with_a_metrics_listener_metrics_are_served_there_and_the_main_listener_answers_404() {
    let app = start(test_config(), true).await;
    let client = http_client();
    let metrics_base = app.metrics_base.clone().unwrap();

    let scraped = client.get(format!("{metrics_base}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200, "the metrics listener serves /metrics");
    assert!(scraped.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert!(scraped.text().await.unwrap().contains("storyline_build_info"));

    let main = client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_problem(main, 404, "/metrics on the main listener").await;
    let post = client.post(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_problem(post, 404, "POST /metrics on the main listener: no such resource, not 405").await;
    let healthz = client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "the main listener serves everything else");

    for path in ["/healthz", "/v1/stories/s/events", "/openapi.json", "/"] {
        let other = client.get(format!("{metrics_base}{path}")).send().await.unwrap();
        assert_problem(other, 404, &format!("{path} on the metrics listener")).await;
    }
}

#[tokio::test]
async fn with_a_metrics_token_metrics_need_it_as_a_bearer_token() {
    let config = ServerConfig { metrics_token: Some(MetricsToken::new(TOKEN)), ..test_config() };
    let app = start(config, false).await;
    let client = http_client();
    let url = format!("{}/metrics", app.base);

    let refused = [
        ("no Authorization header", None),
        ("a wrong token", Some(format!("Bearer {TOKEN}x"))),
        ("a prefix of the token", Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]))),
        ("the token without the Bearer scheme", Some(TOKEN.to_owned())),
        ("the token as Basic credentials", Some(format!("Basic {TOKEN}"))),
        ("an empty bearer token", Some("Bearer ".to_owned())),
    ];
    for (case, authorization) in refused {
        let mut request = client.get(&url);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key("www-authenticate"), "{case}: says how to authenticate");
        let body = assert_problem(response, 401, case).await;
        assert!(!body.to_string().contains("storyline_build_info"), "{case}: no metrics in the refusal");
    }

    for (case, authorization) in
        [("Bearer", format!("Bearer {TOKEN}")), ("lower-case scheme", format!("bearer {TOKEN}"))]
    {
        let response = client.get(&url).header("authorization", authorization).send().await.unwrap();
        assert_eq!(response.status(), 200, "{case}");
        assert!(response.text().await.unwrap().contains("storyline_build_info"), "{case}");
    }
    let healthz = client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "the token guards /metrics only");
}

#[tokio::test]
async fn the_metrics_token_guards_the_metrics_listener_too() {
    let config = ServerConfig { metrics_token: Some(MetricsToken::new(TOKEN)), ..test_config() };
    let app = start(config, true).await;
    let client = http_client();
    let url = format!("{}/metrics", app.metrics_base.clone().unwrap());
    assert_problem(client.get(&url).send().await.unwrap(), 401, "no token on the metrics listener").await;
    let response = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
