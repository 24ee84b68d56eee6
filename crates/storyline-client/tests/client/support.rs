//! What the client tests share: the real app on either broker, tokens (also short-lived ones from a token
//! source), and a loopback proxy the test controls, standing where a load balancer would.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use storyline_broker_memory::MemoryBroker;
use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_client::{Client, Envelope, EventId, Item, StoryId, Subscription};
use storyline_core::{Broker, Retention};
use storyline_server::{
    ServerConfig,
    auth::{JwtKeys, JwtSecret},
};
use storyline_testkit::{RedisServer, TEST_SECRET, TestApp, spawn_app_with, test_config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// Bound on waiting for one item or answer: generous for slow CI machines; tests never assert on elapsed time.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Memory,
    Redis,
}

/// A broker of either kind, with the redis-server it runs on.
pub(crate) struct Backend {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) redis: Option<RedisServer>,
    pub(crate) retention: Retention,
}

impl Backend {
    pub(crate) async fn start(kind: Kind, retention: Retention) -> Self {
        match kind {
            Kind::Memory => Self { broker: Arc::new(MemoryBroker::new(retention.clone())), redis: None, retention },
            Kind::Redis => {
                let server = RedisServer::start();
                let broker = redis_broker(&server, retention.clone()).await;
                Self { broker, redis: Some(server), retention }
            }
        }
    }

    /// A broker for a second app on the same data: the same in-memory log, or a new connection to the same Redis.
    pub(crate) async fn reconnect(&self) -> Arc<dyn Broker> {
        match &self.redis {
            None => Arc::clone(&self.broker),
            Some(server) => redis_broker(server, self.retention.clone()).await,
        }
    }
}

async fn redis_broker(server: &RedisServer, retention: Retention) -> Arc<dyn Broker> {
    let config =
        RedisConfig { retention, command_timeout: Duration::from_millis(1_000), ..RedisConfig::new(server.url()) };
    Arc::new(RedisBroker::connect(config).await.expect("connect to the test redis-server"))
}

pub(crate) fn retention(max_events: usize) -> Retention {
    let mut retention = Retention::default();
    retention.log.max_events = NonZeroUsize::new(max_events).expect("a positive retention");
    retention
}

/// The app and its backend.
pub(crate) struct Env {
    pub(crate) app: TestApp,
    pub(crate) backend: Backend,
    pub(crate) config: ServerConfig,
}

impl Env {
    pub(crate) async fn start(kind: Kind) -> Self {
        Self::start_with(kind, Retention::default(), test_config()).await
    }

    pub(crate) async fn start_with(kind: Kind, retention: Retention, config: ServerConfig) -> Self {
        let backend = Backend::start(kind, retention).await;
        let app = spawn_app_with(Arc::clone(&backend.broker), config.clone()).await;
        Self { app, backend, config }
    }

    /// A client of the app (or of `base`), with a token that may read and write every story.
    pub(crate) fn client(&self) -> Client {
        self.client_at(&self.app.base)
    }

    pub(crate) fn client_at(&self, base: &str) -> Client {
        Client::builder(base).token(self.app.admin_token()).build().expect("a client")
    }
}

/// Mints tokens like the app's issuer, each valid for `lifetime`, counting how many it made.
#[derive(Clone)]
pub(crate) struct Minter {
    keys: Arc<JwtKeys>,
    lifetime: Duration,
    pub(crate) minted: Arc<AtomicU64>,
}

impl Minter {
    pub(crate) fn new(config: &ServerConfig, lifetime: Duration) -> Self {
        let keys = JwtKeys::with_rules(&JwtSecret::new(TEST_SECRET), config.token_rules.clone());
        Self { keys: Arc::new(keys), lifetime, minted: Arc::new(AtomicU64::new(0)) }
    }

    pub(crate) fn mint(&self) -> Result<String, String> {
        self.minted.fetch_add(1, Ordering::Relaxed);
        self.keys.mint("agent", "read:* write:*", None, self.lifetime)
    }
}

pub(crate) fn story(name: &str) -> StoryId {
    StoryId::parse(name).expect("a valid story id")
}

/// The next `n` events of a subscription (a gap or an error fails the test).
pub(crate) async fn events(subscription: &mut Subscription, n: usize) -> Vec<Envelope> {
    use futures::StreamExt;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(WAIT, subscription.next()).await {
            Err(_) => panic!("no item within {WAIT:?} after {} events; {:?}", out.len(), subscription.stats()),
            Ok(None) => panic!("the subscription ended after {} events", out.len()),
            Ok(Some(Err(e))) => panic!("the subscription failed after {} events: {e}", out.len()),
            Ok(Some(Ok(Item::Gap(gap)))) => panic!("a gap after {} events: {gap:?}", out.len()),
            Ok(Some(Ok(Item::Event(event)))) => out.push(event),
        }
    }
    out
}

/// Lost and duplicated ids of `got` against `expected` (both in order), and whether the order matched.
pub(crate) fn tally(expected: &[EventId], got: &[EventId]) -> (usize, usize, bool) {
    let expected_set: std::collections::BTreeSet<_> = expected.iter().collect();
    let got_set: std::collections::BTreeSet<_> = got.iter().collect();
    let lost = expected_set.difference(&got_set).count();
    let duplicates = got.len() - got_set.len();
    (lost, duplicates, expected == got)
}

/// What the proxy does with the next connection.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Passes the request to the app and the answer back.
    Forward,
    /// Passes the request to the app, waits for its answer, and closes the client's connection without it: an
    /// answer lost on the way back.
    LoseAnswer,
}

/// One request that reached the proxy.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) request_line: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The app's status line, for forwarded requests.
    pub(crate) status: Option<u16>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ProxyState {
    upstream: Option<SocketAddr>,
    actions: VecDeque<Action>,
    seen: Vec<Seen>,
    /// Rewrite `Last-Event-ID` to this on forwarded requests (a server that resumes from an older point).
    resume_from: Option<String>,
}

/// A one-request-per-connection HTTP/1.1 proxy on 127.0.0.1:0 (it adds `Connection: close`), whose upstream,
/// per-connection actions and open connections the test controls.
pub(crate) struct Proxy {
    pub(crate) base: String,
    state: Arc<Mutex<ProxyState>>,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let base = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(Mutex::new(ProxyState { upstream: Some(upstream), ..ProxyState::default() }));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let (shared, tasks) = (Arc::clone(&state), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tasks.lock().expect("proxy tasks").spawn(serve(socket, state));
            }
        });
        Self { base, state, connections, accept }
    }

    /// Sends new connections to `upstream` (`None`: refuse them by closing).
    pub(crate) fn point_at(&self, upstream: Option<SocketAddr>) {
        self.state.lock().expect("proxy state").upstream = upstream;
    }

    /// Applies these actions to the next connections, in order (then forwards).
    pub(crate) fn then(&self, actions: &[Action]) {
        self.state.lock().expect("proxy state").actions.extend(actions.iter().cloned());
    }

    pub(crate) fn rewrite_resume_to(&self, id: Option<&str>) {
        self.state.lock().expect("proxy state").resume_from = id.map(str::to_owned);
    }

    /// Closes every open connection (an open stream ends as if the network dropped it).
    pub(crate) fn cut(&self) {
        self.connections.lock().expect("proxy tasks").abort_all();
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("proxy state").seen.clone()
    }
}

async fn serve(mut client: TcpStream, state: Arc<Mutex<ProxyState>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let rest = buffer[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    let (upstream, action, resume_from, index) = {
        let mut state = state.lock().expect("proxy state");
        state.seen.push(Seen { request_line: request_line.clone(), headers: headers.clone(), status: None });
        let action = state.actions.pop_front().unwrap_or(Action::Forward);
        (state.upstream, action, state.resume_from.clone(), state.seen.len() - 1)
    };
    let Some(upstream) = upstream else { return };
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let mut forwarded = format!("{request_line}\r\n");
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        let value = match (&resume_from, name.eq_ignore_ascii_case("last-event-id")) {
            (Some(rewritten), true) => rewritten.as_str(),
            _ => value.as_str(),
        };
        forwarded.push_str(&format!("{name}: {value}\r\n"));
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if server.write_all(forwarded.as_bytes()).await.is_err() || server.write_all(&rest).await.is_err() {
        return;
    }
    // The client sends its whole body (small, JSON) with or right after the head; pass along whatever follows.
    let mut answer = Vec::new();
    let mut from_client = [0u8; 4096];
    let status_end = loop {
        tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server.write_all(&from_client[..n]).await.is_err() { return },
            },
            read = server.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if let Some(end) = answer.windows(2).position(|w| w == b"\r\n") { break end }
                }
            },
        }
    };
    let status = String::from_utf8_lossy(&answer[..status_end]).split(' ').nth(1).and_then(|s| s.parse().ok());
    state.lock().expect("proxy state").seen[index].status = status;
    match action {
        Action::LoseAnswer => {
            // Let the app finish its answer (the event is stored by then), then drop it on the floor.
            let _ =
                tokio::time::timeout(WAIT, async { while !matches!(server.read(&mut chunk).await, Ok(0) | Err(_)) {} })
                    .await;
        }
        Action::Forward => {
            if client.write_all(&answer).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
    }
}

/// Generates `memory::<case>` and `redis::<case>` tests calling `super::<case>(Kind)`.
macro_rules! both_brokers {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::support::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::support::Kind::Redis).await
                }
            )*
        }
    };
}
pub(crate) use both_brokers;
