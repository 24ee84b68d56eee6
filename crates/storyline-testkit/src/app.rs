//! `spawn_app(broker)`: the real server, built by the same function `main` uses, on 127.0.0.1:0, with typed
//! helpers to speak to it.

use std::{net::TcpListener, sync::Arc, time::Duration};

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use storyline_core::Broker;
use storyline_server::{
    Application, ServerConfig, Shutdown,
    auth::{JwtKeys, JwtSecret, Tier},
    limits::LimitsConfig,
};

use crate::sse::SseStream;

/// The secret every test app uses.
pub const TEST_SECRET: &str = "storyline-test-secret-0123456789abcdef";

/// Settings for tests: a fixed secret, one worker, short heartbeat and retry hints.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        heartbeat: Duration::from_secs(15),
        retry_base: Duration::from_millis(1_000),
        broker_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(5),
        // Streams end at once when a test stops its app; the drain tests set a window.
        drain_window: Duration::ZERO,
        workers: Some(1),
        // Tests measure behaviour, not the limits; the limit tests set their own.
        limits: LimitsConfig::unlimited(),
        ..ServerConfig::new(JwtSecret::new(TEST_SECRET))
    }
}

/// A reqwest client builder for tests: rustls with the ring provider, trusting the test CA (`fixtures/tls-ca.pem`)
/// only, offering `h2` and `http/1.1`. reqwest is built without a crypto provider of its own (no aws-lc-rs), so a
/// plain `reqwest::Client::new()` panics in a process that installed none; tests build their clients here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(crate::fixture("tls-ca.pem")).expect("the test CA")).expect("a CA");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Client::builder().tls_backend_preconfigured(tls)
}

/// [`http_client_builder`]'s client with reqwest's defaults otherwise.
pub fn http_client() -> Client {
    http_client_builder().build().expect("HTTP client")
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`, or `https://127.0.0.1:<port>` when the config serves TLS (the test certificate
    /// names 127.0.0.1; [`TestApp::client`] trusts its CA).
    pub base: String,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    pub client: Client,
    pub broker: Arc<dyn Broker>,
    keys: JwtKeys,
    shutdown: Shutdown,
    handle: actix_web::dev::ServerHandle,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Starts the real server with [`test_config`].
pub async fn spawn_app(broker: Arc<dyn Broker>) -> TestApp {
    spawn_app_with(broker, test_config()).await
}

/// Starts the real server with the given settings.
pub async fn spawn_app_with(broker: Arc<dyn Broker>, config: ServerConfig) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let keys = JwtKeys::with_rules(&config.jwt_secret, config.token_rules.clone());
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let app = Application::build(config, Arc::clone(&broker), listener).expect("build the application");
    let addr = app.local_addr();
    let base = format!("{scheme}://{addr}");
    let shutdown = app.shutdown();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let client = http_client_builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
    TestApp { base, addr, client, broker, keys, shutdown, handle }
}

impl TestApp {
    /// A token for `sub` with the given scopes, valid for an hour.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        self.token_with(sub, scope, None, Duration::from_secs(3600))
    }

    pub fn token_with(&self, sub: &str, scope: &str, tier: Option<Tier>, lifetime: Duration) -> String {
        self.keys.mint(sub, scope, tier, lifetime).expect("mint a token")
    }

    /// A token that may read and write every story.
    pub fn admin_token(&self) -> String {
        self.token("tester", "read:* write:*")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A POST of JSON to a story, with a read/write token.
    pub fn post_event_request(&self, story: &str, body: &Value) -> RequestBuilder {
        self.post_as(story, &self.admin_token(), &body.to_string())
    }

    /// Posts `{"type", "data"}` and returns the raw response.
    pub async fn post_event(&self, story: &str, event_type: &str, data: Value) -> Response {
        self.post_event_request(story, &serde_json::json!({"type": event_type, "data": data}))
            .send()
            .await
            .expect("POST reaches the server")
    }

    /// Posts an event, asserts 201, and returns the receipt.
    pub async fn publish(&self, story: &str, event_type: &str, data: Value) -> Value {
        self.publisher().publish(story, event_type, data).await
    }

    /// A cloneable, `Send` publisher with a read/write token, for publishing from spawned tasks.
    pub fn publisher(&self) -> Publisher {
        Publisher { client: self.client.clone(), base: self.base.clone(), token: self.admin_token() }
    }

    /// A POST of a raw JSON body to a story with the given token.
    pub fn post_as(&self, story: &str, token: &str, body: &str) -> RequestBuilder {
        self.client
            .post(self.url(&format!("/v1/stories/{story}/events")))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// Opens `GET /v1/stories/{story}/stream` with a read token; `last_event_id` goes in the header.
    pub async fn open_stream(&self, story: &str, last_event_id: Option<&str>) -> SseStream {
        let mut request =
            self.client.get(self.url(&format!("/v1/stories/{story}/stream"))).bearer_auth(self.admin_token());
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        self.open_stream_request(request).await
    }

    /// Sends a prepared stream request and wraps the response, whatever its status.
    pub async fn open_stream_request(&self, request: RequestBuilder) -> SseStream {
        // Streams are endless: no overall timeout, frames are awaited with their own deadlines.
        let request = request.timeout(Duration::from_secs(3600));
        SseStream::new(request.send().await.expect("stream request reaches the server"))
    }

    /// `GET /v1/stories/{story}/events` with a query string, returning status and JSON body.
    pub async fn history(&self, story: &str, query: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(&format!("/v1/stories/{story}/events{query}")))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .expect("history request reaches the server");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Every event id in a story's log, oldest first, read through the API. Pages of 100: some tests store
    /// events of 60 KB, and a page of 1,000 of them (60 MB) can outlast the broker timeout on a loaded machine.
    pub async fn all_ids(&self, story: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut after = "0".to_owned();
        loop {
            let (status, page) = self.history(story, &format!("?after={after}&limit=100")).await;
            assert_eq!(status, StatusCode::OK, "history of {story}: {page}");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            ids.extend(events.iter().map(|e| e["id"].as_str().unwrap_or_default().to_owned()));
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => return ids,
            }
        }
    }

    /// Triggers the drain and stops the server gracefully.
    /// The current value of one series on `/metrics` (0 when absent: counters start there).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.client.get(self.url("/metrics")).send().await.expect("GET /metrics");
        crate::metric_value(&text.text().await.expect("metrics text"), series).unwrap_or(0.0)
    }

    pub async fn stop(&self) {
        storyline_server::startup::stop(&self.shutdown, &self.handle).await;
    }

    pub fn shutdown_signal(&self) -> Shutdown {
        self.shutdown.clone()
    }
}

/// Publishes to a [`TestApp`] from anywhere (it owns its client, base URL and token).
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    base: String,
    token: String,
}

impl Publisher {
    /// Posts `{"type", "data"}`, asserts 201, and returns the receipt.
    pub async fn publish(&self, story: &str, event_type: &str, data: Value) -> Value {
        let response = self
            .client
            .post(format!("{}/v1/stories/{story}/events", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::json!({"type": event_type, "data": data}).to_string())
            .send()
            .await
            .expect("POST reaches the server");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON receipt");
        assert_eq!(status, StatusCode::CREATED, "publish to {story}: {body}");
        body
    }
}
