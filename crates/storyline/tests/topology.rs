//! The compose stack's topology (docker-compose.yml), run natively from the repository's own config files: a real
//! `redis-server` (AOF `everysec`, as the `redis` service), two `storyline serve` processes on it, nginx in front
//! of them with `deploy/nginx/`, and (for the Prometheus test) `storyline probe` through nginx and Prometheus with
//! `deploy/prometheus/prometheus.yml` and the rule file it names. Every port is a free loopback port.
//!
//! What is rewritten for the native run, and nothing else (each rewrite must match exactly once, or the test fails):
//! - `deploy/nginx/upstreams.conf`: the two `server storyline-N:8080` addresses become the instances' loopback
//!   addresses;
//! - `deploy/nginx/storyline.conf`: its `listen 8080;` line becomes `listen 127.0.0.1:<free port>;`;
//! - both are included, as the nginx image includes its conf.d, by a top-level nginx.conf written here in place of
//!   the image's: `daemon off`, `master_process off` (one process, so that a failed test leaves no orphaned
//!   worker), pid, error log and temporary paths in the test's directory;
//! - `deploy/prometheus/prometheus.yml`: the three targets (`storyline-1:8080`, `storyline-2:8080`,
//!   `probe:9465`) become loopback addresses. It is written to `<dir>/deploy/prometheus/` next to a
//!   `<dir>/grafana` link to the repository's `grafana/`, so its `rule_files` entry resolves as it does in the
//!   container (which mounts both directories side by side) and in the repository.
//!
//! The instances get the compose stack's storyline environment with the addresses changed (listen on port 0, the
//! test's Redis, `STORYLINE_TRUSTED_PROXIES=127.0.0.1`: nginx's address here) and no OTLP endpoint, plus three
//! settings for the test: heartbeats every second (to see them pass in a second rather than 15), a slow-consumer
//! timeout of 2 s rather than 30, and `STORYLINE_IP_DENY` for an address only a test client uses (to observe which
//! client address storyline believes). The probe runs the compose stack's command with the URL and listen address
//! changed.
//!
//! What each test proves, through nginx: an event POSTed to one instance reaches a reader of the other (which
//! instance holds the stream and which took the POST, by the instances' own /metrics, and nginx's access log
//! names the POST's upstream); a Last-Event-ID resume gets exactly the missed events; heartbeats and events pass
//! while the stream stays open; a reader that stops reading pushes back to the instance, which cuts it as a slow
//! consumer (what `proxy_buffering off` is for: with buffering on and storyline's `X-Accel-Buffering: no`
//! ignored, nginx spools the stream to disk and this test fails); storyline believes the client address nginx
//! forwards and not one a client claims; Prometheus scrapes both instances and the probe and loads every rule.
//!
//! nginx and prometheus come from Debian (`scripts/compose-check.sh` installs nginx, `scripts/test.sh`
//! prometheus). Without them the tests print why and pass without checking, except under CI (`CI=true`), where
//! they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc::Receiver},
    time::Duration,
};

use common::{Running, logged_base_url, mint_token, spawn};
use serde_json::{Value, json};
use storyline_testkit::{Frame, RedisServer, SseStream, poll_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "topology-test-secret-0123456789abcdef";
/// Deadline for any one condition; a passing run needs a fraction of it.
const DEADLINE: Duration = Duration::from_secs(20);
/// `STORYLINE_HEARTBEAT_SECS` of the instances here.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A frame storyline has written must reach a reader that keeps reading through nginx within this.
const UNBUFFERED: Duration = Duration::from_secs(3);
/// The client address the instances deny (`STORYLINE_IP_DENY`). Linux routes all of 127.0.0.0/8 to loopback, so a
/// client can connect from it while nginx still reaches the instances from 127.0.0.1.
const DENIED_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
const OTHER_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{file} must contain {from:?} exactly once");
    text.replacen(from, to, 1)
}

// ------------------------------------------------------------------------------------------------------------
// The tools, or a skip

#[derive(Debug, Clone)]
struct Tools {
    nginx: PathBuf,
    prometheus: PathBuf,
}

/// nginx and prometheus, found on PATH (or in /usr/sbin, where Debian puts nginx). Without them: `None` after
/// saying why, or a failure under CI.
fn tools() -> Option<Tools> {
    let find = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    match (find("nginx"), find("prometheus")) {
        (Some(nginx), Some(prometheus)) => Some(Tools { nginx, prometheus }),
        (nginx, prometheus) => {
            let missing: Vec<&str> = [("nginx", nginx.is_none()), ("prometheus", prometheus.is_none())]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect();
            let how = "On Debian/Ubuntu `apt-get install -y nginx prometheus` (./scripts/compose-check.sh installs \
                       nginx, ./scripts/test.sh prometheus)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} not found, and CI=true: the native topology test must run in CI. {how}.",
                missing.join(" and ")
            );
            eprintln!("topology: SKIPPED, {} not found (and not CI). {how}.", missing.join(" and "));
            None
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// The topology

/// One `storyline serve` of the stack.
struct Instance {
    _process: Running,
    _logs: Receiver<String>,
    /// `http://127.0.0.1:<port>`.
    base: String,
}

impl Instance {
    fn start(redis_url: &str) -> Self {
        let (process, logs) = spawn(
            &["serve"],
            &[
                // The compose stack's environment (x-storyline-environment), addresses changed.
                ("STORYLINE_LISTEN", "127.0.0.1:0"),
                ("STORYLINE_REDIS_URL", redis_url),
                ("STORYLINE_JWT_SECRET", SECRET),
                ("STORYLINE_TRUSTED_PROXIES", "127.0.0.1"),
                ("STORYLINE_LOG_FORMAT", "text"),
                ("RUST_LOG", "info"),
                // For the test.
                ("STORYLINE_HEARTBEAT_SECS", "1"),
                ("STORYLINE_SLOW_CONSUMER_SECS", "2"),
                ("STORYLINE_IP_DENY", "127.0.0.3"),
            ],
        );
        let base = logged_base_url(&logs);
        Self { _process: process, _logs: logs, base }
    }

    fn address(&self) -> &str {
        self.base.strip_prefix("http://").unwrap()
    }
}

/// nginx with the repository's deploy/nginx/ (see the module docs for what is rewritten).
struct Nginx {
    _process: Running,
    base: String,
    /// Its access log (storyline.conf logs to stdout), one line per finished request.
    access_log: Arc<Mutex<Vec<String>>>,
}

impl Nginx {
    async fn start(nginx: &Path, dir: &Path, upstreams: [&str; 2]) -> Self {
        let conf_d = dir.join("conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        let repo_upstreams = read(&repo().join("deploy/nginx/upstreams.conf"));
        let mut rewritten = repo_upstreams;
        for (name, address) in [("storyline-1:8080", upstreams[0]), ("storyline-2:8080", upstreams[1])] {
            rewritten =
                replace_once(&rewritten, &format!("server {name} "), &format!("server {address} "), "upstreams.conf");
        }
        std::fs::write(conf_d.join("upstreams.conf"), rewritten).unwrap();
        let site = read(&repo().join("deploy/nginx/storyline.conf"));
        let top = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &top,
            format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    \
                 fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
                 include {d}/conf.d/*.conf;\n}}\n"
            ),
        )
        .unwrap();

        // The port is free when we look, and may not be when nginx binds it: then try another.
        for _ in 0..5 {
            let port = storyline_testkit::free_port();
            let listen = replace_once(
                &site,
                "\n    listen 8080;\n",
                &format!("\n    listen 127.0.0.1:{port};\n"),
                "storyline.conf",
            );
            std::fs::write(conf_d.join("storyline.conf"), listen).unwrap();
            let _ = std::fs::remove_file(dir.join("error.log"));
            let mut child = Command::new(nginx)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&top)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("running {}: {e}", nginx.display()));
            let access_log = Arc::new(Mutex::new(Vec::new()));
            let stdout = child.stdout.take().unwrap();
            let lines = access_log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
            let mut process = Running(child);
            // Listening, or exited (a port taken meanwhile, or a configuration nginx refuses).
            let outcome = poll_until("nginx listens or exits", DEADLINE, || {
                let exited = process.0.try_wait().unwrap();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| Ok(()))
                }
            })
            .await;
            match outcome {
                Ok(()) => return Self { _process: process, base: format!("http://127.0.0.1:{port}"), access_log },
                Err(status) => {
                    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    assert!(log.contains("Address already in use"), "nginx exited ({status}):\n{log}");
                }
            }
        }
        panic!("nginx found no free port in 5 attempts");
    }

    /// The access log lines so far.
    fn log(&self) -> Vec<String> {
        self.access_log.lock().unwrap().clone()
    }
}

/// Redis, the two instances and nginx in front of them.
struct Topology {
    _redis: RedisServer,
    instances: [Instance; 2],
    nginx: Nginx,
    dir: tempfile::TempDir,
    client: reqwest::Client,
    writer: String,
    reader: String,
}

impl Topology {
    async fn start(tools: &Tools) -> Self {
        let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]);
        let url = redis.url();
        let (a, b) = tokio::task::spawn_blocking(move || (Instance::start(&url), Instance::start(&url))).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nginx = Nginx::start(&tools.nginx, &dir.path().join("nginx"), [a.address(), b.address()]).await;
        let client = storyline_testkit::http_client_builder().connect_timeout(Duration::from_secs(5)).build().unwrap();
        let writer = mint_token(SECRET, &["--sub", "writer", "--scope", "write:* read:*", "--tier", "agent"]);
        let reader = mint_token(SECRET, &["--sub", "reader", "--scope", "read:*"]);
        let topology = Self { _redis: redis, instances: [a, b], nginx, dir, client, writer, reader };
        let health = format!("{}/readyz", topology.nginx.base);
        poll_until("nginx answers /readyz from an instance", DEADLINE, || async {
            topology.client.get(&health).send().await.ok()?.status().is_success().then_some(())
        })
        .await;
        topology
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.nginx.base)
    }

    /// Opens `story`'s stream through nginx, resuming after `last_event_id` when given.
    async fn open_stream(&self, story: &str, last_event_id: Option<&str>) -> SseStream {
        let mut request = self.client.get(self.url(&format!("/v1/stories/{story}/stream"))).bearer_auth(&self.reader);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "stream open through nginx: {:?}", response.headers());
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseStream::new(response)
    }

    /// POSTs an event through nginx; its id.
    async fn publish(&self, story: &str, n: u64) -> String {
        let response = self
            .client
            .post(self.url(&format!("/v1/stories/{story}/events")))
            .bearer_auth(&self.writer)
            .header("Idempotency-Key", format!("topology-{story}-{n}"))
            .json(&json!({"type": "line", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "POST through nginx");
        let receipt: Value = response.json().await.unwrap();
        receipt["id"].as_str().unwrap().to_owned()
    }

    /// The sum of every series of `metric` on each instance's own /metrics (not through nginx).
    async fn per_instance(&self, metric: &str) -> [f64; 2] {
        let mut out = [0.0; 2];
        for (i, instance) in self.instances.iter().enumerate() {
            let text =
                self.client.get(format!("{}/metrics", instance.base)).send().await.unwrap().text().await.unwrap();
            out[i] = sum_of(&text, metric);
        }
        out
    }

    /// Streams instance `i` has disconnected as slow consumers, by its own /metrics.
    async fn slow_consumer_cuts(&self, i: usize) -> f64 {
        let url = format!("{}/metrics", self.instances[i].base);
        let text = self.client.get(url).send().await.unwrap().text().await.unwrap();
        sum_of_labelled(&text, "storyline_connections_closed_total", "reason=\"slow_consumer\"")
    }

    /// Which instance holds the one open stream, once exactly one does.
    async fn instance_holding_the_stream(&self) -> usize {
        poll_until("exactly one instance holds the stream opened through nginx", DEADLINE, || async {
            match self.per_instance("storyline_connections_active").await {
                [a, b] if a == 1.0 && b == 0.0 => Some(0),
                [a, b] if a == 0.0 && b == 1.0 => Some(1),
                _ => None,
            }
        })
        .await
    }
}

/// The sum of every sample of `metric` (any labels) in Prometheus text format.
fn sum_of(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.strip_prefix(metric).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of the samples of `metric` whose labels include `label` (`name="value"`).
fn sum_of_labelled(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{')))
        .filter(|line| line.split('}').next().is_some_and(|labels| labels.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The next event of `stream`, which must arrive within [`UNBUFFERED`] with the stream still open.
async fn next_event_unbuffered(stream: &mut SseStream, what: &str) -> Frame {
    let arrived = tokio::time::timeout(UNBUFFERED, async {
        loop {
            match stream.try_next_frame().await {
                Ok(Some(frame)) if frame.is_event() => return frame,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended while waiting for {what}"),
                Err(e) => panic!("the stream failed while waiting for {what}: {e}"),
            }
        }
    })
    .await;
    arrived.unwrap_or_else(|_| {
        panic!(
            "{what} did not reach the reader through nginx within {UNBUFFERED:?} (received so far: {:?}): does nginx \
             hold the stream's frames back?",
            String::from_utf8_lossy(&stream.raw)
        )
    })
}

// ------------------------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_through_nginx_to_one_instance_reaches_a_reader_connected_through_nginx_to_the_other() {
    let Some(tools) = tools() else { return };
    let t = Topology::start(&tools).await;
    let story = "compose:cross";

    // Arrange: a reader through nginx, on the instance that holds its stream by that instance's own metrics.
    let mut reader = t.open_stream(story, None).await;
    let reader_on = t.instance_holding_the_stream().await;

    // Act: POST through nginx until a POST lands on the other instance (by the instances' own publish counters).
    // nginx's least_conn sends it there at once, as the reader's stream is the only open connection; a few
    // attempts are allowed so that the proof does not rest on that choice. Every event reaches the reader, in order.
    let mut crossed = None;
    for n in 0..4 {
        let before = t.per_instance("storyline_events_published_total").await;
        let id = t.publish(story, n).await;
        let after = t.per_instance("storyline_events_published_total").await;
        let on: Vec<usize> = (0..2).filter(|&i| after[i] > before[i]).collect();
        assert_eq!(on.len(), 1, "exactly one instance counted the POST: before {before:?}, after {after:?}");
        let frame = next_event_unbuffered(&mut reader, "the event").await;
        assert_eq!(frame.id.as_deref(), Some(id.as_str()), "the reader gets the POSTed events in order");
        if on[0] != reader_on {
            eprintln!("topology: POST {} through nginx landed on the instance without the stream", n + 1);
            crossed = Some((id, frame));
            break;
        }
    }

    // Assert
    let (id, frame) = crossed.expect("a POST through nginx landed on the instance that does not hold the stream");
    assert_eq!(frame.event.as_deref(), Some("line"));
    assert_eq!(frame.json()["story"], story);
    let publisher = &t.instances[1 - reader_on];
    // nginx's own account of it: its access log names the upstream that answered the POST.
    let logged = poll_until("nginx logs the POST with its upstream", DEADLINE, || async {
        t.nginx
            .log()
            .into_iter()
            .filter(|line| line.contains(&format!("\"POST /v1/stories/{story}/events ")))
            .find(|line| line.contains(&format!("upstream={} ", publisher.address())))
    })
    .await;
    assert!(logged.contains(" 201 "), "nginx logged the POST of {id} as answered 201 by the other instance: {logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resumes_through_nginx_with_last_event_id_and_gets_exactly_the_missed_events() {
    let Some(tools) = tools() else { return };
    let t = Topology::start(&tools).await;
    let story = "compose:resume";
    let mut reader = t.open_stream(story, None).await;
    let first = t.publish(story, 1).await;
    assert_eq!(next_event_unbuffered(&mut reader, "the first event").await.id.as_deref(), Some(first.as_str()));

    // Act: the reader goes away; two events are written meanwhile; it comes back through nginx with the last id.
    drop(reader);
    let missed = [t.publish(story, 2).await, t.publish(story, 3).await];
    let mut resumed = t.open_stream(story, Some(&first)).await;

    // Assert: exactly the missed events, then the next live one with nothing in between.
    let mut got = Vec::new();
    for _ in &missed {
        got.push(next_event_unbuffered(&mut resumed, "a missed event").await.id.unwrap());
    }
    assert_eq!(got, missed, "the resumed stream replays exactly the events after Last-Event-ID, in order");
    let live = t.publish(story, 4).await;
    let next = next_event_unbuffered(&mut resumed, "the live event after the replay").await;
    assert_eq!(next.id.as_deref(), Some(live.as_str()), "no duplicate or extra event after the replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_heartbeats_and_events_while_the_stream_stays_open() {
    let Some(tools) = tools() else { return };
    let t = Topology::start(&tools).await;
    let story = "compose:unbuffered";
    let mut reader = t.open_stream(story, None).await;

    // Heartbeats: storyline writes one every second; each must come through nginx as it is written.
    let mut heartbeats = 0;
    while heartbeats < 3 {
        let frame = tokio::time::timeout(HEARTBEAT + UNBUFFERED, reader.try_next_frame())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no frame through nginx within {:?} while storyline sends a heartbeat every {HEARTBEAT:?} \
                     (received: {:?}): does nginx hold the stream's frames back?",
                    HEARTBEAT + UNBUFFERED,
                    String::from_utf8_lossy(&reader.raw)
                )
            })
            .unwrap()
            .expect("the stream stays open");
        if !frame.is_event() && frame.comments.iter().any(|c| c.contains("keep-alive")) {
            heartbeats += 1;
        }
    }

    // An event, while the stream stays open, and heartbeats after it.
    let id = t.publish(story, 1).await;
    assert_eq!(next_event_unbuffered(&mut reader, "the event").await.id.as_deref(), Some(id.as_str()));
    let after = tokio::time::timeout(HEARTBEAT + UNBUFFERED, reader.try_next_frame()).await;
    assert!(
        matches!(after, Ok(Ok(Some(ref frame))) if !frame.comments.is_empty()),
        "a heartbeat follows the event on the open stream: {after:?}"
    );
    let headers = &reader.headers;
    assert!(headers.get("content-encoding").is_none_or(|v| v == "identity"), "nginx does not compress: {headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_pushes_back_through_nginx_and_storyline_cuts_it_as_a_slow_consumer() {
    // Without proxy buffering, nginx reads from the instance only as fast as the reader takes the stream, so a
    // stalled reader stalls the instance's socket and storyline disconnects it (STORYLINE_SLOW_CONSUMER_SECS, 2 s
    // here); the reader resumes with Last-Event-ID. With buffering on, nginx would spool the stream to its
    // temporary files (up to proxy_max_temp_file_size, 1 GiB by default, per stream) and storyline would never
    // see the reader fall behind.
    let Some(tools) = tools() else { return };
    let t = Topology::start(&tools).await;
    let story = "compose:stalled";

    // Arrange: a reader with a small receive buffer that reads the response head and then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = t.nginx.base.strip_prefix("http://").unwrap().parse().unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    let request = format!(
        "GET /v1/stories/{story}/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        t.reader
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stalled.read(&mut byte).await.unwrap(), 1, "the stream's response head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let holder = t.instance_holding_the_stream().await;

    // Act: write large events (60 KB each) until the instance has cut the stalled reader, at most 400 (24 MB).
    let text = "x".repeat(60_000);
    let mut published = 0;
    while t.slow_consumer_cuts(holder).await == 0.0 && published < 400 {
        for _ in 0..20 {
            let response = t
                .client
                .post(t.url(&format!("/v1/stories/{story}/events")))
                .bearer_auth(&t.writer)
                .json(&json!({"type": "line", "data": {"text": text}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "a large POST through nginx");
            published += 1;
        }
    }

    // Assert: storyline cut it (within the slow-consumer timeout and a sweep, once the buffers on the way filled).
    poll_until("storyline disconnects the stalled reader as a slow consumer", DEADLINE, || async {
        (t.slow_consumer_cuts(holder).await >= 1.0).then_some(())
    })
    .await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storyline_believes_the_client_address_nginx_forwards_and_only_that() {
    let Some(tools) = tools() else { return };
    let t = Topology::start(&tools).await;
    let from = |ip: IpAddr| storyline_testkit::http_client_builder().local_address(ip).build().unwrap();
    let status = |client: reqwest::Client, url: String, forwarded: Option<&'static str>| async move {
        let mut request = client.get(url);
        if let Some(value) = forwarded {
            request = request.header("X-Forwarded-For", value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body["type"].as_str().unwrap_or_default().to_owned())
    };
    let through_nginx = t.url("/healthz");

    // The denied address, through nginx: nginx connects to the instance from 127.0.0.1 (not denied), so the 403
    // comes from the X-Forwarded-For it added.
    let denied = status(from(DENIED_CLIENT), through_nginx.clone(), None).await;
    assert_eq!(denied, (403, "urn:storyline:problem:ip-denied".to_owned()), "the client nginx saw is the one refused");
    // Another client through nginx is served.
    assert_eq!(status(from(OTHER_CLIENT), through_nginx.clone(), None).await.0, 200, "nginx itself is not refused");
    // A client that claims the denied address: nginx appends the address it saw, and storyline reads from the
    // right, so the claim is not believed.
    let spoofed = status(from(OTHER_CLIENT), through_nginx, Some("127.0.0.3")).await;
    assert_eq!(spoofed.0, 200, "an X-Forwarded-For the client sent itself is not believed");
    // Straight to an instance from an address that is not a trusted proxy: its X-Forwarded-For is ignored.
    let direct = format!("{}/healthz", t.instances[0].base);
    assert_eq!(status(from(OTHER_CLIENT), direct, Some("127.0.0.3")).await.0, 200, "untrusted peers' header ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_with_the_stack_config_scrapes_both_instances_and_the_probe_and_loads_the_alert_rules() {
    let Some(tools) = tools() else { return };
    let t = Topology::start(&tools).await;
    let probe = Probe::start(&t.nginx.base);
    let [one, two] = [t.instances[0].address(), t.instances[1].address()];
    let prometheus =
        Prometheus::start(&tools.prometheus, &t.dir.path().join("prometheus"), [one, two, &probe.address]).await;

    // Every target of the stack's config is up: (job, address) for both instances and the probe.
    let expected: BTreeSet<(String, String)> =
        [("storyline", one), ("storyline", two), ("storyline-probe", &*probe.address)]
            .into_iter()
            .map(|(job, address)| (job.to_owned(), address.to_owned()))
            .collect();
    let targets = poll_until("Prometheus scrapes every target of prometheus.yml (health up)", DEADLINE, || async {
        let body = prometheus.get("/api/v1/targets").await;
        let active = body["data"]["activeTargets"].as_array()?.clone();
        let up: BTreeSet<(String, String)> = active
            .iter()
            .filter(|target| target["health"] == "up")
            .map(|target| {
                let labels = &target["labels"];
                (labels["job"].as_str().unwrap().to_owned(), labels["instance"].as_str().unwrap().to_owned())
            })
            .collect();
        (up == expected && active.len() == expected.len()).then_some(active)
    })
    .await;
    assert_eq!(targets.len(), 3);

    // The rule file prometheus.yml names is loaded: every recording rule and alert of it, none failing.
    let body = prometheus.get("/api/v1/rules").await;
    let rules: Vec<&Value> =
        body["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    let file = read(&repo().join("grafana/prometheus/storyline-rules.yml"));
    let in_file = file
        .lines()
        .filter(|l| l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:"))
        .count();
    let alerts = rules.iter().filter(|r| r["type"] == "alerting").count();
    assert_eq!(rules.len(), in_file, "Prometheus loaded every rule of storyline-rules.yml");
    assert!(alerts >= 10, "the alert rules are among them: {alerts}");
    let failing: Vec<String> =
        rules.iter().filter(|r| r["health"] == "err").map(|r| format!("{}: {}", r["name"], r["lastError"])).collect();
    assert!(failing.is_empty(), "rules failing: {failing:?}");

    // And the probe, through nginx, succeeds as Prometheus sees it.
    poll_until("Prometheus reads storyline_probe_success 1 (the probe's run through nginx)", DEADLINE, || async {
        let body = prometheus.get("/api/v1/query?query=storyline_probe_success").await;
        (body["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .await;
}

// ------------------------------------------------------------------------------------------------------------
// The probe and Prometheus

/// `storyline probe` as the compose stack's `probe` service runs it, against nginx, its /metrics on a free port.
struct Probe {
    _process: Running,
    _logs: Receiver<String>,
    address: String,
}

impl Probe {
    fn start(nginx: &str) -> Self {
        let token =
            mint_token(SECRET, &["--sub", "probe", "--scope", "read:probe:* write:probe:*", "--ttl-secs", "315360000"]);
        let (process, logs) =
            spawn(&["probe", "--url", nginx, "--listen", "127.0.0.1:0"], &[("STORYLINE_PROBE_TOKEN", &token)]);
        let address = logged_base_url(&logs).strip_prefix("http://").unwrap().to_owned();
        Self { _process: process, _logs: logs, address }
    }
}

struct Prometheus {
    _process: Running,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    /// Prometheus with deploy/prometheus/prometheus.yml, its three targets rewritten to `targets` (instance 1,
    /// instance 2, probe), the rule file resolved through a `grafana` link to the repository's.
    async fn start(prometheus: &Path, dir: &Path, targets: [&str; 3]) -> Self {
        let config_dir = dir.join("deploy/prometheus");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::os::unix::fs::symlink(repo().join("grafana"), dir.join("grafana")).unwrap();
        let mut config = read(&repo().join("deploy/prometheus/prometheus.yml"));
        for (name, address) in ["storyline-1:8080", "storyline-2:8080", "probe:9465"].into_iter().zip(targets) {
            config = replace_once(&config, &format!("\"{name}\""), &format!("\"{address}\""), "prometheus.yml");
        }
        let config_file = config_dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let client = storyline_testkit::http_client_builder().timeout(Duration::from_secs(10)).build().unwrap();
        let (process, base) = common::start_prometheus(prometheus, &config_file, dir).await;
        Self { _process: process, base, client }
    }

    async fn get(&self, path: &str) -> Value {
        let body: Value = self.client.get(format!("{}{path}", self.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{path}: {body}");
        body
    }
}

#[test]
fn sum_of_adds_every_series_of_a_metric_and_nothing_else() {
    let text = "# HELP x_total x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_other 7\nx_total 1\n";
    assert_eq!(sum_of(text, "x_total"), 6.0, "labelled and bare series of x_total, not x_total_other");
}
