//! `storyline probe` against a real `storyline serve` (memory broker, free port, loopback): `--once` as cron and
//! CI use it, and the repeating mode's own `/metrics` as Prometheus scrapes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Running, logged_base_url, spawn, storyline};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const PROBE_SCOPE: &str = "read:probe:* write:probe:*";

fn mint(secret: &str, scope: &str) -> String {
    common::mint_token(secret, &["--sub", "probe", "--scope", scope])
}

/// `storyline serve` with the test secret on a free port; its base URL.
fn serve(extra_env: &[(&str, &str)]) -> (Running, String) {
    let env = [&[("STORYLINE_JWT_SECRET", SECRET), ("STORYLINE_LOG_FORMAT", "text")], extra_env].concat();
    let (serve, rx) = spawn(&["serve", "--listen", "127.0.0.1:0"], &env);
    let base = logged_base_url(&rx);
    (serve, base)
}

#[test]
fn probe_once_against_a_healthy_service_exits_0_and_prints_the_round_trip() {
    let token = mint(SECRET, PROBE_SCOPE);
    // The token through its environment variable, which `serve` in the same environment must tolerate.
    let (_serve, base) = serve(&[("STORYLINE_PROBE_TOKEN", &token)]);
    let out =
        storyline(&["probe", "--once", "--url", &base, "--timeout-secs", "5"], &[("STORYLINE_PROBE_TOKEN", &token)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let ms: f64 = stdout
        .split("round_trip_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a round trip in ms: {stdout}"));
    assert!((0.0..5000.0).contains(&ms), "round trip within the timeout: {ms}");
    assert!(stdout.contains("resume=ok"), "{stdout}");
}

#[test]
fn probe_once_with_a_refused_token_exits_1_and_names_auth() {
    let (_serve, base) = serve(&[]);
    for (case, token) in [
        ("a token that may read but not write", mint(SECRET, "read:probe:*")),
        ("a token signed with another secret", mint("another-secret-0123456789abcdef", PROBE_SCOPE)),
    ] {
        let out = storyline(&["probe", "--once", "--url", &base, "--token", &token, "--timeout-secs", "5"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains("reason=auth"), "{case}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case}: one line: {stderr}");
        assert!(!stderr.contains(&token), "{case}: the token is not printed: {stderr}");
    }
}

#[test]
fn probe_once_against_a_port_nothing_listens_on_exits_1_and_names_connect() {
    // A free port, released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token = mint(SECRET, PROBE_SCOPE);
    let url = format!("http://127.0.0.1:{port}");
    let out = storyline(&["probe", "--once", "--url", &url, "--token", &token, "--timeout-secs", "5"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("reason=connect"), "{stderr}");
}

#[test]
fn probe_rejects_a_bad_story_id_and_a_non_http_url_before_probing() {
    for (case, args) in [
        ("bad story id", vec!["--url", "http://127.0.0.1:9", "--story", "bad story"]),
        ("not an http url", vec!["--url", "ftp://127.0.0.1:9"]),
    ] {
        let out = storyline(&[&["probe", "--once", "--token", "t"], &args[..]].concat(), &[]);
        assert!(!matches!(out.status.code(), Some(0 | 1)), "{case}: usage error, not a probe result: {out:?}");
    }
}

/// The value of the first sample named exactly `series` (name plus labels) in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repeating_probe_exports_success_round_trips_and_failures_on_its_own_metrics() {
    let token = mint(SECRET, PROBE_SCOPE);
    let (serve, base) = serve(&[]);
    let (probe, rx) = spawn(
        &["probe", "--url", &base, "--interval-secs", "1", "--timeout-secs", "2", "--listen", "127.0.0.1:0"],
        &[("STORYLINE_PROBE_TOKEN", &token), ("RUST_LOG", "info")],
    );
    let metrics_url = format!("{}/metrics", logged_base_url(&rx));
    let client = storyline_testkit::http_client();
    let scrape = || async { client.get(&metrics_url).send().await.ok()?.text().await.ok() };

    // Healthy: success 1 and round-trip samples in an explicit-bucket histogram.
    let page = storyline_testkit::poll_until("the probe reports success", Duration::from_secs(20), || async {
        let page = scrape().await?;
        (sample(&page, "storyline_probe_success") == Some(1.0)
            && page.contains("storyline_probe_round_trip_seconds_bucket{le="))
        .then_some(page)
    })
    .await;
    for line in [
        "# TYPE storyline_probe_round_trip_seconds histogram",
        "# HELP storyline_probe_success",
        "# HELP storyline_probe_round_trip_seconds",
        "# HELP storyline_probe_failures_total",
        "storyline_probe_round_trip_seconds_bucket{le=\"0.2\"}",
    ] {
        assert!(page.contains(line), "{line:?} in:\n{page}");
    }
    for reason in ["connect", "auth", "publish", "timeout", "resume", "protocol"] {
        let series = format!("storyline_probe_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&page, &series), Some(0.0), "{series} reads 0 before any failure:\n{page}");
    }

    // The service goes away: success 0 and a failure counted.
    drop(serve);
    let page = storyline_testkit::poll_until("the probe reports the failure", Duration::from_secs(20), || async {
        let page = scrape().await?;
        let failures: f64 = page
            .lines()
            .filter(|l| l.starts_with("storyline_probe_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (sample(&page, "storyline_probe_success") == Some(0.0) && failures >= 1.0).then_some(page)
    })
    .await;
    assert!(
        sample(&page, "storyline_probe_failures_total{reason=\"connect\"}").unwrap_or(0.0) >= 1.0,
        "a service that is gone is a connect failure:\n{page}"
    );

    let status = tokio::task::spawn_blocking(move || probe.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0), "the probe stops cleanly on SIGTERM");
}

/// What a fake storyline does to a stream that resumes with `Last-Event-ID`.
#[derive(Debug, Clone, Copy)]
enum FakeResume {
    /// Reports that retention trimmed the resume point.
    Gap,
    /// Starts again from the beginning, so the reader sees an event twice.
    Replay,
}

/// A stand-in for storyline that publishes and streams like the real one until a stream resumes, then
/// misbehaves as told: the only way to see the probe's resume check fail on demand.
async fn fake_storyline(resume: FakeResume) -> String {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use futures::StreamExt;
    use std::sync::Mutex;

    struct State {
        mode: FakeResume,
        frames: Mutex<Vec<String>>,
        live: tokio::sync::broadcast::Sender<String>,
    }
    type Chunk = Result<bytes::Bytes, std::convert::Infallible>;

    async fn publish(state: web::Data<State>, body: web::Json<serde_json::Value>) -> HttpResponse {
        let mut frames = state.frames.lock().unwrap();
        let id = format!("1000-{}", frames.len());
        let envelope = serde_json::json!({"id": id, "story": "probe:synthetic", "type": "probe", "data": body["data"], "author": "probe", "ts": 1000});
        let frame = format!("id: {id}\nevent: probe\ndata: {envelope}\n\n");
        frames.push(frame.clone());
        let _ = state.live.send(frame);
        HttpResponse::Created()
            .json(serde_json::json!({"id": id, "story": "probe:synthetic", "type": "probe", "ts": 1000}))
    }

    async fn stream(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
        let preface = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from("retry: 1000\n\n"))]);
        let body: futures::stream::BoxStream<'static, Chunk> = if req.headers().contains_key("last-event-id") {
            let frames: Vec<String> = match state.mode {
                FakeResume::Gap => {
                    vec![
                        r#"event: gap
data: {"requested":"1000-0","resumed_from":"1000-1"}

"#
                        .to_owned(),
                    ]
                }
                FakeResume::Replay => state.frames.lock().unwrap().clone(),
            };
            preface
                .chain(futures::stream::iter(frames.into_iter().map(|f| Ok(bytes::Bytes::from(f)))))
                .chain(futures::stream::pending())
                .boxed()
        } else {
            let live = futures::stream::unfold(state.live.subscribe(), |mut rx| async move {
                let frame = rx.recv().await.ok()?;
                Some((Ok(bytes::Bytes::from(frame)), rx))
            });
            preface.chain(live).boxed()
        };
        HttpResponse::Ok().content_type("text/event-stream").streaming(body)
    }

    let state = web::Data::new(State {
        mode: resume,
        frames: Mutex::new(Vec::new()),
        live: tokio::sync::broadcast::channel(16).0,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/v1/stories/{story}/events", web::post().to(publish))
            .route("/v1/stories/{story}/stream", web::get().to(stream))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_once_fails_the_resume_check_on_a_gap_or_a_replay() {
    for (mode, expected) in [(FakeResume::Gap, "gap frame"), (FakeResume::Replay, "replayed")] {
        let base = fake_storyline(mode).await;
        let out = tokio::task::spawn_blocking(move || {
            storyline(&["probe", "--once", "--url", &base, "--token", "t", "--timeout-secs", "5"], &[])
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode:?}: {stderr}");
        assert!(stderr.contains("reason=resume") && stderr.contains(expected), "{mode:?}: {stderr}");
    }
}

#[test]
fn probe_once_over_https_trusts_the_ca_file_and_refuses_an_untrusted_certificate() {
    let token = mint(SECRET, PROBE_SCOPE);
    let (cert, key, ca) = (
        storyline_testkit::fixture("tls-cert.pem"),
        storyline_testkit::fixture("tls-key.pem"),
        storyline_testkit::fixture("tls-ca.pem"),
    );
    let (_serve, base) = serve(&[
        ("STORYLINE_TLS_CERT_FILE", cert.to_str().unwrap()),
        ("STORYLINE_TLS_KEY_FILE", key.to_str().unwrap()),
    ]);
    let base = base.replacen("http://", "https://", 1);

    let trusted = storyline(
        &["probe", "--once", "--url", &base, "--timeout-secs", "5", "--ca-file", ca.to_str().unwrap()],
        &[("STORYLINE_PROBE_TOKEN", &token)],
    );
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    assert_eq!(trusted.status.code(), Some(0), "{stdout}\nstderr: {}", String::from_utf8_lossy(&trusted.stderr));
    assert!(stdout.contains("resume=ok"), "{stdout}");

    let untrusted =
        storyline(&["probe", "--once", "--url", &base, "--timeout-secs", "5"], &[("STORYLINE_PROBE_TOKEN", &token)]);
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "the test CA is not among the system's roots: {stderr}");
    assert!(stderr.contains("reason=connect") && stderr.contains("TLS"), "{stderr}");
}
