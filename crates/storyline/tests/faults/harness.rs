//! The fault-injection harness: N `storyline serve` processes (port 0, text logs) sharing one real
//! `redis-server`, the faults a test injects into them, and clients that count.
//!
//! - [`Redis`]: the shared `redis-server` (AOF `everysec`): [`Redis::stop`] (graceful, as an operator stops it),
//!   [`Redis::kill`] (SIGKILL), [`Redis::start_again`] (same port, same data directory), [`Redis::command`].
//! - [`Cluster`]: the instances, the minted tokens and one HTTP client. [`Cluster::kill9`], [`Cluster::sigterm`],
//!   [`Cluster::wait_exit`], [`Cluster::replace`] (a new process in a slot, on a new port: what a rolling deploy
//!   does), [`Cluster::add_instance`] (with its own extra environment), readiness, history.
//! - [`Targets`]: an ordered list of instance slots a client tries in turn. It reads the slot's *current*
//!   address at every (re)connect, so clients follow [`Cluster::replace`].
//! - [`Publisher`]: POSTs paced events with an `Idempotency-Key` each and records every acknowledged id (201, or
//!   200 for an attempt whose earlier answer was lost), retrying on 503/429 after `Retry-After` and on transport
//!   errors on the next target, always with the same key.
//! - [`Subscriber`]: an SSE reader that records every id per connection (duplicates and order on the wire),
//!   counts heartbeats, reconnects with `Last-Event-ID` on a drop (optionally to the next target) and dedupes by
//!   id across connections, as a browser application does.
//! - [`Tally`]: from the publishers' acknowledgements, the subscribers' deliveries and the broker's history:
//!   one printed line per test, and the exact assertions.
//!
//! Waits are bounded polls ([`poll_until`]); the only timed pauses are pacing (publishers), backoff the server
//! asks for (`Retry-After`) and a reconnect pause, none of them a wait for a condition. Everything is loopback.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    process::ExitStatus,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use futures::StreamExt;
use storyline_core::EventId;
use storyline_testkit::{RedisServer, poll_until};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, sync::watch, task::JoinHandle};

use crate::common;

/// The HS256 secret every instance of a cluster shares.
pub(crate) const SECRET: &str = "fault-injection-secret-0123456789abcdef";
/// Deadline for any single condition a test waits for. Generous: a shared 2-core CI machine is slow; a passing
/// run takes a fraction of it.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);
/// The heartbeat the harness configures (`STORYLINE_HEARTBEAT_SECS`), so tests can see heartbeats within an
/// outage of a few seconds.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// `STORYLINE_BROKER_TIMEOUT_MS`: the bound on one broker call during a request.
pub(crate) const BROKER_TIMEOUT: Duration = Duration::from_millis(500);
/// The event type publishers use.
pub(crate) const EVENT_TYPE: &str = "line";

/// Environment every instance gets, before the cluster's and the instance's own extra variables (later entries
/// win). Limits that exist to protect a service from many clients are off: every test client shares one
/// address (127.0.0.1) and one principal, which would trip them for reasons that are not the fault under test.
/// A test that exercises a limit sets it again in its extra environment.
fn base_env(redis_url: &str) -> Vec<(String, String)> {
    let heartbeat = HEARTBEAT.as_secs().to_string();
    let broker_timeout = BROKER_TIMEOUT.as_millis().to_string();
    [
        ("STORYLINE_LISTEN", "127.0.0.1:0"),
        ("STORYLINE_REDIS_URL", redis_url),
        ("STORYLINE_JWT_SECRET", SECRET),
        ("STORYLINE_LOG_FORMAT", "text"),
        ("RUST_LOG", "info"),
        ("STORYLINE_HEARTBEAT_SECS", &heartbeat),
        // At least twice the heartbeat (the server enforces that floor anyway); far above any outage here, so a
        // stream held open through a fault is never cut as a slow consumer.
        ("STORYLINE_SLOW_CONSUMER_SECS", "30"),
        ("STORYLINE_BROKER_TIMEOUT_MS", &broker_timeout),
        ("STORYLINE_STREAM_OPENS_PER_IP", "0"),
        ("STORYLINE_STREAMS_PER_PRINCIPAL", "0"),
        ("STORYLINE_STREAM_ADMISSIONS_PER_SEC", "0"),
        ("STORYLINE_PUBLISH_RATE_PER_STORY", "0"),
        ("STORYLINE_PUBLISH_RATE_ADMIN", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

// ------------------------------------------------------------------------------------------------------------
// Redis
// ------------------------------------------------------------------------------------------------------------

/// AOF on, fsync once a second: the durability the fault tests run against.
const AOF_EVERYSEC: &[&str] = &["--appendonly", "yes", "--appendfsync", "everysec"];

/// The `redis-server` a cluster shares (AOF `everysec`), killed when dropped.
#[derive(Debug)]
pub(crate) struct Redis {
    server: Option<RedisServer>,
    url: String,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let server = RedisServer::start_with(AOF_EVERYSEC);
        Self { url: server.url(), port: server.port(), server: Some(server) }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server as an operator does (`SHUTDOWN`, which is what SIGTERM does: the AOF is flushed and
    /// fsynced, then the process exits) and returns once its port refuses connections, which Redis closes after
    /// the fsync. Nothing acknowledged is lost, whatever `appendfsync` says.
    pub(crate) async fn stop(&mut self) {
        let reply = self.command(&["SHUTDOWN"]).await;
        // A successful SHUTDOWN has no reply: the connection just closes. An error reply says why it refused.
        assert!(reply.is_empty(), "redis-server refused SHUTDOWN: {reply:?}");
        let port = self.port;
        poll_until("redis-server closes its port after SHUTDOWN", DEADLINE, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err().then_some(())
        })
        .await;
    }

    /// SIGKILL: a crash of the Redis process. With `appendfsync everysec` Redis writes its AOF to the kernel
    /// before it answers, so acknowledged writes survive a process crash (a crash of the host could lose the last
    /// second).
    pub(crate) fn kill(&mut self) {
        self.server.as_mut().expect("the redis-server guard").kill();
    }

    /// Starts the server again on the same port and data directory (it replays its AOF), once it answers PING.
    pub(crate) async fn start_again(&mut self) {
        let mut server = self.server.take().expect("the redis-server guard");
        let server = tokio::task::spawn_blocking(move || {
            server.restart(AOF_EVERYSEC);
            server
        })
        .await
        .expect("restart redis-server");
        self.server = Some(server);
    }

    /// Sends one command (RESP) on a new connection and returns the raw reply, or what arrived before the server
    /// closed the connection (empty for a successful `SHUTDOWN`). For faults such as `CLIENT PAUSE`.
    pub(crate) async fn command(&self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            write!(request, "${}\r\n{arg}\r\n", arg.len()).unwrap();
        }
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect to redis");
        stream.write_all(request.as_bytes()).await.expect("send a command to redis");
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        // One short reply: read until it ends with CRLF or the server closes the connection.
        loop {
            match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.expect("redis replies") {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.ends_with(b"\r\n") {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }
}

// ------------------------------------------------------------------------------------------------------------
// Instances
// ------------------------------------------------------------------------------------------------------------

/// One `storyline serve` process. Its stdout (text logs) is collected for the test to read; it is killed when
/// dropped.
pub(crate) struct Instance {
    process: Option<common::Running>,
    url: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    /// Starts `storyline serve` with exactly `env` and waits (blocking) for it to log its address.
    fn start(env: &[(String, String)]) -> Self {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (process, lines) = common::spawn(&["serve"], &env);
        let url = common::logged_base_url(&lines);
        // The lines after the address: what the tests look for (stream opens and closes, drain).
        let logs = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&logs);
        std::thread::spawn(move || lines.into_iter().for_each(|line| collected.lock().unwrap().push(line)));
        Self { process: Some(process), url, logs }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.as_ref().expect("a running instance").0.id()
    }

    /// The log lines so far that contain `needle`.
    pub(crate) fn logs_containing(&self, needle: &str) -> Vec<String> {
        self.logs.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    fn signal(&self, signal: &str) {
        self.process.as_ref().expect("a running instance").signal(signal);
    }
}

/// Slots of instance addresses, shared with every client so a replaced instance's new port is seen at the next
/// (re)connect.
type Endpoints = Arc<RwLock<Vec<String>>>;

/// An ordered preference over instance slots. A client starts at the first and moves to the next one (wrapping)
/// when an instance does not answer, or on every drop with [`Reconnect::NextTarget`].
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    endpoints: Endpoints,
    order: Vec<usize>,
}

impl Targets {
    /// The slot and current address at position `pos` (wrapping).
    pub(crate) fn at(&self, pos: usize) -> (usize, String) {
        let slot = self.order[pos % self.order.len()];
        (slot, self.endpoints.read().unwrap()[slot].clone())
    }
}

/// N instances on one Redis, the tokens to use them, and one HTTP client.
pub(crate) struct Cluster {
    pub(crate) redis: Redis,
    instances: Vec<Instance>,
    endpoints: Endpoints,
    env: Vec<(String, String)>,
    /// May read and write every story; tier `admin`.
    pub(crate) writer_token: String,
    /// May read every story.
    pub(crate) reader_token: String,
    /// For POSTs, history and probes (keep-alive pool). Streams use it too: each is its own HTTP/1.1 connection.
    pub(crate) client: reqwest::Client,
}

impl Cluster {
    /// A fresh Redis (AOF `everysec`) and `n` instances with the harness's [`base_env`] plus `env`.
    pub(crate) async fn start(n: usize, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        tokio::task::spawn_blocking(move || {
            let redis = Redis::start();
            let mut all = base_env(redis.url());
            all.extend(env);
            let instances: Vec<Instance> = (0..n).map(|_| Instance::start(&all)).collect();
            let endpoints = Arc::new(RwLock::new(instances.iter().map(|i| i.url.clone()).collect()));
            let writer_token =
                common::mint_token(SECRET, &["--sub", "writer", "--scope", "read:* write:*", "--tier", "admin"]);
            let reader_token = common::mint_token(SECRET, &["--sub", "reader", "--scope", "read:*"]);
            let client = storyline_testkit::http_client_builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client");
            Self { redis, instances, endpoints, env: all, writer_token, reader_token, client }
        })
        .await
        .expect("start the cluster")
    }

    /// Starts a new process in slot `i` (the old one must have exited or been killed): a new port, which
    /// [`Targets`] pick up at their next connect. What a rolling deploy does to one instance.
    pub(crate) async fn replace(&mut self, i: usize, extra: &[(&str, &str)]) {
        let instance = self.launch(extra).await;
        self.endpoints.write().unwrap()[i] = instance.url.clone();
        self.instances[i] = instance;
    }

    async fn launch(&self, extra: &[(&str, &str)]) -> Instance {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        tokio::task::spawn_blocking(move || Instance::start(&env)).await.expect("start an instance")
    }

    pub(crate) fn instance(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    pub(crate) fn url(&self, i: usize) -> String {
        self.instances[i].url.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.instances.len()
    }

    /// Slots in this order of preference.
    pub(crate) fn targets(&self, order: &[usize]) -> Targets {
        assert!(!order.is_empty() && order.iter().all(|&i| i < self.len()), "targets {order:?}");
        Targets { endpoints: Arc::clone(&self.endpoints), order: order.to_vec() }
    }

    /// `kill -9` of instance `i`, reaped at once. Its slot keeps the dead address: clients find out as they
    /// would, by failing to connect.
    pub(crate) fn kill9(&mut self, i: usize) {
        let process = self.instances[i].process.as_mut().expect("a running instance");
        process.0.kill().expect("SIGKILL");
        let status = process.0.wait().expect("reap the killed instance");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed by SIGKILL");
    }

    /// SIGTERM to instance `i` (it drains over `STORYLINE_DRAIN_WINDOW_SECS`); see [`Cluster::wait_exit`].
    pub(crate) fn sigterm(&self, i: usize) {
        self.instances[i].signal("-TERM");
    }

    /// Waits for instance `i` to exit, within `within`.
    pub(crate) async fn wait_exit(&mut self, i: usize, within: Duration) -> ExitStatus {
        let process = self.instances[i].process.as_mut().expect("a running instance");
        poll_until(&format!("instance {i} exits within {within:?}"), within, || {
            let exited = process.0.try_wait().expect("try_wait");
            async move { exited }
        })
        .await
    }

    /// The sum of the series of `metric` on instance `i` whose labels contain `labels` (`""`: all of them), or
    /// `None` if the instance did not answer.
    pub(crate) async fn metric_total(&self, i: usize, metric: &str, labels: &str) -> Option<f64> {
        let text = self.client.get(format!("{}/metrics", self.url(i))).send().await.ok()?.text().await.ok()?;
        let series = format!("{metric}{{");
        let total = text
            .lines()
            .filter(|line| line.starts_with(&series) && line.contains(labels))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(total)
    }

    /// `GET /readyz` of instance `i`: its status, or `None` if it did not answer within two seconds.
    pub(crate) async fn readyz(&self, i: usize) -> Option<u16> {
        let url = format!("{}/readyz", self.url(i));
        let answer = self.client.get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
        Some(answer.status().as_u16())
    }

    /// Waits until `/readyz` of instance `i` answers `status`; how long that took.
    pub(crate) async fn wait_readyz(&self, i: usize, status: u16) -> Duration {
        let started = Instant::now();
        poll_until(&format!("/readyz of instance {i} answers {status}"), DEADLINE, || async {
            (self.readyz(i).await == Some(status)).then_some(())
        })
        .await;
        started.elapsed()
    }

    /// One POST with the writer token (see [`post_event`]).
    pub(crate) async fn post(&self, i: usize, story: &str, key: &str, seq: u64, timeout: Duration) -> Attempt {
        post_event(&self.client, &self.url(i), &self.writer_token, story, key, seq, timeout).await
    }

    /// A story's whole retained history, oldest first. Each page comes from the first instance that answers it;
    /// when none does (an instance killed, Redis restarting), the page is asked again for up to [`DEADLINE`].
    pub(crate) async fn history(&self, story: &str) -> Vec<Stored> {
        let mut events = Vec::new();
        let mut after = "0".to_owned();
        // Bounded: a fault test stores far fewer than 10,000 pages.
        for _ in 0..10_000 {
            let what = format!("an instance answers the history of {story} after {after}");
            let (mut got, next) = poll_until(&what, DEADLINE, || async {
                let urls: Vec<String> = self.endpoints.read().unwrap().clone();
                for url in &urls {
                    if let Ok(page) = history_page(&self.client, url, &self.reader_token, story, &after).await {
                        return Some(page);
                    }
                }
                None
            })
            .await;
            events.append(&mut got);
            match next {
                Some(next) => after = next,
                None => return events,
            }
        }
        panic!("the history of {story} did not end within 10,000 pages");
    }

    /// Starts a publisher of `story` (see [`Publisher`]).
    pub(crate) fn publisher(&self, story: &str, targets: Targets) -> Publisher {
        Publisher::spawn(self.client.clone(), self.writer_token.clone(), story, targets)
    }

    /// Starts a subscriber of `story` (see [`Subscriber`]).
    pub(crate) fn subscriber(
        &self,
        name: &str,
        story: &str,
        targets: Targets,
        options: SubscribeOptions,
    ) -> Subscriber {
        Subscriber::spawn(self.client.clone(), self.reader_token.clone(), name, story, targets, options)
    }

    /// One publisher per story, story `n` preferring instance `n % 2` and falling back to the
    /// other; returns once each has had `warm_up` events acknowledged.
    pub(crate) async fn publishers_alternating(&self, stories: &[impl AsRef<str>], warm_up: usize) -> Vec<Publisher> {
        let publishers: Vec<Publisher> = stories
            .iter()
            .enumerate()
            .map(|(n, story)| self.publisher(story.as_ref(), self.targets(&[n % 2, 1 - n % 2])))
            .collect();
        for publisher in &publishers {
            publisher.wait_acked(warm_up).await;
        }
        publishers
    }

    /// [`Cluster::finish`] for a test that made its POSTs itself: `acks` on `story`, no publisher tasks.
    pub(crate) async fn finish_manual(
        &self,
        test: &str,
        injected: impl Into<String>,
        story: &str,
        acks: Vec<Ack>,
        subscribers: Vec<Subscriber>,
    ) -> Tally {
        self.finish(test, injected, Vec::new(), vec![PublishReport::manual(story, acks)], subscribers).await
    }

    /// The end of a fault test: stops the publishers (each finishes the event it is on), waits until every
    /// subscriber has every acknowledged event of its story (or the deadline passes: the tally then says what is
    /// missing), stops the subscribers, reads every story's history from the broker, and prints the tally.
    pub(crate) async fn finish(
        &self,
        test: &str,
        injected: impl Into<String>,
        publishers: Vec<Publisher>,
        extra_published: Vec<PublishReport>,
        subscribers: Vec<Subscriber>,
    ) -> Tally {
        let mut published = Vec::new();
        for publisher in publishers {
            published.push(publisher.stop().await);
        }
        published.extend(extra_published);
        let acked = acked_by_story(&published);
        let everything_arrived = tokio::time::timeout(DEADLINE, async {
            for subscriber in &subscribers {
                let want = acked.get(&subscriber.story).cloned().unwrap_or_default();
                poll_until("a subscriber has every acknowledged event", DEADLINE, || async {
                    subscriber.has_all(&want).then_some(())
                })
                .await;
            }
        });
        // On timeout, carry on: the tally names what is missing, which says more than a timeout.
        let _ = everything_arrived.await;
        let mut received = Vec::new();
        for subscriber in subscribers {
            received.push(subscriber.stop().await);
        }
        let mut broker = Vec::new();
        for story in published.iter().map(|p| p.story.clone()).collect::<BTreeSet<_>>() {
            let stored = self.history(&story).await;
            broker.push(BrokerCheck::new(&story, &acked[&story], &stored));
        }
        let tally = Tally::new(test, injected, published, received, broker);
        tally.print();
        tally
    }
}

// ------------------------------------------------------------------------------------------------------------
// HTTP: one POST, history
// ------------------------------------------------------------------------------------------------------------

/// A publish receipt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct Receipt {
    pub(crate) id: EventId,
    pub(crate) story: String,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) ts: u64,
}

/// What one POST attempt got.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// `None`: no HTTP answer (connection refused or reset, or the client timed out).
    pub(crate) status: Option<u16>,
    pub(crate) receipt: Option<Receipt>,
    /// `Retry-After` in seconds, when the answer carried one.
    pub(crate) retry_after: Option<u64>,
    /// The transport error, or the problem body of an error answer.
    pub(crate) error: Option<String>,
    pub(crate) timed_out: bool,
    pub(crate) elapsed: Duration,
}

/// The body publishers send: the key and sequence number travel in `data`, so the broker's history tells which
/// key each stored event came from.
pub(crate) fn event_body(key: &str, seq: u64) -> String {
    serde_json::json!({ "type": EVENT_TYPE, "data": { "key": key, "seq": seq } }).to_string()
}

/// One `POST /v1/stories/{story}/events` with `Idempotency-Key: key`, bounded by `timeout`.
pub(crate) async fn post_event(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    story: &str,
    key: &str,
    seq: u64,
    timeout: Duration,
) -> Attempt {
    let started = Instant::now();
    let sent = client
        .post(format!("{base}/v1/stories/{story}/events"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(event_body(key, seq))
        .timeout(timeout)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            return Attempt {
                status: None,
                receipt: None,
                retry_after: None,
                timed_out: e.is_timeout(),
                error: Some(format!("{e:?}")),
                elapsed: started.elapsed(),
            };
        }
    };
    let status = answer.status().as_u16();
    let retry_after = common::retry_after(&answer);
    let body = answer.text().await;
    let elapsed = started.elapsed();
    let (receipt, error) = match (status, body) {
        (200 | 201, Ok(text)) => match serde_json::from_str::<Receipt>(&text) {
            Ok(receipt) => (Some(receipt), None),
            Err(e) => (None, Some(format!("not a receipt ({e}): {text}"))),
        },
        (_, Ok(text)) => (None, Some(text)),
        (_, Err(e)) => (None, Some(format!("{e:?}"))),
    };
    // An answer whose body did not arrive is as good as no answer: the client cannot know the id.
    let status = if receipt.is_none() && matches!(status, 200 | 201) { None } else { Some(status) };
    Attempt { status, receipt, retry_after, timed_out: false, error, elapsed }
}

/// Sends a complete POST (with `Idempotency-Key: key`) on a raw connection and returns the connection without
/// reading the answer: a client whose answer is lost. Drop the connection (or kill the instance) to lose it.
pub(crate) async fn post_unread(base: &str, token: &str, story: &str, key: &str, seq: u64) -> tokio::net::TcpStream {
    let address = base.strip_prefix("http://").expect("an http:// base URL");
    let body = event_body(key, seq);
    let request = format!(
        "POST /v1/stories/{story}/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to the instance");
    stream.write_all(request.as_bytes()).await.expect("send the POST");
    stream
}

/// One event of a story's history, as the broker holds it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) id: EventId,
    /// The publisher's idempotency key, from `data.key`.
    pub(crate) key: Option<String>,
}

/// Events per history page: small enough that a page of large events (64 KiB bodies) is a few MiB.
const HISTORY_PAGE: usize = 100;

/// One page of a story's history from one instance, after `after`: its events and `next`, or why not.
async fn history_page(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    story: &str,
    after: &str,
) -> Result<(Vec<Stored>, Option<String>), String> {
    let url = format!("{base}/v1/stories/{story}/events?after={after}&limit={HISTORY_PAGE}");
    let answer =
        client.get(url).bearer_auth(token).timeout(Duration::from_secs(20)).send().await.map_err(|e| e.to_string())?;
    if answer.status() != 200 {
        let status = answer.status();
        return Err(format!("{status} {}", answer.text().await.unwrap_or_default()));
    }
    let page: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
    let events = page["events"]
        .as_array()
        .expect("events is an array")
        .iter()
        .map(|event| Stored {
            id: EventId::parse(event["id"].as_str().expect("an id")).expect("a valid id"),
            key: event["data"]["key"].as_str().map(str::to_owned),
        })
        .collect();
    Ok((events, page["next"].as_str().map(str::to_owned)))
}

// ------------------------------------------------------------------------------------------------------------
// Publisher
// ------------------------------------------------------------------------------------------------------------

/// A [`Publisher`]'s time between the starts of two events (a pacing interval, not a wait).
const PUBLISH_PACE: Duration = Duration::from_millis(20);
/// Client timeout of one POST; past it the answer counts as lost and the event is retried (same key) on the next
/// target.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one event is retried before the publisher records it as unresolved and moves on.
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(30);
/// Pause before retrying after a transport error (a `Retry-After` answer sets its own).
const PUBLISH_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One acknowledged event.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) id: EventId,
    /// 201, or 200 when an earlier attempt with this key had appended it and its answer was lost.
    pub(crate) status: u16,
}

impl Ack {
    /// The acknowledgement an answered POST carries.
    pub(crate) fn of(attempt: &Attempt) -> Self {
        let id = attempt.receipt.as_ref().unwrap_or_else(|| panic!("a receipt: {attempt:?}")).id;
        Self { id, status: attempt.status.unwrap_or_else(|| panic!("an answer: {attempt:?}")) }
    }
}

/// What a publisher did.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishReport {
    pub(crate) story: String,
    pub(crate) acked: Vec<Ack>,
    /// Keys given up on after `give_up_after` (or refused with a status that retrying cannot fix).
    pub(crate) unresolved: Vec<String>,
    pub(crate) attempts: u64,
    /// 503 answers (broker unavailable, draining, at capacity), each followed by its `Retry-After`.
    pub(crate) unavailable: u64,
    /// Of those, `unconfirmed`: the append reached Redis without its answer coming back, so it may be stored (the
    /// retry with the same key then answers 200).
    pub(crate) unconfirmed: u64,
    pub(crate) rate_limited: u64,
    /// No answer: connection refused or reset, or the client timed out.
    pub(crate) transport_errors: u64,
    pub(crate) other_statuses: BTreeMap<u16, u64>,
}

impl PublishReport {
    /// A report for POSTs a test made itself (outside a [`Publisher`]), so the tally counts them.
    pub(crate) fn manual(story: &str, acked: Vec<Ack>) -> Self {
        Self { story: story.to_owned(), acked, ..Self::default() }
    }

    /// Acknowledgements that came back 200: an earlier attempt's answer was lost, the retry found the event.
    pub(crate) fn replayed(&self) -> usize {
        self.acked.iter().filter(|a| a.status == 200).count()
    }
}

/// A task POSTing paced events to one story, each with its own `Idempotency-Key` (`<story>-<seq>`), retrying
/// every event with the same key until it is acknowledged: after `Retry-After` on 503/429, on the next target
/// after a transport error (connection refused or reset, client timeout).
#[derive(Debug)]
pub(crate) struct Publisher {
    pub(crate) story: String,
    state: Arc<Mutex<PublishReport>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    fn spawn(client: reqwest::Client, token: String, story: &str, targets: Targets) -> Self {
        let state = Arc::new(Mutex::new(PublishReport { story: story.to_owned(), ..PublishReport::default() }));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(publish_loop(client, token, story.to_owned(), targets, Arc::clone(&state), stopped));
        Self { story: story.to_owned(), state, stop, task }
    }

    /// Events acknowledged so far.
    pub(crate) fn acked(&self) -> usize {
        self.state.lock().unwrap().acked.len()
    }

    /// Waits until at least `n` events are acknowledged.
    pub(crate) async fn wait_acked(&self, n: usize) {
        poll_until(&format!("{n} events acknowledged on {}", self.story), DEADLINE, || async {
            (self.acked() >= n).then_some(())
        })
        .await;
    }

    /// Stops after the event in progress is resolved; the report.
    pub(crate) async fn stop(self) -> PublishReport {
        let _ = self.stop.send(true);
        // Bounded by give_up_after per event plus one request timeout.
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the publisher stops")
            .expect("publisher");
        self.state.lock().unwrap().clone()
    }
}

async fn publish_loop(
    client: reqwest::Client,
    token: String,
    story: String,
    targets: Targets,
    state: Arc<Mutex<PublishReport>>,
    stopped: watch::Receiver<bool>,
) {
    let mut pace = tokio::time::interval(PUBLISH_PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pos = 0;
    // Bounded by the stop signal, which every test sends.
    for seq in 0.. {
        pace.tick().await;
        if *stopped.borrow() {
            return;
        }
        let key = format!("{story}-{seq}");
        let give_up = Instant::now() + PUBLISH_GIVE_UP;
        loop {
            let (_, url) = targets.at(pos);
            let attempt = post_event(&client, &url, &token, &story, &key, seq, PUBLISH_TIMEOUT).await;
            let pause = {
                let mut report = state.lock().unwrap();
                report.attempts += 1;
                match attempt.status {
                    Some(status @ (200 | 201)) => {
                        let id = attempt.receipt.expect("a receipt").id;
                        report.acked.push(Ack { id, status });
                        break;
                    }
                    Some(code @ (503 | 429)) => {
                        if code == 503 {
                            report.unavailable += 1;
                            let problem = attempt.error.as_deref().unwrap_or_default();
                            report.unconfirmed += u64::from(problem.contains("urn:storyline:problem:unconfirmed"));
                        } else {
                            report.rate_limited += 1;
                        }
                        let secs = attempt.retry_after.unwrap_or_else(|| panic!("{code} without Retry-After"));
                        Duration::from_secs(secs.max(1))
                    }
                    Some(code) => {
                        *report.other_statuses.entry(code).or_default() += 1;
                        if (400..500).contains(&code) {
                            // The request itself is wrong: retrying cannot fix it.
                            report.unresolved.push(format!("{key} ({code}: {})", attempt.error.unwrap_or_default()));
                            break;
                        }
                        PUBLISH_RETRY_PAUSE
                    }
                    None => {
                        report.transport_errors += 1;
                        pos += 1;
                        PUBLISH_RETRY_PAUSE
                    }
                }
            };
            if Instant::now() + pause > give_up {
                state.lock().unwrap().unresolved.push(key.clone());
                break;
            }
            // Backoff the server asked for (Retry-After) or the retry policy's pause: not a wait for a condition.
            tokio::time::sleep(pause).await;
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Subscriber
// ------------------------------------------------------------------------------------------------------------

/// Where a subscriber reconnects after its stream ends or breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reconnect {
    /// The same target (the next one only if it does not answer).
    SameTarget,
    /// The next target on every drop.
    NextTarget,
}

/// How long a subscriber waits before reconnecting.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReconnectDelay {
    Fixed(Duration),
    /// The latest `retry:` hint the server sent (as `EventSource` does), or the fixed fallback before any.
    RetryHint(Duration),
}

/// How a [`Subscriber`] reads.
#[derive(Debug, Clone)]
pub(crate) struct SubscribeOptions {
    pub(crate) reconnect: Reconnect,
    pub(crate) delay: ReconnectDelay,
}

/// A subscriber's connection silent for this long (not even a heartbeat) is dropped and reconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(HEARTBEAT.as_secs() * 5);
/// Bound on getting the response headers of a stream open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self { reconnect: Reconnect::NextTarget, delay: ReconnectDelay::Fixed(Duration::from_millis(50)) }
    }
}

/// One stream connection of a subscriber.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionReport {
    pub(crate) slot: usize,
    /// The `Last-Event-ID` it opened with.
    pub(crate) resumed_after: Option<String>,
    pub(crate) events: u64,
    /// Ids this connection delivered more than once.
    pub(crate) wire_duplicates: u64,
    /// Ids not greater than the one before them on this connection.
    pub(crate) out_of_order: u64,
    /// Ids another connection of this subscriber had already delivered (at-least-once across reconnects).
    pub(crate) redelivered: u64,
    pub(crate) heartbeats: u64,
    /// `None` while open; else how it ended: `end` (the server closed it), `error: ...`, `idle`, `stopped`,
    /// `token-expired`.
    pub(crate) ended: Option<String>,
}

/// What a subscriber saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct SubscriberReport {
    pub(crate) name: String,
    pub(crate) story: String,
    pub(crate) connections: Vec<ConnectionReport>,
    /// Distinct ids delivered, over every connection.
    pub(crate) delivered: BTreeSet<EventId>,
    /// The `Last-Event-ID` a reconnect sends: the id of the latest event frame received.
    pub(crate) last_event_id: Option<String>,
    /// `gap` frames (their data), which a fault test never expects.
    pub(crate) gaps: Vec<String>,
    /// Stream opens that failed: `<slot>: <status or error>`.
    pub(crate) open_failures: Vec<String>,
    pub(crate) heartbeats: u64,
    /// The latest `retry:` hint, in milliseconds.
    pub(crate) retry_hint: Option<u64>,
}

impl SubscriberReport {
    pub(crate) fn wire_duplicates(&self) -> u64 {
        self.connections.iter().map(|c| c.wire_duplicates).sum()
    }
}

/// A task reading one story's stream as a browser application does: it records every event id per connection,
/// reconnects with `Last-Event-ID` when the stream ends or breaks (to the next target with
/// [`Reconnect::NextTarget`], or when a target does not answer), and dedupes by id across connections.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) name: String,
    pub(crate) story: String,
    state: Arc<Mutex<SubscriberReport>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    fn spawn(
        client: reqwest::Client,
        token: String,
        name: &str,
        story: &str,
        targets: Targets,
        options: SubscribeOptions,
    ) -> Self {
        let state = Arc::new(Mutex::new(SubscriberReport {
            name: name.to_owned(),
            story: story.to_owned(),
            ..SubscriberReport::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(subscribe_loop(
            client,
            token,
            story.to_owned(),
            targets,
            options,
            Arc::clone(&state),
            stopped,
        ));
        Self { name: name.to_owned(), story: story.to_owned(), state, stop, task }
    }

    pub(crate) fn heartbeats(&self) -> u64 {
        self.state.lock().unwrap().heartbeats
    }

    pub(crate) fn connections(&self) -> usize {
        self.state.lock().unwrap().connections.len()
    }

    /// Distinct events delivered so far.
    pub(crate) fn delivered(&self) -> usize {
        self.state.lock().unwrap().delivered.len()
    }

    /// Whether every id of `want` was delivered.
    pub(crate) fn has_all(&self, want: &BTreeSet<EventId>) -> bool {
        want.is_subset(&self.state.lock().unwrap().delivered)
    }

    /// Waits until `n` connections have answered 200 (1: the first stream is open).
    pub(crate) async fn wait_connected(&self, n: usize) {
        poll_until(&format!("{} has {n} open stream(s)", self.name), DEADLINE, || async {
            (self.connections() >= n).then_some(())
        })
        .await;
    }

    /// Stops reading (closing the open stream); the report.
    pub(crate) async fn stop(self) -> SubscriberReport {
        let _ = self.stop.send(true);
        tokio::time::timeout(DEADLINE, self.task).await.expect("the subscriber stops").expect("subscriber");
        self.state.lock().unwrap().clone()
    }
}

async fn subscribe_loop(
    client: reqwest::Client,
    token: String,
    story: String,
    targets: Targets,
    options: SubscribeOptions,
    state: Arc<Mutex<SubscriberReport>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut pos = 0;
    // Bounded by the stop signal, which every test sends; a runaway reconnect loop shows in the report.
    while !*stopped.borrow() {
        let (slot, url) = targets.at(pos);
        // The first connection starts at `0`, the oldest retained event: for a story the test created, "from when
        // the test started" without a race with the publishers, and a reconnect before the first event loses
        // nothing.
        let resume = Some(state.lock().unwrap().last_event_id.clone().unwrap_or_else(|| "0".to_owned()));
        let mut request = client.get(format!("{url}/v1/stories/{story}/stream")).bearer_auth(&token);
        if let Some(id) = &resume {
            request = request.header("last-event-id", id);
        }
        let opened = tokio::select! {
            _ = stopped.changed() => return,
            opened = tokio::time::timeout(OPEN_TIMEOUT, request.send()) => opened,
        };
        let mut pause = match options.delay {
            ReconnectDelay::Fixed(d) => d,
            ReconnectDelay::RetryHint(fallback) => {
                state.lock().unwrap().retry_hint.map_or(fallback, Duration::from_millis)
            }
        };
        match opened {
            Ok(Ok(response)) if response.status() == 200 => {
                state.lock().unwrap().connections.push(ConnectionReport {
                    slot,
                    resumed_after: resume,
                    events: 0,
                    wire_duplicates: 0,
                    out_of_order: 0,
                    redelivered: 0,
                    heartbeats: 0,
                    ended: None,
                });
                let ended = read_stream(response, &state, &mut stopped).await;
                if let Some(c) = state.lock().unwrap().connections.last_mut() {
                    c.ended = Some(ended);
                }
                if options.reconnect == Reconnect::NextTarget {
                    pos += 1;
                }
            }
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let retry_after = common::retry_after(&response);
                let body = response.text().await.unwrap_or_default();
                state.lock().unwrap().open_failures.push(format!("{slot}: {status} {body}"));
                assert!(
                    matches!(status, 429 | 503),
                    "a stream open was refused with {status}, which retrying cannot fix: {body}"
                );
                // Retry-After is the server's instruction; another instance may have room meanwhile.
                pause = pause.max(Duration::from_secs(retry_after.unwrap_or(1)));
                pos += 1;
            }
            Ok(Err(e)) => {
                state.lock().unwrap().open_failures.push(format!("{slot}: {e}"));
                pos += 1;
            }
            Err(_) => {
                state.lock().unwrap().open_failures.push(format!("{slot}: no answer within {:?}", OPEN_TIMEOUT));
                pos += 1;
            }
        }
        // The reconnect delay (EventSource waits `retry:` too): a pause, not a wait for a condition.
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Reads one open stream until it ends, breaks, goes idle or the subscriber is stopped; how it ended.
async fn read_stream(
    response: reqwest::Response,
    state: &Mutex<SubscriberReport>,
    stopped: &mut watch::Receiver<bool>,
) -> String {
    let mut body = response.bytes_stream();
    let mut buffer = BytesMut::new();
    // Ids this connection delivered, for duplicates on the wire; dropped with the connection.
    let mut seen_here = HashSet::new();
    let mut last_here: Option<EventId> = None;
    loop {
        let chunk = tokio::select! {
            _ = stopped.changed() => return "stopped".to_owned(),
            chunk = tokio::time::timeout(IDLE_TIMEOUT, body.next()) => chunk,
        };
        match chunk {
            Err(_) => return "idle".to_owned(),
            Ok(None) => return "end".to_owned(),
            Ok(Some(Err(e))) => return format!("error: {e}"),
            Ok(Some(Ok(bytes))) => buffer.extend_from_slice(&bytes),
        }
        let mut guard = state.lock().unwrap();
        // Through a plain reference, so the connection and the delivered set are borrowed separately.
        let report: &mut SubscriberReport = &mut guard;
        while let Some(frame) = storyline_hub::take_frame(&mut buffer) {
            let heartbeats = frame.comments.iter().filter(|c| c.as_str() == "keep-alive").count() as u64;
            report.heartbeats += heartbeats;
            if let Some(retry) = frame.retry {
                report.retry_hint = Some(retry);
            }
            let connection = report.connections.last_mut().expect("an open connection");
            connection.heartbeats += heartbeats;
            match (frame.event.as_deref(), frame.id.as_deref(), frame.data.as_deref()) {
                (Some("gap"), _, data) => report.gaps.push(data.unwrap_or_default().to_owned()),
                (Some("token-expired"), _, _) => return "token-expired".to_owned(),
                (_, Some(id), Some(_)) => {
                    let id = EventId::parse(id).unwrap_or_else(|e| panic!("a bad id on the wire {id:?}: {e}"));
                    connection.events += 1;
                    let new_here = seen_here.insert(id);
                    if !new_here {
                        connection.wire_duplicates += 1;
                    }
                    if last_here.is_some_and(|last| id <= last) {
                        connection.out_of_order += 1;
                    }
                    last_here = Some(id);
                    if !report.delivered.insert(id) && new_here {
                        // New on this connection, but an earlier connection had delivered it.
                        connection.redelivered += 1;
                    }
                    report.last_event_id = Some(id.to_string());
                }
                _ => {}
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Tally
// ------------------------------------------------------------------------------------------------------------

/// Acknowledged ids per story, over every publisher.
pub(crate) fn acked_by_story(published: &[PublishReport]) -> HashMap<String, BTreeSet<EventId>> {
    let mut acked: HashMap<String, BTreeSet<EventId>> = HashMap::new();
    for report in published {
        acked.entry(report.story.clone()).or_default().extend(report.acked.iter().map(|a| a.id));
    }
    acked
}

/// A story's history against what was acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct BrokerCheck {
    pub(crate) story: String,
    pub(crate) stored: usize,
    /// Acknowledged, but not in the history.
    pub(crate) missing: Vec<EventId>,
    /// In the history, but never acknowledged.
    pub(crate) unacknowledged: Vec<EventId>,
    /// Idempotency keys with more than one stored event, and how many.
    pub(crate) repeated_keys: BTreeMap<String, usize>,
}

impl BrokerCheck {
    pub(crate) fn new(story: &str, acked: &BTreeSet<EventId>, history: &[Stored]) -> Self {
        let stored: BTreeSet<EventId> = history.iter().map(|e| e.id).collect();
        let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
        for event in history {
            *per_key.entry(event.key.clone().unwrap_or_default()).or_default() += 1;
        }
        per_key.retain(|_, n| *n > 1);
        Self {
            story: story.to_owned(),
            stored: history.len(),
            missing: acked.difference(&stored).copied().collect(),
            unacknowledged: stored.difference(acked).copied().collect(),
            repeated_keys: per_key,
        }
    }
}

/// One subscriber against its story's acknowledged events.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberTally {
    pub(crate) name: String,
    pub(crate) story: String,
    pub(crate) acknowledged: usize,
    pub(crate) delivered: usize,
    pub(crate) connections: usize,
    pub(crate) wire_duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) redelivered: u64,
    pub(crate) missing: Vec<EventId>,
    pub(crate) unexpected: Vec<EventId>,
    pub(crate) gaps: usize,
    pub(crate) report: SubscriberReport,
}

/// The count of one fault test.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    pub(crate) test: String,
    pub(crate) injected: String,
    pub(crate) published: Vec<PublishReport>,
    pub(crate) subscribers: Vec<SubscriberTally>,
    pub(crate) broker: Vec<BrokerCheck>,
    /// Keys a test expects to be stored more than once (an idempotency window that expired).
    allowed_repeats: BTreeMap<String, usize>,
}

impl Tally {
    pub(crate) fn new(
        test: &str,
        injected: impl Into<String>,
        published: Vec<PublishReport>,
        received: Vec<SubscriberReport>,
        broker: Vec<BrokerCheck>,
    ) -> Self {
        let acked = acked_by_story(&published);
        let subscribers = received
            .into_iter()
            .map(|report| {
                let want = acked.get(&report.story).cloned().unwrap_or_default();
                SubscriberTally {
                    name: report.name.clone(),
                    story: report.story.clone(),
                    acknowledged: want.len(),
                    delivered: report.delivered.len(),
                    connections: report.connections.len(),
                    wire_duplicates: report.wire_duplicates(),
                    out_of_order: report.connections.iter().map(|c| c.out_of_order).sum(),
                    redelivered: report.connections.iter().map(|c| c.redelivered).sum(),
                    missing: want.difference(&report.delivered).copied().collect(),
                    unexpected: report.delivered.difference(&want).copied().collect(),
                    gaps: report.gaps.len(),
                    report,
                }
            })
            .collect();
        Self {
            test: test.to_owned(),
            injected: injected.into(),
            published,
            subscribers,
            broker,
            allowed_repeats: BTreeMap::new(),
        }
    }

    /// Lets `key` be stored `times` times (and requires it).
    pub(crate) fn allowing_repeated_key(mut self, key: &str, times: usize) -> Self {
        self.allowed_repeats.insert(key.to_owned(), times);
        self
    }

    /// The one line: what was injected and what was counted.
    pub(crate) fn line(&self) -> String {
        let sum = |f: &dyn Fn(&SubscriberTally) -> usize| self.subscribers.iter().map(f).sum::<usize>();
        let sum64 = |f: &dyn Fn(&SubscriberTally) -> u64| self.subscribers.iter().map(f).sum::<u64>();
        let publish = |f: &dyn Fn(&PublishReport) -> u64| self.published.iter().map(f).sum::<u64>();
        format!(
            "tally test={} injected=\"{}\" stories={} acknowledged={} (replayed_200={} publish_503={} \
             publish_503_unconfirmed={} publish_transport_errors={} unresolved={}) subscribers={} connections={} expected={} delivered={} \
             duplicates_on_wire={} out_of_order={} redelivered_across_reconnects={} missing={} unexpected={} \
             gaps={} broker_stored={} broker_missing={} broker_unacknowledged={} keys_stored_twice={}",
            self.test,
            self.injected,
            self.broker.len(),
            self.published.iter().map(|p| p.acked.len()).sum::<usize>(),
            self.published.iter().map(PublishReport::replayed).sum::<usize>(),
            publish(&|p| p.unavailable),
            publish(&|p| p.unconfirmed),
            publish(&|p| p.transport_errors),
            self.published.iter().map(|p| p.unresolved.len()).sum::<usize>(),
            self.subscribers.len(),
            sum(&|s| s.connections),
            sum(&|s| s.acknowledged),
            sum(&|s| s.delivered),
            sum64(&|s| s.wire_duplicates),
            sum64(&|s| s.out_of_order),
            sum64(&|s| s.redelivered),
            sum(&|s| s.missing.len()),
            sum(&|s| s.unexpected.len()),
            sum(&|s| s.gaps),
            self.broker.iter().map(|b| b.stored).sum::<usize>(),
            self.broker.iter().map(|b| b.missing.len()).sum::<usize>(),
            self.broker.iter().map(|b| b.unacknowledged.len()).sum::<usize>(),
            self.broker.iter().map(|b| b.repeated_keys.len()).sum::<usize>(),
        )
    }

    pub(crate) fn print(&self) {
        println!("{}", self.line());
    }

    /// Per subscriber and per story, for failure messages.
    pub(crate) fn details(&self) -> String {
        let mut out = String::new();
        for p in &self.published {
            writeln!(
                out,
                "  publisher {}: acked={} replayed_200={} attempts={} 503={} (unconfirmed {}) 429={} transport_errors={} other={:?} \
                 unresolved={:?}",
                p.story,
                p.acked.len(),
                p.replayed(),
                p.attempts,
                p.unavailable,
                p.unconfirmed,
                p.rate_limited,
                p.transport_errors,
                p.other_statuses,
                p.unresolved
            )
            .unwrap();
        }
        for s in &self.subscribers {
            let first = |ids: &[EventId]| ids.iter().take(5).map(ToString::to_string).collect::<Vec<_>>().join(",");
            writeln!(
                out,
                "  subscriber {} ({}): acknowledged={} delivered={} connections={} duplicates_on_wire={} \
                 out_of_order={} redelivered={} missing={} [{}] unexpected={} [{}] gaps={:?} open_failures={:?}",
                s.name,
                s.story,
                s.acknowledged,
                s.delivered,
                s.connections,
                s.wire_duplicates,
                s.out_of_order,
                s.redelivered,
                s.missing.len(),
                first(&s.missing),
                s.unexpected.len(),
                first(&s.unexpected),
                s.report.gaps,
                s.report.open_failures.iter().take(5).collect::<Vec<_>>()
            )
            .unwrap();
            for c in &s.report.connections {
                writeln!(
                    out,
                    "    connection slot={} resumed_after={:?} events={} duplicates={} out_of_order={} \
                     redelivered={} heartbeats={} ended={:?}",
                    c.slot,
                    c.resumed_after,
                    c.events,
                    c.wire_duplicates,
                    c.out_of_order,
                    c.redelivered,
                    c.heartbeats,
                    c.ended
                )
                .unwrap();
            }
        }
        for b in &self.broker {
            writeln!(
                out,
                "  broker {}: stored={} missing={:?} unacknowledged={:?} keys_stored_twice={:?}",
                b.story, b.stored, b.missing, b.unacknowledged, b.repeated_keys
            )
            .unwrap();
        }
        out
    }

    /// The exact count: every acknowledged event reached every subscriber of its story and nothing else did,
    /// no connection delivered an id twice or out of order, no gap, every event was resolved, and the broker
    /// holds exactly the acknowledged events, one per key.
    pub(crate) fn assert_exact(&self) {
        let line = self.line();
        let details = self.details();
        let context = format!("{line}\n{details}");
        for p in &self.published {
            assert!(p.unresolved.is_empty(), "{}: events never acknowledged\n{context}", p.story);
            assert!(!p.acked.is_empty(), "{}: a publisher acknowledged nothing\n{context}", p.story);
        }
        for s in &self.subscribers {
            assert!(s.missing.is_empty(), "{}: acknowledged events never delivered\n{context}", s.name);
            assert!(s.unexpected.is_empty(), "{}: delivered events never acknowledged\n{context}", s.name);
            assert_eq!(s.wire_duplicates, 0, "{}: an id twice on one connection\n{context}", s.name);
            assert_eq!(s.out_of_order, 0, "{}: ids out of order on one connection\n{context}", s.name);
            assert_eq!(s.gaps, 0, "{}: a gap frame\n{context}", s.name);
            assert_eq!(s.delivered, s.acknowledged, "{}: delivered set != acknowledged set\n{context}", s.name);
        }
        for b in &self.broker {
            assert!(b.missing.is_empty(), "{}: acknowledged events missing from the broker\n{context}", b.story);
            assert!(b.unacknowledged.is_empty(), "{}: stored events never acknowledged\n{context}", b.story);
            let unexpected: BTreeMap<&String, &usize> =
                b.repeated_keys.iter().filter(|(key, n)| self.allowed_repeats.get(*key) != Some(n)).collect();
            assert!(unexpected.is_empty(), "{}: idempotency keys stored more than once\n{context}", b.story);
        }
        for (key, times) in &self.allowed_repeats {
            let found = self.broker.iter().find_map(|b| b.repeated_keys.get(key)).copied().unwrap_or(1);
            assert_eq!(found, *times, "key {key} stored {found} times, expected {times}\n{context}");
        }
    }
}
