//! `storyline probe`: a synthetic client that checks the service the way a reader and a writer use it.
//!
//! One run: open a stream on the probe story (200 + `text/event-stream`), POST an event carrying a unique nonce
//! and measure from just before the POST to the moment its frame arrives on the stream (the round trip); then
//! drop the stream, POST a second event, reopen with `Last-Event-ID` = the first event's id and require the
//! second event to come back with nothing lost (no `gap`, nothing replayed that was already seen). Every step
//! is bounded by `--timeout-secs`. A failure has one reason from a small fixed set ([`Reason`]) and a one-line
//! message.
//!
//! `--once` runs once, prints one line and exits 0 or 1 (for cron and CI). Otherwise it runs every
//! `--interval-secs` and serves its own `/metrics` (a Prometheus recorder private to this process: the probe is
//! never the service, so installing the global recorder here is ours to do).
//!
//! It speaks the protocol through `storyline-client` (one piece of code for it in the workspace): the publish
//! with its typed refusals, and one stream connection at a time read exactly as sent ([`Client::open_stream`],
//! not the resuming subscription, whose job is to hide the gaps and replays this probe must see). The client's
//! retries are off: a probe reports what it met.
//!
//! This module must never panic on what the network sends: every answer is checked and turned into a failure.

use std::{
    net::{SocketAddr, TcpListener},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use storyline_client::{Client, Connection, Envelope, Error, Event, RetryPolicy, StreamFrame};
use storyline_core::{EventId, EventType, IdempotencyKey, StoryId};

pub(crate) const SUCCESS: &str = "storyline_probe_success";
pub(crate) const ROUND_TRIP: &str = "storyline_probe_round_trip_seconds";
pub(crate) const FAILURES: &str = "storyline_probe_failures_total";

/// Round-trip buckets, seconds: the SLO is 200 ms, so the buckets are dense around it; the top bucket sits at
/// the default timeout (a slower round trip is a `timeout` failure, not a sample).
const ROUND_TRIP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The event type the probe publishes.
const PROBE_EVENT_TYPE: &str = "probe";

/// The environment variable `--token` falls back to. `serve` ignores it (it is listed among the `STORYLINE_*`
/// variables that are not settings), so one environment can hold both.
pub(crate) const TOKEN_ENV: &str = "STORYLINE_PROBE_TOKEN";
/// The environment variable `--ca-file` falls back to; `serve` ignores it too.
pub(crate) const CA_FILE_ENV: &str = "STORYLINE_PROBE_CA_FILE";

#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// Base URL of storyline, e.g. http://127.0.0.1:8080 or https://storyline.example (the system's roots, plus
    /// --ca-file).
    #[arg(long)]
    url: String,
    /// PEM CA certificate(s) to trust for an https:// URL besides the system's roots (a private CA).
    #[arg(long, env = CA_FILE_ENV)]
    ca_file: Option<std::path::PathBuf>,
    /// JWT with read and write scope on the probe story, e.g. from
    /// `storyline token --sub probe --scope 'read:probe:* write:probe:*'`.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: String,
    /// The story the probe reads and writes (give each probe instance its own).
    #[arg(long, default_value = "probe:synthetic")]
    story: StoryId,
    /// Time between runs (repeating mode).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    interval_secs: u64,
    /// Upper bound on each step of a run (opening a stream, a POST, an event arriving).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    timeout_secs: u64,
    /// Run once, print one line, exit 0 on success and 1 on failure (no metrics server).
    #[arg(long)]
    once: bool,
    /// Address of the probe's own /metrics (repeating mode); port 0 picks a free port (the bound address is
    /// logged).
    #[arg(long, default_value = "127.0.0.1:9465")]
    listen: SocketAddr,
}

/// Why a run failed. A small fixed set: these are label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The service could not be reached, or refused to open a stream for a reason other than auth.
    Connect,
    /// The token was refused (401/403, or the stream ended with `token-expired`).
    Auth,
    /// The POST was refused (any status but 201 other than 401/403).
    Publish,
    /// A step did not finish within the timeout (the event never arrived, or an answer never came).
    Timeout,
    /// The resumed stream lost or replayed events, or reported a `gap`.
    Resume,
    /// An answer the contract does not allow (wrong content type, malformed frame or body, id mismatch).
    Protocol,
}

impl Reason {
    const ALL: [Reason; 6] =
        [Reason::Connect, Reason::Auth, Reason::Publish, Reason::Timeout, Reason::Resume, Reason::Protocol];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Auth => "auth",
            Reason::Publish => "publish",
            Reason::Timeout => "timeout",
            Reason::Resume => "resume",
            Reason::Protocol => "protocol",
        }
    }
}

/// A failed run: the reason and a one-line message for a human.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", reason.as_str())]
pub(crate) struct Failure {
    reason: Reason,
    message: String,
}

fn fail(reason: Reason, message: impl Into<String>) -> Failure {
    Failure { reason, message: message.into() }
}

/// What a successful run measured.
#[derive(Debug, Clone, Copy)]
struct Success {
    round_trip: Duration,
}

/// Everything one run needs, resolved from the flags.
#[derive(Debug, Clone)]
struct Target {
    client: Client,
    story: StoryId,
    stream_url: String,
    timeout: Duration,
}

impl Target {
    fn new(args: &ProbeArgs) -> anyhow::Result<Self> {
        let base = args.url.trim().trim_end_matches('/');
        let host = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            anyhow::bail!("--url {base:?} must be an http:// or https:// URL, e.g. http://127.0.0.1:8080");
        }
        let token = args.token.trim().to_owned();
        if token.is_empty() {
            anyhow::bail!("--token (or {TOKEN_ENV}) is empty");
        }
        let timeout = Duration::from_secs(args.timeout_secs);
        let mut builder = Client::builder(base);
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
            builder = builder.add_root_certificates_pem(pem);
        }
        let client = builder
            .token(token)
            .connect_timeout(timeout)
            .request_timeout(timeout)
            .idle_timeout(timeout)
            .retry(RetryPolicy::none())
            .build()
            .context("HTTP client")?;
        Ok(Self {
            client,
            story: args.story.clone(),
            stream_url: format!("{base}/v1/stories/{}/stream", args.story),
            timeout,
        })
    }
}

pub(crate) fn main(args: ProbeArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("storyline probe: {e:#}");
            ExitCode::from(crate::EXIT_CONFIG)
        }
    }
}

async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let target = Target::new(&args)?;
    if args.once {
        return Ok(match probe(&target).await {
            Ok(ok) => {
                crate::write_stdout(&format!(
                    "storyline probe: ok story={} round_trip_ms={:.1} resume=ok\n",
                    args.story,
                    ok.round_trip.as_secs_f64() * 1000.0
                ))?;
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("storyline probe: FAILED story={} reason={}", args.story, failure);
                ExitCode::FAILURE
            }
        });
    }
    repeat(args, target).await.map(|()| ExitCode::SUCCESS)
}

/// Repeating mode: a run every interval, results as metrics on our own `/metrics`, until SIGTERM/SIGINT.
async fn repeat(args: ProbeArgs, target: Target) -> anyhow::Result<()> {
    let _flush_logs_at_exit = crate::init_logging(crate::settings::LogFormat::Text, None);
    let handle = install_recorder()?;
    let listener = TcpListener::bind(args.listen).with_context(|| format!("could not listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new().app_data(web::Data::new(handle.clone())).route("/metrics", web::get().to(render_metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let server_handle = server.handle();
    let server = tokio::spawn(server);
    tracing::info!(address = %bound, "listening");
    tracing::info!(story = %args.story, interval_secs = args.interval_secs, "probing {}", target.stream_url);

    let mut ticks = tokio::time::interval(Duration::from_secs(args.interval_secs));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal = crate::wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            _ = &mut signal => break,
            outcome = probe(&target) => record(&outcome),
        }
    }
    tracing::info!("stopping");
    server_handle.stop(true).await;
    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
}

async fn render_metrics(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(handle.render())
}

fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ROUND_TRIP.to_owned()), ROUND_TRIP_BUCKETS)
        .context("round-trip buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    describe_gauge!(SUCCESS, Unit::Count, "1 if the latest probe run succeeded (publish, delivery, resume), else 0.");
    describe_histogram!(
        ROUND_TRIP,
        Unit::Seconds,
        "Probe round trip: from just before the POST to the event's frame arriving on the open stream."
    );
    describe_counter!(
        FAILURES,
        Unit::Count,
        "Failed probe runs, by reason (connect, auth, publish, timeout, resume, protocol)."
    );
    // Every reason reads 0 before the first failure, so rate() and increase() work from the start.
    for reason in Reason::ALL {
        metrics::counter!(FAILURES, "reason" => reason.as_str()).absolute(0);
    }
    Ok(handle)
}

fn record(outcome: &Result<Success, Failure>) {
    match outcome {
        Ok(ok) => {
            metrics::histogram!(ROUND_TRIP).record(ok.round_trip.as_secs_f64());
            metrics::gauge!(SUCCESS).set(1.0);
            tracing::info!(round_trip_ms = ok.round_trip.as_secs_f64() * 1000.0, "probe ok");
        }
        Err(failure) => {
            metrics::counter!(FAILURES, "reason" => failure.reason.as_str()).increment(1);
            metrics::gauge!(SUCCESS).set(0.0);
            tracing::warn!(reason = failure.reason.as_str(), "probe failed: {}", failure.message);
        }
    }
}

/// One run: round trip on a live stream, then resume after it.
async fn probe(target: &Target) -> Result<Success, Failure> {
    // 1. A live stream, opened before the POST so the event is one it must deliver.
    let mut stream = SseStream::open(target, None).await?;

    // 2. Publish and wait for the frame, concurrently: the frame may arrive before the POST's answer.
    let first_nonce = nonce()?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + target.timeout;
    let post = publish(target, &first_nonce);
    tokio::pin!(post);
    let mut posted: Option<EventId> = None;
    let mut arrived: Option<(EventId, Instant)> = None;
    while posted.is_none() || arrived.is_none() {
        tokio::select! {
            result = &mut post, if posted.is_none() => posted = Some(result?),
            frame = stream.next_event(), if arrived.is_none() => {
                // A gap on a live stream opened at the newest event is nothing the round trip waits for.
                if let Probed::Event(event) = frame?
                    && nonce_of(&event).as_deref() == Some(first_nonce.as_str())
                {
                    arrived = Some((event.id, Instant::now()));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let what = if posted.is_none() { "the POST got no answer" } else { "the event did not arrive on the stream" };
                return Err(fail(Reason::Timeout, format!("{what} within {:?}", target.timeout)));
            }
        }
    }
    let (first_id, (frame_id, at)) = match (posted, arrived) {
        (Some(posted), Some(arrived)) => (posted, arrived),
        _ => return Err(fail(Reason::Protocol, "probe state machine ended early")),
    };
    if frame_id != first_id {
        return Err(fail(
            Reason::Protocol,
            format!("the POST answered id {first_id} but the frame carried {frame_id}"),
        ));
    }
    let round_trip = at.saturating_duration_since(started);

    // 3. Resume: the stream is gone while the second event is appended; reopening after the first event must
    //    deliver the second, with no gap and nothing already seen.
    drop(stream);
    let second_nonce = nonce()?;
    let second_id = bounded(target.timeout, "the second POST got no answer", publish(target, &second_nonce)).await?;
    let mut resumed = SseStream::open(target, Some(first_id)).await?;
    let check = async {
        loop {
            let event = match resumed.next_event().await? {
                Probed::Gap(gap) => {
                    return Err(fail(
                        Reason::Resume,
                        format!(
                            "resuming after {first_id} got a gap frame (requested {}, resumed from {}): retention \
                             trimmed the probe story",
                            gap.requested, gap.resumed_from
                        ),
                    ));
                }
                Probed::Event(event) => event,
            };
            let id = event.id;
            if id == second_id {
                if nonce_of(&event).as_deref() != Some(second_nonce.as_str()) {
                    return Err(fail(Reason::Protocol, format!("event {id} does not carry the probe's nonce")));
                }
                return Ok(());
            }
            // Another writer on the probe story may append between our two events; those are fine. Anything at
            // or before the resume point (a replay) or after the second event (a loss) is not an exact resume.
            if id <= first_id {
                return Err(fail(Reason::Resume, format!("resuming after {first_id} replayed {id}")));
            }
            if id > second_id {
                return Err(fail(Reason::Resume, format!("resuming after {first_id} skipped {second_id} (got {id})")));
            }
        }
    };
    match tokio::time::timeout(target.timeout, check).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(fail(
                Reason::Resume,
                format!("resuming after {first_id} did not deliver {second_id} within {:?}", target.timeout),
            ));
        }
    }
    Ok(Success { round_trip })
}

async fn bounded<T>(limit: Duration, what: &str, step: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or_else(|_| Err(fail(Reason::Timeout, format!("{what} within {limit:?}"))))
}

/// A unique nonce per event: 16 random bytes, hex.
fn nonce() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| fail(Reason::Protocol, format!("no OS randomness for a nonce: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// POSTs one probe event; returns the id the service assigned.
async fn publish(target: &Target, nonce: &str) -> Result<EventId, Failure> {
    let sent_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let event_type = EventType::parse(PROBE_EVENT_TYPE).map_err(|e| fail(Reason::Protocol, e.to_string()))?;
    let key = IdempotencyKey::parse(&format!("probe-{nonce}")).map_err(|e| fail(Reason::Protocol, e.to_string()))?;
    let data = serde_json::json!({ "nonce": nonce, "sent_at_ms": sent_at_ms });
    let event = Event::new(event_type, data).idempotency_key(key);
    match target.client.publish(&target.story, &event).await {
        Ok(receipt) if receipt.replayed => {
            Err(fail(Reason::Protocol, "POST answered 200 (an idempotent replay) for a fresh Idempotency-Key"))
        }
        Ok(receipt) => Ok(receipt.id),
        Err(e) => Err(failure("POST", Reason::Publish, &e)),
    }
}

/// The failure for a client error: refused tokens are `auth`, other refusals `refused`, no answer `connect` or
/// `timeout`, an answer off the contract `protocol`. Messages never carry the URL (it may carry a token).
fn failure(what: &str, refused: Reason, e: &Error) -> Failure {
    match e {
        Error::Unauthenticated(p) | Error::Forbidden(p) | Error::IpDenied(p) => {
            fail(Reason::Auth, format!("{what} answered {}: {}: {}", p.status, p.title, p.detail))
        }
        Error::TimedOut(after) => fail(Reason::Timeout, format!("{what} timed out after {after:?}")),
        Error::Tls(e) => fail(Reason::Connect, format!("{what}: TLS: {}", error_chain(e))),
        Error::Network(e) if e.is_connect() => {
            fail(Reason::Connect, format!("{what}: could not connect: {}", error_chain(e)))
        }
        Error::Network(e) => fail(Reason::Connect, format!("{what} failed: {}", error_chain(e))),
        Error::Decode(_) => fail(Reason::Protocol, format!("{what}: {e}")),
        other => match (other.status(), other.problem()) {
            (_, Some(p)) => fail(refused, format!("{what} answered {}: {}: {}", p.status, p.title, p.detail)),
            (Some(status), None) => fail(refused, format!("{what} answered {status}")),
            (None, None) => fail(refused, format!("{what}: {other}")),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The nonce inside the envelope's `data`, if it is a probe event.
fn nonce_of(event: &Envelope) -> Option<String> {
    event.data["nonce"].as_str().map(str::to_owned)
}

/// What the probe reads off a stream: story events and gaps.
enum Probed {
    Event(Envelope),
    Gap(storyline_client::Gap),
}

/// One open stream (no resume, no retry: the probe checks the server's resume itself).
struct SseStream {
    connection: Connection,
}

impl SseStream {
    /// Opens the stream (resuming after `last_event_id` if given) and checks the answer's head.
    async fn open(target: &Target, last_event_id: Option<EventId>) -> Result<Self, Failure> {
        let opened = bounded(target.timeout, "the stream open got no answer", async {
            target
                .client
                .open_stream(&target.story, last_event_id)
                .await
                .map_err(|e| failure("GET stream", Reason::Connect, &e))
        })
        .await?;
        Ok(Self { connection: opened })
    }

    /// The next event or gap (skipping `retry:` frames; heartbeats are no frames). Unbounded: callers bound it.
    async fn next_event(&mut self) -> Result<Probed, Failure> {
        loop {
            match self.connection.next().await {
                Ok(Some(StreamFrame::Event(event))) => return Ok(Probed::Event(event)),
                Ok(Some(StreamFrame::Gap(gap))) => return Ok(Probed::Gap(gap)),
                Ok(Some(StreamFrame::Retry(_))) => {}
                Ok(Some(StreamFrame::TokenExpired { .. })) => {
                    return Err(fail(Reason::Auth, "the stream ended with token-expired: mint a longer-lived token"));
                }
                Ok(Some(StreamFrame::TokenRevoked { .. })) => {
                    return Err(fail(
                        Reason::Auth,
                        "the stream ended with token-revoked: the probe's token was revoked",
                    ));
                }
                Ok(None) => return Err(fail(Reason::Protocol, "the server ended the stream")),
                Err(e) => return Err(failure("reading the stream", Reason::Protocol, &e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_is_read_from_the_envelope_data() {
        let envelope = |data: &str| -> Envelope {
            serde_json::from_str(&format!(
                r#"{{"id":"1-0","story":"probe:s","type":"probe","data":{data},"author":"p","ts":1}}"#
            ))
            .unwrap()
        };
        assert_eq!(nonce_of(&envelope(r#"{"nonce":"abc"}"#)).as_deref(), Some("abc"));
        assert_eq!(nonce_of(&envelope(r#"{"text":"x"}"#)), None);
        assert_eq!(nonce_of(&envelope("\"nonce\"")), None);
    }

    #[test]
    fn refusals_map_to_their_reasons() {
        let problem = |status: u16, slug: &str| storyline_client::Problem {
            problem_type: format!("urn:storyline:problem:{slug}"),
            title: "T".into(),
            status,
            detail: "d".into(),
            retry_after: None,
        };
        let cases = [
            (Error::Unauthenticated(problem(401, "unauthenticated")), Reason::Auth),
            (Error::Forbidden(problem(403, "forbidden")), Reason::Auth),
            (Error::Draining(problem(503, "draining")), Reason::Publish),
            (Error::TimedOut(Duration::from_secs(1)), Reason::Timeout),
            (Error::Decode("x".into()), Reason::Protocol),
        ];
        for (error, reason) in cases {
            assert_eq!(failure("POST", Reason::Publish, &error).reason, reason, "{error:?}");
        }
    }

    #[test]
    fn reasons_are_a_small_fixed_set_of_label_values() {
        let names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["connect", "auth", "publish", "timeout", "resume", "protocol"]);
    }
}
