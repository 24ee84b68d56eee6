//! Soak readers: each holds one stream of its story on a raw socket (the benchmark's HTTP and SSE code), and
//! reconnects with `Last-Event-ID` like a browser's `EventSource` would, for three planned reasons:
//!
//! - its own timer (every `--reconnect-secs`, drawn from 0.5x to 1.5x): the connection is simply dropped;
//! - a `token-expired` frame (the server closes right after): a fresh token is minted first;
//! - a `retry:` frame after the first one (the server's drain hint; it closes soon after).
//!
//! A reader keeps its token across reconnects until the server says it expired (or it has under
//! [`TOKEN_MARGIN_SECS`] left), so short token lifetimes exercise the expiry path regularly.
//!
//! Any other end is unplanned and counted: the server closing without one of those frames (which is also what a
//! slow-consumer cut looks like: the verdict matches those against the server's own count), a read error, a
//! refused or failed open, a stall (nothing at all, not even a heartbeat, for `--idle-timeout-secs`), a `gap`
//! frame (events lost to retention), or a malformed frame.
//!
//! Every story event's id must be after the previous one: after a resume, after the resume point. Anything else is
//! a duplicate. Ids are kept (16 bytes each) for the final comparison with the log.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncReadExt as _,
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{EventId, Minter, SoakConfig, Target, say};
use crate::{
    http::{BodyDecoder, Progress, get_request_with},
    sse::{Frame, SseParser},
    subscriber::{OpenError, StreamError, open},
    system::now_us,
};

/// A token with less than this left is replaced before a reconnect (the server would refuse it soon).
pub const TOKEN_MARGIN_SECS: u64 = 5;
/// How many error texts a reader keeps (the counters count them all).
const MAX_ERRORS_KEPT: usize = 8;
const READ_BUFFER_BYTES: usize = 8192;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial connects are spread at this interval, under the server's default per-IP stream-open rate (50/s).
const CONNECT_SPACING: Duration = Duration::from_millis(25);

/// What one reader saw over the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReaderOutcome {
    pub story: usize,
    pub reader: usize,
    /// The ids of the story events received, in order, duplicates left out.
    #[serde(skip)]
    pub received: Vec<EventId>,
    pub delivered: u64,
    /// Story events at or before the last id already received (after a resume: at or before the resume point).
    pub duplicates: u64,
    pub connects: u64,
    pub planned_reconnects: u64,
    pub token_expired: u64,
    pub drains: u64,
    /// The server ended the stream without a token-expired frame or a drain hint.
    pub unexplained_closes: u64,
    pub read_errors: u64,
    pub stalls: u64,
    pub gaps: u64,
    /// Opens answered with something other than 200.
    pub refused: u64,
    /// Opens that got no answer at all.
    pub open_failures: u64,
    pub protocol_errors: u64,
    pub errors: Vec<String>,
}

impl ReaderOutcome {
    /// Stream ends and failures that no planned cause explains, slow-consumer cuts included (see the verdict).
    pub fn unplanned(&self) -> u64 {
        self.unexplained_closes
            + self.read_errors
            + self.stalls
            + self.gaps
            + self.refused
            + self.open_failures
            + self.protocol_errors
    }

    fn error(&mut self, text: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(text);
        }
    }
}

/// How the first opens went.
#[derive(Debug, Clone, Default)]
pub struct Connected {
    pub wanted: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

/// Every reader of the run.
#[derive(Debug)]
pub struct ReaderSet {
    tasks: JoinSet<ReaderOutcome>,
    /// Per reader: its story and the last id it received.
    heads: Vec<(usize, watch::Receiver<Option<EventId>>)>,
    first_opens: mpsc::UnboundedReceiver<Result<(), String>>,
    wanted: usize,
}

struct Spec {
    story: usize,
    reader: usize,
    sub: String,
    path: String,
    target: Target,
    minter: Minter,
    reconnect_secs: f64,
    idle_timeout: Duration,
    start_delay: Duration,
}

impl ReaderSet {
    /// Starts `per_story` readers on every story. Must be called inside a tokio runtime.
    pub fn start(
        target: &Target,
        stories: &[String],
        per_story: usize,
        minter: &Minter,
        config: &SoakConfig,
        stop: watch::Receiver<bool>,
    ) -> ReaderSet {
        let (opened_tx, opened_rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let mut heads = Vec::new();
        for reader in 0..per_story {
            for (story, name) in stories.iter().enumerate() {
                let index = heads.len();
                let spec = Spec {
                    story,
                    reader,
                    sub: format!("soak-reader-{story}-{reader}"),
                    path: format!("/v1/stories/{name}/stream"),
                    target: target.clone(),
                    minter: minter.clone(),
                    reconnect_secs: config.reconnect_secs,
                    idle_timeout: Duration::from_secs_f64(config.idle_timeout_secs),
                    start_delay: CONNECT_SPACING * u32::try_from(index).unwrap_or(u32::MAX),
                };
                let (head_tx, head_rx) = watch::channel(None);
                heads.push((story, head_rx));
                tasks.spawn(run_reader(spec, head_tx, opened_tx.clone(), stop.clone()));
            }
        }
        let wanted = heads.len();
        ReaderSet { tasks, heads, first_opens: opened_rx, wanted }
    }

    /// Waits for every reader's first open (each bounded by the connect timeout and retries nothing).
    pub async fn connected(&mut self) -> Connected {
        let mut summary = Connected { wanted: self.wanted, ..Connected::default() };
        for _ in 0..self.wanted {
            match self.first_opens.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    summary.failed += 1;
                    summary.first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        summary
    }

    /// Waits until every reader has received its story's last event (`heads[story]`), at most `limit`.
    /// Returns whether they all did.
    pub async fn wait_caught_up(&mut self, heads: &[Option<EventId>], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let behind = self
                .heads
                .iter()
                .filter(|(story, last)| heads.get(*story).copied().flatten().is_some_and(|h| *last.borrow() < Some(h)))
                .count();
            if behind == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                say(&format!("soak-readers: {behind} readers did not catch up with the log within {limit:?}"));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every reader (the caller has sent the stop signal) and collects what each saw, in reader order.
    pub async fn finish(mut self) -> Vec<ReaderOutcome> {
        let mut outcomes = Vec::with_capacity(self.wanted);
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => outcomes.push(ReaderOutcome {
                    protocol_errors: 1,
                    errors: vec![format!("reader task failed: {e}")],
                    ..ReaderOutcome::default()
                }),
            }
        }
        outcomes.sort_by_key(|o| (o.story, o.reader));
        outcomes
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Stop,
    Planned,
    /// The server closed it (EOF, or the last chunk).
    ServerClosed,
    Stalled,
    ReadError,
    Malformed,
}

/// Per-connection frame state.
#[derive(Debug, Default)]
struct Connection {
    frames: u64,
    token_expired: bool,
    drain_hint: bool,
}

async fn run_reader(
    spec: Spec,
    head: watch::Sender<Option<EventId>>,
    first_open: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> ReaderOutcome {
    let mut outcome = ReaderOutcome { story: spec.story, reader: spec.reader, ..ReaderOutcome::default() };
    let mut first_open = Some(first_open);
    let mut token: Option<(String, u64)> = None;
    let mut last: Option<EventId> = None;
    tokio::time::sleep(spec.start_delay).await;
    while !*stop.borrow() {
        let now_secs = now_us() / 1_000_000;
        let current = match token.take() {
            Some((t, exp)) if exp > now_secs + TOKEN_MARGIN_SECS => (t, exp),
            _ => match spec.minter.mint(&spec.sub) {
                Ok(minted) => minted,
                Err(e) => {
                    outcome.protocol_errors += 1;
                    outcome.error(format!("{e:#}"));
                    if let Some(tx) = first_open.take() {
                        let _ = tx.send(Err(format!("{e:#}")));
                    }
                    break;
                }
            },
        };
        // First open: from the oldest retained event (each run's stories start empty); then after the last id.
        let resume = last.map_or_else(|| "0".to_owned(), |id| id.to_string());
        let authorization = format!("Bearer {}", current.0);
        let request = get_request_with(
            &spec.target.authority,
            &spec.path,
            &[("Authorization", &authorization), ("Last-Event-ID", &resume)],
        );
        token = Some(current);
        let opened =
            tokio::time::timeout(CONNECT_TIMEOUT, open(spec.target.addr, IpAddr::V4(Ipv4Addr::LOCALHOST), &request))
                .await;
        let (mut socket, http_head, leftover) = match opened {
            Ok(Ok(open)) => open,
            Ok(Err(e)) => {
                let wait = match &e {
                    OpenError::Refused(h) => {
                        outcome.refused += 1;
                        if h.status == 401 {
                            token = None;
                        }
                        Duration::from_secs(h.retry_after_secs.unwrap_or(1).clamp(1, 30))
                    }
                    OpenError::Failed(_) => {
                        outcome.open_failures += 1;
                        Duration::from_secs(1)
                    }
                };
                outcome.error(format!("open: {e}"));
                if let Some(tx) = first_open.take() {
                    let _ = tx.send(Err(e.to_string()));
                }
                if tokio::time::timeout(wait, stop.wait_for(|s| *s)).await.is_ok() {
                    break;
                }
                continue;
            }
            Err(_) => {
                outcome.open_failures += 1;
                outcome.error("open: timed out".into());
                if let Some(tx) = first_open.take() {
                    let _ = tx.send(Err("open timed out".into()));
                }
                continue;
            }
        };
        outcome.connects += 1;
        if let Some(tx) = first_open.take() {
            let _ = tx.send(Ok(()));
        }

        let planned_at = (spec.reconnect_secs > 0.0)
            .then(|| Instant::now() + Duration::from_secs_f64(spec.reconnect_secs * (0.5 + fastrand::f64())));
        let mut connection = Connection::default();
        let mut decoder = BodyDecoder::new(&http_head);
        let mut parser = SseParser::new();
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut pending = leftover;
        let end = loop {
            if !pending.is_empty() {
                let progress = consume(&mut decoder, &mut parser, &pending, &mut connection, &mut last, &mut outcome);
                pending.clear();
                let _ = head.send(last);
                match progress {
                    Ok(Progress::More) => {}
                    Ok(Progress::Ended) => break End::ServerClosed,
                    Err(e) => {
                        outcome.error(format!("bad stream: {e}"));
                        break End::Malformed;
                    }
                }
            }
            let planned = async {
                match planned_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break End::Stop,
                () = planned => break End::Planned,
                read = tokio::time::timeout(spec.idle_timeout, socket.read(&mut buffer)) => match read {
                    Err(_) => break End::Stalled,
                    Ok(Ok(0)) => break End::ServerClosed,
                    Ok(Ok(n)) => pending.extend_from_slice(&buffer[..n]),
                    Ok(Err(e)) => {
                        outcome.error(format!("read: {e}"));
                        break End::ReadError;
                    }
                },
            }
        };
        drop(socket);
        match end {
            End::Stop => break,
            End::Planned => outcome.planned_reconnects += 1,
            End::ServerClosed if connection.token_expired => {
                outcome.token_expired += 1;
                token = None;
            }
            End::ServerClosed if connection.drain_hint => outcome.drains += 1,
            End::ServerClosed => {
                outcome.unexplained_closes += 1;
                outcome
                    .error(format!("stream ended by the server without a reason after {} frames", connection.frames));
            }
            End::Stalled => {
                outcome.stalls += 1;
                outcome.error(format!("nothing received for {:?}", spec.idle_timeout));
            }
            End::ReadError => outcome.read_errors += 1,
            End::Malformed => outcome.protocol_errors += 1,
        }
    }
    if let Some(tx) = first_open.take() {
        let _ = tx.send(Err("stopped before the first open".into()));
    }
    outcome
}

/// Decodes body bytes and handles every frame in them.
fn consume(
    decoder: &mut BodyDecoder,
    parser: &mut SseParser,
    input: &[u8],
    connection: &mut Connection,
    last: &mut Option<EventId>,
    outcome: &mut ReaderOutcome,
) -> Result<Progress, StreamError> {
    decoder.decode::<StreamError>(input, |body| {
        parser.feed_frames(body, |frame| handle_frame(frame, connection, last, outcome)).map_err(StreamError::from)
    })
}

/// One frame: a reconnection hint, a gap or token-expired notice, or a story event.
fn handle_frame(
    frame: Frame<'_>,
    connection: &mut Connection,
    last: &mut Option<EventId>,
    outcome: &mut ReaderOutcome,
) {
    connection.frames += 1;
    let Some(_data) = frame.data else {
        // A frame with only `retry:`: the first one opens every stream; a later one announces the drain.
        if connection.frames > 1 {
            connection.drain_hint = true;
        }
        return;
    };
    match frame.event {
        Some(b"token-expired") => {
            connection.token_expired = true;
            return;
        }
        Some(b"gap") => {
            outcome.gaps += 1;
            outcome.error(format!("gap frame after {}", last.map(|l| l.to_string()).unwrap_or_default()));
            return;
        }
        _ => {}
    }
    let id = frame.id.and_then(|id| std::str::from_utf8(id).ok()).map(str::parse::<EventId>);
    let id = match id {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            outcome.protocol_errors += 1;
            outcome.error(e);
            return;
        }
        None => {
            outcome.protocol_errors += 1;
            outcome.error("a story event without an id".into());
            return;
        }
    };
    outcome.delivered += 1;
    if last.is_some_and(|l| id <= l) {
        outcome.duplicates += 1;
        return;
    }
    outcome.received.push(id);
    *last = Some(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> (ReaderOutcome, Connection, Option<EventId>) {
        let mut parser = SseParser::new();
        let mut connection = Connection::default();
        let mut last = None;
        let mut outcome = ReaderOutcome::default();
        parser.feed_frames(input, |f| handle_frame(f, &mut connection, &mut last, &mut outcome)).unwrap();
        (outcome, connection, last)
    }

    #[test]
    fn story_events_are_kept_in_order_and_repeats_are_duplicates() {
        let input = b"retry: 2000\n\nid: 1-0\nevent: soak\ndata: {}\n\nid: 2-0\nevent: soak\ndata: {}\n\n\
                      id: 2-0\nevent: soak\ndata: {}\n\nid: 1-5\nevent: soak\ndata: {}\n\nid: 3-1\ndata: {}\n\n";
        let (outcome, connection, last) = frames(input);
        let ids: Vec<String> = outcome.received.iter().map(ToString::to_string).collect();
        assert_eq!(ids, ["1-0", "2-0", "3-1"]);
        assert_eq!((outcome.delivered, outcome.duplicates), (5, 2));
        assert!(!connection.drain_hint, "the first retry frame is the stream's opening");
        assert_eq!(last.map(|l| l.to_string()).as_deref(), Some("3-1"));
        assert_eq!(outcome.unplanned(), 0);
    }

    #[test]
    fn a_later_retry_frame_is_the_drain_hint_and_token_expired_is_noticed() {
        let (_, connection, _) = frames(b"retry: 2000\n\nid: 1-0\ndata: {}\n\nretry: 700\n\n");
        assert!(connection.drain_hint);
        let (outcome, connection, _) = frames(b"retry: 2000\n\nevent: token-expired\ndata: {\"expired_at\":1}\n\n");
        assert!(connection.token_expired);
        assert_eq!(outcome.delivered, 0, "not a story event");
    }

    #[test]
    fn gaps_and_events_without_ids_are_unplanned() {
        let (outcome, _, _) = frames(
            b"event: gap\ndata: {\"requested\":\"1-0\",\"resumed_from\":\"5-0\"}\n\ndata: {}\n\nid: x\ndata: {}\n\n",
        );
        assert_eq!((outcome.gaps, outcome.protocol_errors), (1, 2));
        assert_eq!(outcome.unplanned(), 3);
    }
}
