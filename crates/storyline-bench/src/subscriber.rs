//! Subscriber streams: one task per stream on a raw TCP socket bound to a rotating loopback source address.
//!
//! Cost model (the generator shares the CPU with the server under test): per stream, one socket, one 4 KiB
//! read buffer, an SSE line buffer, and a bitset of the seqs seen (one bit per event of its story). Per socket
//! read, one clock read and at most one lock of a latency shard. Connects are bounded by a semaphore
//! (`--connect-concurrency`) and each by `--connect-timeout`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{
    config::Plan,
    http::{BodyDecoder, Head, HttpError, Progress, get_request, parse_head},
    sse::{SseError, SseParser, extract_marks},
    stats::{LatencyShards, PublishTally, Seen, SeqSet, StreamResult, SubscriberResult},
    system::now_us,
    template::Values,
};

const READ_BUFFER_BYTES: usize = 4096;
/// Latency shards per process: enough that stream tasks on a few threads rarely meet on one lock.
const LATENCY_SHARDS: usize = 16;

/// How the connect phase went in one process (or, added up, in all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub wanted: u64,
    pub open: u64,
    pub failed: u64,
    pub secs: f64,
}

impl ConnectSummary {
    pub fn add(&mut self, other: &ConnectSummary) {
        self.wanted += other.wanted;
        self.open += other.open;
        self.failed += other.failed;
        self.secs = self.secs.max(other.secs);
    }
}

/// One stream to open.
#[derive(Debug, Clone)]
struct StreamSpec {
    index: u64,
    story: usize,
    source: IpAddr,
    request: Vec<u8>,
}

struct Context {
    addr: SocketAddr,
    connect_permits: Semaphore,
    connect_timeout: Duration,
    seq_limit: u64,
    shards: LatencyShards,
    opened: mpsc::UnboundedSender<bool>,
    stop: watch::Receiver<bool>,
}

/// The streams of one process.
#[derive(Debug)]
pub struct SubscriberSet {
    tasks: JoinSet<StreamResult>,
    context: ContextHandle,
    stop: watch::Sender<bool>,
    opened: mpsc::UnboundedReceiver<bool>,
    wanted: u64,
    started: Instant,
    stories: usize,
}

/// Keeps the shared context reachable for the final histogram merge.
struct ContextHandle(Arc<Context>);

impl std::fmt::Debug for ContextHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("addr", &self.0.addr).finish_non_exhaustive()
    }
}

impl SubscriberSet {
    /// Starts opening the streams with the given global indices (story = index mod stories). Must be called
    /// inside a tokio runtime.
    pub fn start(plan: &Plan, indices: impl Iterator<Item = u64>, connect_concurrency: usize) -> SubscriberSet {
        let (opened_tx, opened_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let context = Arc::new(Context {
            addr: plan.stream_url.addr,
            connect_permits: Semaphore::new(connect_concurrency.max(1)),
            connect_timeout: Duration::from_secs_f64(plan.config.connect_timeout_secs),
            seq_limit: plan.seq_limit(),
            shards: LatencyShards::new(LATENCY_SHARDS),
            opened: opened_tx,
            stop: stop_rx,
        });
        let stories = plan.config.stories;
        let mut tasks = JoinSet::new();
        let mut wanted = 0;
        for (position, index) in indices.enumerate() {
            let story = usize::try_from(index % stories as u64).unwrap_or(0);
            let name = plan.story_name(story);
            let values = Values { story: &name, token: &plan.config.token, index, ..Values::default() };
            let spec = StreamSpec {
                index,
                story,
                source: plan.source_ips[position % plan.source_ips.len()],
                request: get_request(&plan.stream_url, &plan.stream_headers, &values),
            };
            tasks.spawn(run_stream(Arc::clone(&context), spec));
            wanted += 1;
        }
        SubscriberSet {
            tasks,
            context: ContextHandle(context),
            stop: stop_tx,
            opened: opened_rx,
            wanted,
            started: Instant::now(),
            stories,
        }
    }

    /// Waits until every stream has opened or failed to (each is bounded by the connect timeout).
    pub async fn connected(&mut self) -> ConnectSummary {
        let mut summary = ConnectSummary { wanted: self.wanted, ..ConnectSummary::default() };
        for _ in 0..self.wanted {
            match self.opened.recv().await {
                Some(true) => summary.open += 1,
                Some(false) => summary.failed += 1,
                // Every task has ended (they hold the senders through the context): nothing more will come.
                None => break,
            }
        }
        summary.secs = self.started.elapsed().as_secs_f64();
        summary
    }

    /// Closes every stream and accounts for what each saw.
    pub async fn finish(mut self, tally: &PublishTally) -> SubscriberResult {
        let _ = self.stop.send(true);
        let mut streams = Vec::with_capacity(usize::try_from(self.wanted).unwrap_or(0));
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(stream) => streams.push(stream),
                Err(e) => {
                    streams.push(StreamResult { failure: Some(format!("task failed: {e}")), ..Default::default() })
                }
            }
        }
        let mut result = SubscriberResult::empty(self.stories);
        result.add_streams(&streams, tally);
        result.latency_us = self.context.0.shards.merged();
        result
    }
}

/// What reading a stream's body can fail with: its HTTP framing or its SSE (the soak readers' too).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("{0}")]
    Sse(#[from] SseError),
}

async fn run_stream(context: Arc<Context>, spec: StreamSpec) -> StreamResult {
    let mut result = StreamResult { story: spec.story, seen: SeqSet::new(context.seq_limit), ..Default::default() };
    let opened = {
        let Ok(_permit) = context.connect_permits.acquire().await else {
            result.failure = Some("connect pool closed".into());
            let _ = context.opened.send(false);
            return result;
        };
        tokio::time::timeout(context.connect_timeout, open(context.addr, spec.source, &spec.request)).await
    };
    let (mut socket, head, leftover) = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(reason)) => {
            result.failure = Some(reason.to_string());
            let _ = context.opened.send(false);
            return result;
        }
        Err(_) => {
            result.failure = Some("connect timeout".into());
            let _ = context.opened.send(false);
            return result;
        }
    };
    result.opened = true;
    let _ = context.opened.send(true);

    let mut decoder = BodyDecoder::new(&head);
    let mut parser = SseParser::new();
    let mut latencies = Vec::new();
    let shard = usize::try_from(spec.index).unwrap_or(0);
    let mut stop = context.stop.clone();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut pending = leftover;
    loop {
        if !pending.is_empty() {
            let now = now_us();
            let progress = consume(&mut decoder, &mut parser, &pending, now, &mut result, &mut latencies);
            context.shards.record(shard, &latencies);
            latencies.clear();
            pending.clear();
            match progress {
                Ok(Progress::More) => {}
                Ok(Progress::Ended) => {
                    result.failure = Some("stream ended by server".into());
                    break;
                }
                Err(e) => {
                    result.failure = Some(format!("bad stream: {e}"));
                    break;
                }
            }
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => {
                result.survived = true;
                break;
            }
            read = socket.read(&mut buffer) => match read {
                Ok(0) => {
                    result.failure = Some("closed by server".into());
                    break;
                }
                Ok(n) => pending.extend_from_slice(&buffer[..n]),
                Err(e) => {
                    result.failure = Some(format!("read: {e}"));
                    break;
                }
            },
        }
    }
    result
}

/// Decodes body bytes and accounts for every benchmark event in them, all received at `now_us`.
fn consume(
    decoder: &mut BodyDecoder,
    parser: &mut SseParser,
    input: &[u8],
    now_us: u64,
    result: &mut StreamResult,
    latencies: &mut Vec<u64>,
) -> Result<Progress, StreamError> {
    decoder.decode::<StreamError>(input, |body| {
        parser
            .feed(body, |data| {
                let Some(marks) = extract_marks(data) else { return };
                result.delivered += 1;
                match result.seen.insert(marks.seq) {
                    Seen::New => {}
                    Seen::Duplicate => result.duplicated += 1,
                    Seen::OutOfRange => result.out_of_range += 1,
                }
                latencies.push(now_us.saturating_sub(marks.sent_us));
            })
            .map_err(StreamError::from)
    })
}

/// Why a stream did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The server answered, but not 200; its head (status, `Retry-After`).
    Refused(Head),
    /// No answer: connect, write or read failed, or the answer was not HTTP.
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(head) => write!(f, "status {}", head.status),
            OpenError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// Connects from `source`, sends `request` and reads the response head; a non-200 answer is
/// [`OpenError::Refused`]. Returns the socket, the head and any body bytes read with it.
pub async fn open(addr: SocketAddr, source: IpAddr, request: &[u8]) -> Result<(TcpStream, Head, Vec<u8>), OpenError> {
    let failed = OpenError::Failed;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| failed(format!("socket: {e}")))?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| failed(format!("bind {source}: {e}")))?;
    let mut stream = socket.connect(addr).await.map_err(|e| failed(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(request).await.map_err(|e| failed(format!("write: {e}")))?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| failed(format!("read head: {e}")))?;
        if n == 0 {
            return Err(failed("closed before the response head".into()));
        }
        buffer.extend_from_slice(&chunk[..n]);
        match parse_head(&buffer) {
            Ok(None) => continue,
            Ok(Some(head)) if head.status == 200 => {
                let leftover = buffer.split_off(head.len);
                return Ok((stream, head, leftover));
            }
            Ok(Some(head)) => return Err(OpenError::Refused(head)),
            Err(e) => return Err(failed(format!("bad response: {e}"))),
        }
    }
}
