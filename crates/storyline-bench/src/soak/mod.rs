//! The reader side of the soak test (`storyline-bench soak-readers`; `scripts/soak.sh` runs it next to k6).
//!
//! k6 drives the publishers (`k6/soak.js`: agents POSTing with an `Idempotency-Key` at a constant arrival rate,
//! each acknowledged event written to an ack log). k6 has no SSE client (its `http` module buffers whole
//! responses), so the readers are here, on the same raw-socket HTTP and SSE code as the benchmark:
//!
//! - [`reader`]: N readers per story hold streams, reconnect on a timer with `Last-Event-ID` (planned), on
//!   `token-expired` (with a fresh token) and after a drain hint, and check that ids only go forward: anything at
//!   or before the resume point is a duplicate. A stream the server ends any other way is unplanned.
//! - [`follower`]: reads each story's log through the history endpoint as it grows (so retention may trim it
//!   behind us), checking that ids only go forward and no idempotency key was stored twice.
//! - [`sampler`]: the server's resident memory, open descriptors, threads and tokio tasks every few seconds.
//! - [`verdict`]: at the end, every acknowledged event must be in the log, every reader must have received
//!   exactly the log, no stream may have ended unplanned, and the resource series may not grow past their bounds
//!   after the warm-up (least-squares slope and growth).
//!
//! Protocol with the script: the readers connect, then write `--ready-file`; the script starts k6; when k6 has
//! finished it sends SIGTERM (or SIGINT). The readers then read the log to its end, wait (bounded) until every
//! reader has caught up with it, close, read the ack log and k6's summary, and write `report.json`. Exit status
//! 0 only if every check passed. Everything is bounded by `--max-secs`.

pub mod follower;
pub mod reader;
pub mod sampler;
pub mod verdict;

use std::{
    fmt,
    io::Write as _,
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    system,
    template::{STREAM_VARS, UrlTemplate},
};

/// A storyline event id, `<ms>-<seq>`: ordered as the log orders events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(text: &str) -> Result<EventId, String> {
        let (ms, seq) = text.split_once('-').ok_or_else(|| format!("event id {text:?} is not <ms>-<seq>"))?;
        let number = |part: &str| part.parse::<u64>().map_err(|_| format!("event id {text:?} is not <ms>-<seq>"));
        Ok(EventId { ms: number(ms)?, seq: number(seq)? })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Bounds on growth after the warm-up; past any of them the soak fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LeakBounds {
    pub rss_slope_kib_per_min: f64,
    pub rss_growth_kib: f64,
    pub fd_growth: f64,
    pub thread_growth: f64,
    pub task_growth: f64,
}

/// What `soak-readers` is told.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub label: String,
    /// `http://host:port` of storyline (loopback only).
    pub url: String,
    pub story_prefix: String,
    pub stories: usize,
    pub readers_per_story: usize,
    /// HS256 secret the readers and the follower mint their (short-lived) tokens with.
    pub jwt_secret: String,
    pub token_ttl_secs: u64,
    /// Mean seconds between a reader's planned reconnects (each draws from 0.5x to 1.5x); 0: never.
    pub reconnect_secs: f64,
    /// A stream that sends nothing (not even a heartbeat) for this long is stalled: counted, and reconnected.
    pub idle_timeout_secs: f64,
    pub follow_interval_ms: u64,
    pub server_pid: Option<u32>,
    pub sample_secs: f64,
    pub warmup_secs: f64,
    pub bounds: LeakBounds,
    /// The ack log k6 writes (JSON lines `{"ack": {"story", "id", "key"}}`), read at the end.
    pub acks: PathBuf,
    /// The summary k6's `handleSummary` writes, read at the end.
    pub k6_summary: Option<PathBuf>,
    pub ready_file: PathBuf,
    pub out_dir: PathBuf,
    pub plot: Option<PathBuf>,
    /// Seconds the readers get, after the stop signal, to catch up with the end of the log.
    pub catch_up_secs: f64,
    /// Upper bound on the whole run, stop signal or not.
    pub max_secs: f64,
}

/// The base URL, checked: `http://`, loopback.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub authority: String,
    pub base: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let parsed = UrlTemplate::parse("--url", url.trim_end_matches('/'), STREAM_VARS)?;
        Ok(Target {
            addr: parsed.addr,
            authority: parsed.authority.clone(),
            base: format!("http://{}", parsed.authority),
        })
    }
}

/// Mints HS256 tokens for the readers and the follower.
#[derive(Clone)]
pub struct Minter {
    key: Arc<jsonwebtoken::EncodingKey>,
    scope: String,
    ttl_secs: u64,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter").field("scope", &self.scope).field("ttl_secs", &self.ttl_secs).finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    scope: &'a str,
    tier: &'static str,
}

impl Minter {
    pub fn new(secret: &str, scope: String, ttl_secs: u64) -> Minter {
        Minter { key: Arc::new(jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())), scope, ttl_secs }
    }

    /// A token for `sub` and when it expires (Unix seconds).
    pub fn mint(&self, sub: &str) -> anyhow::Result<(String, u64)> {
        let now = system::now_us() / 1_000_000;
        let exp = now + self.ttl_secs;
        let claims = Claims { sub, exp, iat: now, scope: &self.scope, tier: "member" };
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.key)
            .context("minting a reader token")?;
        Ok((token, exp))
    }
}

/// Everything the run found, as written to `report.json`.
pub use verdict::SoakReport;

/// Runs the readers, the follower and the sampler until the stop signal, then verifies. Returns the report;
/// `report.ok` says whether every check passed.
pub async fn run(config: SoakConfig) -> anyhow::Result<SoakReport> {
    let target = Target::parse(&config.url)?;
    anyhow::ensure!(config.stories > 0 && config.readers_per_story > 0, "need at least one story and one reader");
    anyhow::ensure!(config.jwt_secret.len() >= 16, "the JWT secret must have at least 16 bytes");
    std::fs::create_dir_all(&config.out_dir).with_context(|| format!("creating {}", config.out_dir.display()))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(config.max_secs);
    let stories: Vec<String> = (0..config.stories).map(|i| format!("{}{i}", config.story_prefix)).collect();
    let minter = Minter::new(&config.jwt_secret, format!("read:{}*", config.story_prefix), config.token_ttl_secs);
    let http = storyline_client::http_client_builder()
        .context("the HTTP client's TLS")?
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .context("building the HTTP client")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = reader::ReaderSet::start(&target, &stories, config.readers_per_story, &minter, &config, stop_rx);
    let follower = follower::Follower::start(
        http.clone(),
        &target,
        &stories,
        minter.clone(),
        Duration::from_millis(config.follow_interval_ms),
    );
    let connected = tokio::time::timeout_at(deadline.into(), readers.connected()).await;
    let opened = connected.context("the readers did not connect before --max-secs")?;
    anyhow::ensure!(
        opened.failed == 0,
        "{} of {} readers could not open their first stream: {}",
        opened.failed,
        opened.wanted,
        opened.first_error.unwrap_or_default()
    );
    let sampler = sampler::Sampler::start(
        http.clone(),
        &target,
        config.server_pid,
        Duration::from_secs_f64(config.sample_secs),
        config.out_dir.join("samples.csv"),
    )?;
    std::fs::write(&config.ready_file, "ready\n")
        .with_context(|| format!("writing {}", config.ready_file.display()))?;
    say(&format!(
        "soak-readers: {} readers on {} stories connected; waiting for the stop signal",
        opened.wanted,
        stories.len()
    ));

    let stopped_by_signal = tokio::select! {
        signal = stop_signal() => { signal?; true }
        () = tokio::time::sleep_until(deadline.into()) => false,
    };
    let load_secs = started.elapsed().as_secs_f64();
    // The resource series cover the load only: what follows (catching up, closing) is not steady state.
    let samples = sampler.stop().await;
    say("soak-readers: stop signal; reading the log to its end and letting the readers catch up");
    let logs = follower.finish().await;
    let heads: Vec<Option<EventId>> = logs.iter().map(follower::StoryLog::last).collect();
    let caught_up = readers.wait_caught_up(&heads, Duration::from_secs_f64(config.catch_up_secs)).await;
    let _ = stop_tx.send(true);
    let outcomes = readers.finish().await;
    let closes = sampler::scrape_close_reasons(&http, &target).await;

    let acks = verdict::read_acks(&config.acks)?;
    let k6 = match &config.k6_summary {
        Some(path) => Some(verdict::read_k6_summary(path)?),
        None => None,
    };
    let report = verdict::judge(verdict::Inputs {
        config: &config,
        stories: &stories,
        logs: &logs,
        outcomes: &outcomes,
        acks: &acks,
        samples: &samples,
        closes,
        k6,
        stopped_by_signal,
        caught_up,
        load_secs,
    });
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let path = config.out_dir.join("report.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    if let Some(plot) = &config.plot {
        let title = format!("{} ({})", config.label, report.date_utc);
        crate::plot::write_soak_plot(plot, &title, &samples, config.warmup_secs)
            .with_context(|| format!("writing {}", plot.display()))?;
    }
    Ok(report)
}

/// SIGTERM or SIGINT.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// A progress line on stderr (stdout carries the summary).
fn say(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_print_and_order_like_the_log() {
        let a: EventId = "1700000000000-0".parse().unwrap();
        let b: EventId = "1700000000000-12".parse().unwrap();
        let c: EventId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c, "ms first, then seq");
        assert_eq!(b.to_string(), "1700000000000-12");
        for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "1 -2"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_are_loopback_http_only() {
        assert_eq!(Target::parse("http://127.0.0.1:8080/").unwrap().base, "http://127.0.0.1:8080");
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("https://127.0.0.1:8080").is_err());
    }

    #[test]
    fn minted_tokens_carry_the_claims() {
        let minter = Minter::new("0123456789abcdef0123456789abcdef", "read:soak-*".into(), 60);
        let (token, exp) = minter.mint("reader-1").unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap().claims;
        assert_eq!(claims["sub"], "reader-1");
        assert_eq!(claims["scope"], "read:soak-*");
        assert_eq!(claims["exp"], exp);
    }
}
