//! Reading a story's stream: [`Connection`] is one response read frame by frame, exactly as sent (the probe
//! uses it to check the server's resume itself); [`Subscription`] is the stream an application wants, which
//! outlives connections.
//!
//! A subscription keeps the id of the last event it delivered and reopens after anything that ends a connection,
//! sending it as `Last-Event-ID`:
//! - `token-expired` frame, or a 401 at open: a new token from the token source, reopen at once;
//! - `token-revoked` frame: the token is refused for good, so the subscription never reopens with it. It asks the
//!   token source once for a different token and reopens with that (a revoked `jti` leaves the principal's other
//!   tokens valid); without a source, or if the source gives the same token back, or if the new token is refused
//!   too (`token-revoked` at open: its `sub` was revoked), it ends with [`Error::TokenRevoked`];
//! - the server ended the stream (a drain, a restart): reopen after the server's `retry:` hint, jittered;
//! - 503/429 at open: after `Retry-After`, jittered; network errors and silence past the idle timeout: capped
//!   exponential backoff with full jitter.
//!
//! An event at or before the last delivered id (a server resuming at least once) is dropped, so the application
//! sees every event once, in order; a `gap` is handed over as its own item. Other refusals (400, 403, a second
//! 401 with a fresh token, 404) and a stream that breaks the protocol end the subscription with that error.
//! Dropping the subscription closes its connection.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream::BoxStream};
use reqwest::header;
use storyline_core::{EventId, GAP_EVENT, StoryId, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT};

use crate::{
    Client,
    error::{Error, Retry},
    event::{Envelope, Gap},
    sse::{Frame, SseParser},
};

/// Event names storyline reserves for frames a newer server may send; this client skips them.
const RESERVED_PREFIX: &str = "storyline.";
/// The reconnect delay before the server's first `retry:` hint (the browser default).
const DEFAULT_RETRY_HINT: Duration = Duration::from_secs(3);

/// One frame of a stream, as the server sent it (heartbeat comments are not frames).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamFrame {
    /// A story event (the frame's `id` is checked against the envelope's).
    Event(Envelope),
    Gap(Gap),
    /// The token expired; the server closes the stream after this frame.
    TokenExpired {
        expired_at: Option<u64>,
    },
    /// The token was revoked (`revoked`: `jti` or `sub`, what the revocation named); the server closes the stream
    /// after this frame and refuses the token from now on.
    TokenRevoked {
        revoked: Option<String>,
    },
    /// A reconnection hint: sent first on every stream, and again just before a draining server ends it.
    Retry(Duration),
}

/// One open stream response, read frame by frame. No resume, no retry: see [`Client::subscribe`] for that.
pub struct Connection {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    frames: VecDeque<Result<StreamFrame, Error>>,
    idle_timeout: Duration,
    /// The token it was opened with (to tell whether a refusal is of the current token).
    token: Option<Arc<str>>,
    version: reqwest::Version,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("buffered_frames", &self.frames.len()).finish_non_exhaustive()
    }
}

impl Connection {
    /// The HTTP version the stream runs over: HTTP/2 over TLS when the server offers it (storyline does, by
    /// ALPN), else HTTP/1.1.
    pub fn http_version(&self) -> reqwest::Version {
        self.version
    }

    /// The next frame; `Ok(None)` when the server ended the stream. Cancel-safe: a chunk is parsed as soon as it
    /// arrives, so dropping this future loses nothing.
    pub async fn next(&mut self) -> Result<Option<StreamFrame>, Error> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return frame.map(Some);
            }
            let chunk = match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
                Err(_) => return Err(Error::TimedOut(self.idle_timeout)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(Error::Network(e.without_url())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let frames = &mut self.frames;
            self.parser
                .feed_frames(&chunk, |frame| {
                    if let Some(frame) = classify(frame) {
                        frames.push_back(frame);
                    }
                })
                .map_err(|e| Error::Decode(e.to_string()))?;
        }
    }
}

/// What a frame is; `None` for frames this client skips (a future `storyline.*` control frame).
fn classify(frame: Frame<'_>) -> Option<Result<StreamFrame, Error>> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let Some(data) = frame.data else {
        return frame.retry.map(|ms| Ok(StreamFrame::Retry(Duration::from_millis(ms))));
    };
    let decode = |what: &str, e: serde_json::Error| Error::Decode(format!("{what} frame data: {e}: {}", text(data)));
    Some(match frame.event {
        Some(name) if name == GAP_EVENT.as_bytes() => {
            serde_json::from_slice(data).map(StreamFrame::Gap).map_err(|e| decode("gap", e))
        }
        Some(name) if name == TOKEN_EXPIRED_EVENT.as_bytes() => {
            #[derive(serde::Deserialize)]
            struct Expired {
                expired_at: Option<u64>,
            }
            serde_json::from_slice::<Expired>(data)
                .map(|e| StreamFrame::TokenExpired { expired_at: e.expired_at })
                .map_err(|e| decode("token-expired", e))
        }
        Some(name) if name == TOKEN_REVOKED_EVENT.as_bytes() => {
            #[derive(serde::Deserialize)]
            struct Revoked {
                revoked: Option<String>,
            }
            serde_json::from_slice::<Revoked>(data)
                .map(|r| StreamFrame::TokenRevoked { revoked: r.revoked })
                .map_err(|e| decode("token-revoked", e))
        }
        Some(name) if name.starts_with(RESERVED_PREFIX.as_bytes()) => return None,
        _ => {
            serde_json::from_slice::<Envelope>(data).map_err(|e| decode("event", e)).and_then(|envelope| {
                match frame.id {
                    Some(id) if id != envelope.id.to_string().as_bytes() => {
                        Err(Error::Decode(format!("frame id {:?} is not its envelope's id {}", text(id), envelope.id)))
                    }
                    _ => Ok(StreamFrame::Event(envelope)),
                }
            })
        }
    })
}

impl Client {
    /// Opens `story`'s stream once (after `last_event_id` if given), with the current token. A non-200 answer is
    /// its [`Error`]; nothing is retried.
    pub async fn open_stream(&self, story: &StoryId, last_event_id: Option<EventId>) -> Result<Connection, Error> {
        let token = self.token().await?;
        self.open_with(story, last_event_id, token).await
    }

    async fn open_with(
        &self,
        story: &StoryId,
        last_event_id: Option<EventId>,
        token: Option<Arc<str>>,
    ) -> Result<Connection, Error> {
        let timeout = self.inner.request_timeout;
        let mut request = self
            .inner
            .http
            .get(self.url(story, "stream"))
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => return Err(Error::TimedOut(timeout)),
            Ok(Err(e)) => return Err(crate::client::transport(e, timeout)),
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            let failed = tokio::time::timeout(timeout, crate::client::read_answer(response, timeout)).await;
            return Err(match failed {
                Err(_) => Error::TimedOut(timeout),
                Ok(Err(e)) => e,
                Ok(Ok(_)) => Error::Decode("a stream open answered neither 200 nor an error".into()),
            });
        }
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(Error::Decode(format!("the stream answered content type {content_type:?}")));
        }
        let version = response.version();
        Ok(Connection {
            version,
            body: response.bytes_stream().boxed(),
            parser: SseParser::new(),
            frames: VecDeque::new(),
            idle_timeout: self.inner.idle_timeout,
            token,
        })
    }

    /// `story`'s events from `options.last_event_id` (or, without one, from now on), across disconnects, token
    /// expiries and server restarts, each once and in order; see the [module docs](crate::stream).
    pub fn subscribe(&self, story: &StoryId, options: SubscribeOptions) -> Subscription {
        let stats = Arc::new(Counters::default());
        let resumer = Resumer {
            client: self.clone(),
            story: story.clone(),
            cursor: options.last_event_id,
            seen_up_to: options.last_event_id,
            connection: None,
            refresh: false,
            stale: None,
            revoked: None,
            failures: 0,
            retry_hint: DEFAULT_RETRY_HINT,
            wait: None,
            done: false,
            stats: Arc::clone(&stats),
        };
        let items = futures::stream::unfold(resumer, |mut resumer| async move {
            let item = resumer.next().await?;
            Some((item, resumer))
        });
        Subscription { items: items.boxed(), stats }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Deliver events after this id; [`EventId::ZERO`]: from the oldest retained; `None`: from now on.
    pub last_event_id: Option<EventId>,
}

/// What a subscription hands over.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(Envelope),
    /// Events were trimmed before they could be delivered; delivery continues from `resumed_from`.
    Gap(Gap),
}

/// A story's events as a [`Stream`]; ends only after an error it cannot recover from (the last item), and
/// closes its connection when dropped.
pub struct Subscription {
    items: BoxStream<'static, Result<Item, Error>>,
    stats: Arc<Counters>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Subscription {
    /// What the subscription did so far.
    pub fn stats(&self) -> SubscriptionStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SubscriptionStats {
            connects: read(&self.stats.connects),
            token_refreshes: read(&self.stats.token_refreshes),
            duplicates_dropped: read(&self.stats.duplicates_dropped),
            refusals: read(&self.stats.refusals),
            failures: read(&self.stats.failures),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Item, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.poll_next_unpin(cx)
    }
}

/// Counts of what a [`Subscription`] went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Streams opened (200).
    pub connects: u64,
    /// Tokens replaced after `token-expired` or a 401.
    pub token_refreshes: u64,
    /// Events at or before the last delivered id, dropped.
    pub duplicates_dropped: u64,
    /// Opens refused with 503 or 429 (and retried).
    pub refusals: u64,
    /// Network errors and silent connections (and retried).
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    token_refreshes: AtomicU64,
    duplicates_dropped: AtomicU64,
    refusals: AtomicU64,
    failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The subscription's state between items.
struct Resumer {
    client: Client,
    story: StoryId,
    /// Sent as `Last-Event-ID` on the next open: the last event delivered (or the caller's starting point).
    cursor: Option<EventId>,
    /// Events at or before this were delivered: a repeat is dropped. Cleared by a gap, after which the server
    /// may resume below it (a story that was reset).
    seen_up_to: Option<EventId>,
    connection: Option<Connection>,
    /// Get a new token before the next open, to replace `stale` (refused with a 401, or `token-expired`).
    refresh: bool,
    stale: Option<Arc<str>>,
    /// `stale` was revoked (a `token-revoked` frame, saying by what): never reopen with it.
    revoked: Option<Option<String>>,
    /// Consecutive failures with no hint, for the backoff.
    failures: u32,
    /// The server's latest `retry:` hint.
    retry_hint: Duration,
    /// A pause before the next open.
    wait: Option<Duration>,
    done: bool,
    stats: Arc<Counters>,
}

impl Resumer {
    async fn next(&mut self) -> Option<Result<Item, Error>> {
        loop {
            if self.done {
                return None;
            }
            let connection = match self.connection.as_mut() {
                Some(connection) => connection,
                None => match self.connect().await {
                    Ok(connection) => self.connection.insert(connection),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
            };
            match connection.next().await {
                Ok(Some(StreamFrame::Event(envelope))) => {
                    self.failures = 0;
                    if self.seen_up_to.is_some_and(|seen| envelope.id <= seen) {
                        bump(&self.stats.duplicates_dropped);
                        continue;
                    }
                    self.cursor = Some(envelope.id);
                    self.seen_up_to = Some(envelope.id);
                    return Some(Ok(Item::Event(envelope)));
                }
                Ok(Some(StreamFrame::Gap(gap))) => {
                    self.failures = 0;
                    self.seen_up_to = None;
                    return Some(Ok(Item::Gap(gap)));
                }
                Ok(Some(StreamFrame::Retry(hint))) => {
                    self.failures = 0;
                    self.retry_hint = hint;
                }
                Ok(Some(StreamFrame::TokenExpired { .. })) => {
                    self.stale = self.connection.take().and_then(|c| c.token);
                    self.refresh = true;
                }
                Ok(Some(StreamFrame::TokenRevoked { revoked })) => {
                    self.stale = self.connection.take().and_then(|c| c.token);
                    self.refresh = true;
                    self.revoked = Some(revoked);
                }
                Ok(None) => {
                    // The server ended it (a drain, a restart): come back after its hint, which it jitters.
                    self.connection = None;
                    self.wait = Some(self.retry_hint);
                }
                Err(e) if e.is_transient() => {
                    self.connection = None;
                    self.failures += 1;
                    bump(&self.stats.failures);
                    self.wait = Some(self.client.inner.retry.backoff(self.failures));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Opens the stream at the cursor, waiting and retrying through transient refusals and failures.
    async fn connect(&mut self) -> Result<Connection, Error> {
        let mut refused_once = false;
        loop {
            if let Some(wait) = self.wait.take() {
                tokio::time::sleep(wait).await;
            }
            let refreshed = match (std::mem::take(&mut self.refresh), self.stale.take()) {
                (true, Some(stale)) => self.client.refresh(Some(&stale)).await?,
                _ => None,
            };
            if let Some(revoked) = self.revoked.take()
                && refreshed.is_none()
            {
                // No other token to try: the revoked one is never sent again.
                return Err(Error::TokenRevoked(crate::error::Problem {
                    problem_type: format!("{}token-revoked", crate::error::PROBLEM_TYPE_PREFIX),
                    title: "Token revoked".into(),
                    status: 401,
                    detail: format!(
                        "the stream ended with a token-revoked frame (revoked by {}) and the token source has no other token",
                        revoked.as_deref().unwrap_or("?")
                    ),
                    retry_after: None,
                }));
            }
            let token = match refreshed {
                Some(fresh) => {
                    bump(&self.stats.token_refreshes);
                    Some(fresh)
                }
                None => self.client.token().await?,
            };
            let error = match self.client.open_with(&self.story, self.cursor, token.clone()).await {
                Ok(connection) => {
                    bump(&self.stats.connects);
                    return Ok(connection);
                }
                Err(e) => e,
            };
            if matches!(error, Error::Unauthenticated(_) | Error::TokenRevoked(_)) && !refused_once && token.is_some() {
                refused_once = true;
                self.refresh = true;
                self.stale = token;
                continue;
            }
            match error.retry() {
                Retry::No => return Err(error),
                Retry::After(after) => {
                    bump(&self.stats.refusals);
                    self.wait = Some(self.client.inner.retry.after(after));
                }
                Retry::Backoff => {
                    if error.status().is_some() {
                        bump(&self.stats.refusals);
                    } else {
                        bump(&self.stats.failures);
                    }
                    self.failures += 1;
                    self.wait = Some(self.client.inner.retry.backoff(self.failures));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Result<StreamFrame, String>> {
        let mut out = Vec::new();
        SseParser::new().feed_frames(input, |f| out.extend(classify(f).map(|r| r.map_err(|e| e.to_string())))).unwrap();
        out
    }

    #[test]
    fn frames_are_classified_as_the_stream_contract_says() {
        let input = b"retry: 1500\n\n: keep-alive\n\n\
            id: 5-0\nevent: chapter\ndata: {\"id\":\"5-0\",\"story\":\"s\",\"type\":\"chapter\",\"data\":1,\"author\":\"a\",\"ts\":5}\n\n\
            event: gap\ndata: {\"requested\":\"1-0\",\"resumed_from\":\"4-0\"}\n\n\
            event: storyline.future\ndata: {}\n\n\
            event: token-expired\ndata: {\"expired_at\":99}\n\n\
            event: token-revoked\ndata: {\"revoked\":\"sub\"}\n\n";
        let got = frames(input);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], Ok(StreamFrame::Retry(Duration::from_millis(1500))));
        assert!(matches!(&got[1], Ok(StreamFrame::Event(e)) if e.id == EventId::new(5, 0) && e.data == 1));
        assert_eq!(
            got[2],
            Ok(StreamFrame::Gap(Gap { requested: EventId::new(1, 0), resumed_from: EventId::new(4, 0) }))
        );
        assert_eq!(got[3], Ok(StreamFrame::TokenExpired { expired_at: Some(99) }));
        assert_eq!(got[4], Ok(StreamFrame::TokenRevoked { revoked: Some("sub".into()) }));
    }

    #[test]
    fn frames_that_break_the_contract_are_decode_errors() {
        for input in [
            &b"id: 6-0\ndata: {\"id\":\"5-0\",\"story\":\"s\",\"type\":\"c\",\"data\":1,\"author\":\"a\",\"ts\":5}\n\n"
                [..],
            b"id: 5-0\ndata: not json\n\n",
            b"event: gap\ndata: {}\n\n",
        ] {
            let got = frames(input);
            assert!(matches!(got.as_slice(), [Err(_)]), "{}: {got:?}", String::from_utf8_lossy(input));
        }
    }
}
