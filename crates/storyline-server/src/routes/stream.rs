//! `GET /v1/stories/{story}/stream`: a story's events as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! Frames: first `retry: <ms>` (jittered per connection), then one frame per event (`id:`, `event:`, `data:`
//! with the one-line JSON envelope) and a `: keep-alive` comment every heartbeat period. Where to start:
//! - no resume id: only events appended after the stream opened (the story's newest id at open time);
//! - `0`: from the oldest retained event;
//! - `<ms>-<seq>`: after that event. Whenever events due to the reader were trimmed by retention before they
//!   could be delivered (an old resume point, or a reader that fell behind), an `event: gap` frame names the
//!   last position and the id delivery resumes from. A resume id newer than anything in the story (a reset
//!   store) also gets a gap frame, then the retained history; so does a resume id of a story that expired
//!   (story TTL) and started afresh (the broker records its forgotten past as trimmed). Never a silent hole.
//!
//! Events come from the fan-out engine (`storyline-hub`): one broker tail per story, frames encoded once and
//! shared; the response body writes those bytes as they are, plus a heartbeat from one process-wide tick.
//! The engine yields the backlog and then live events with no gap or duplicate at the seam. If the broker
//! is unreachable, at open or later, the stream stays open (heartbeats continue) and resumes after the last
//! delivered id once the broker is back: browsers' `EventSource` never retries after a non-200 answer, so the
//! only errors a stream open returns are the client's own (400, 401, 403) and draining (503).
//! At shutdown every stream ends at a frame boundary, at its own random moment in the drain window, after a
//! last jittered `retry:` frame, so that readers reconnect to the other instances spread out, not in one burst.
//! When the token's `exp` passes, the stream ends after an `event: token-expired` frame; the client resumes with
//! a new token and `Last-Event-ID`. When the token is revoked (by its `jti` or its `sub`, see `revocation`), the
//! stream ends within one heartbeat after an `event: token-revoked` frame; that token is refused from then on.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix_web::{HttpRequest, HttpResponse, get, http::header, web};
use serde::{Deserialize, Serialize};
use storyline_core::{
    EventId, Gap, LogBounds, Revocation, RevocationTarget, StoryId, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT,
};
use storyline_hub::{Bytes, Delivery, Subscription, encode_gap};
use tokio::{sync::watch, time::Sleep};

use crate::{
    auth::Principal,
    error::ApiError,
    meters,
    slow::{ConnFd, Watch},
    startup::{self, AppState, StreamSignal},
};

/// Backoff bounds while the broker is unreachable.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    last_event_id: Option<String>,
}

/// Subscribe to a story's events (Server-Sent Events).
#[utoipa::path(
    get,
    path = "/v1/stories/{story}/stream",
    tag = "events",
    params(
        ("story" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", description = "Story id"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^(|0|[0-9]{1,19}-[0-9]{1,19})$", description = "Resume after this event id. Wins over `last_event_id`. Empty: none."),
        ("last_event_id" = Option<String>, Query, pattern = "^(|0|[0-9]{1,19}-[0-9]{1,19})$", description = "Resume after this event id (for clients that cannot set headers). `0`: from the oldest retained event."),
        ("access_token" = Option<String>, Query, description = "Token, for EventSource (which cannot set headers)"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`. Each event frame carries `id`, `event` (the event type) and `data` (the envelope as one line of JSON). A `gap` event (data: GapData) precedes a resume whose point was trimmed. When the token expires, a `token-expired` event (data: `{\"expired_at\": <the token's exp, seconds since the Unix epoch>}`, no `id`) is the last frame and the server closes the stream; reconnect with a new token and `Last-Event-ID` to lose nothing. When the token is revoked (`POST /v1/admin/revocations`), a `token-revoked` event (data: TokenRevokedData, no `id`) is the last frame, within one heartbeat period; do not reconnect with that token.", body = crate::openapi::StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "Bad story id or resume id", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token (`unauthenticated`), or a revoked one (`token-revoked`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks read scope for this story (`forbidden`), or the client address is not allowed (`ip-denied`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many new streams from this client address, or too many open streams for this principal (`rate-limited`); see Retry-After", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The instance is shutting down (`draining`) or already holds its maximum of open streams or is admitting new streams at its maximum rate, as in a reconnect storm (`at-capacity`); see Retry-After. (A broker outage does not fail the open: the stream stays open and catches up when the broker is back.)", body = crate::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = []))
)]
#[get("/v1/stories/{story}/stream")]
pub(crate) async fn stream(
    req: HttpRequest,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<StreamQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let story = super::story_from_path(&path)?;
    principal.require_read(&story)?;
    let resume = resume_point(&req, query.last_event_id.as_deref())?;
    let slot = admit(&req, &state, &principal)?;
    let mut preface = preface(&state.config);
    let phase = match open_start(&state, &story, resume).await? {
        Start::Resolved(point) => {
            if let Some(gap) = point.gap {
                preface.push_back(encode_gap(gap));
            }
            Phase::Live(subscribe(&state, &story, resume, point))
        }
        Start::Pending(resume) => Phase::Resolving(resume),
    };
    tracing::info!(
        target: STREAM_LOG,
        story = %story,
        sub = %principal.sub,
        tier = principal.tier.as_str(),
        resume = ?resume.map(|id| id.to_string()),
        "stream opened"
    );
    Ok(respond(&req, &principal, slot, preface, Single { phase, story, backoff: RETRY_MIN }))
}

/// Where the client wants to resume: the `Last-Event-ID` header, else the `last_event_id` query parameter. An
/// empty value means "no resume id" (what a client that has seen nothing yet may send).
pub(crate) fn resume_point(req: &HttpRequest, query: Option<&str>) -> Result<Option<EventId>, ApiError> {
    resume_value(req, query).map(super::event_id).transpose()
}

/// The raw resume value: the `Last-Event-ID` header (a value that is not ASCII reads as a NUL, which no parser
/// accepts), else the `last_event_id` query parameter; empty counts as none.
pub(crate) fn resume_value<'a>(req: &'a HttpRequest, query: Option<&'a str>) -> Option<&'a str> {
    let header = req.headers().get("last-event-id").map(|v| v.to_str().unwrap_or("\u{0}")).filter(|v| !v.is_empty());
    header.or_else(|| query.filter(|v| !v.is_empty()))
}

/// The checks every stream open passes after its request is known to be valid and authorized, in this order:
/// not draining (503), the client address' open rate (429), the instance's admission rate and capacity (503)
/// and the principal's open streams (429). The place it returns is the stream's, whatever stories it carries.
pub(crate) fn admit(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    principal: &Principal,
) -> Result<StreamSlot, ApiError> {
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining { retry_after_secs: state.config.retry_after_secs });
    }
    let ip = crate::network::client_ip(req);
    state.limits.check_stream_open(ip)?;
    state.limits.admit_stream()?;
    StreamSlot::acquire(state, principal, ip)
}

/// Where a story's stream starts. Resolved before answering, so that "only events appended after the stream
/// opened" means after the client saw the response. If the broker is unreachable, the answer is 200 anyway and
/// the stream resolves its start once the broker is back: a browser's EventSource gives up for good on any
/// non-200 answer, so a 503 here would turn a short broker outage into readers that never come back.
pub(crate) async fn open_start(state: &AppState, story: &StoryId, resume: Option<EventId>) -> Result<Start, ApiError> {
    let config = &state.config;
    let bounds = super::with_broker(
        config.broker_timeout,
        config.retry_after_secs,
        super::Effect::Read,
        state.broker.bounds(story),
    )
    .await;
    match bounds {
        Ok(bounds) => Ok(Start::Resolved(start_point(resume, bounds))),
        Err(ApiError::Unavailable { cause, .. }) => {
            tracing::warn!(story = %story, error = %cause, "broker unavailable at stream open; will resolve later");
            Ok(Start::Pending(resume))
        }
        Err(e) => Err(e),
    }
}

/// The bytes a stream sends first, for this connection only: `retry: <ms>`, jittered per connection.
pub(crate) fn preface(config: &crate::config::ServerConfig) -> VecDeque<Bytes> {
    let mut preface = VecDeque::with_capacity(2);
    preface.push_back(encode_retry(jittered(config.retry_base)));
    preface
}

/// The `200 text/event-stream` answer around a stream's frames, and the open stream's bookkeeping: its
/// slow-consumer watch, token expiry, drain moment and open-stream meter.
pub(crate) fn respond<S: Source + 'static>(
    req: &HttpRequest,
    principal: &Principal,
    slot: StreamSlot,
    preface: VecDeque<Bytes>,
    source: S,
) -> HttpResponse {
    let config = &slot.state().config;
    let slow_after = config.slow_consumer_timeout.max(config.heartbeat * 2);
    let watch = req.conn_data::<ConnFd>().map(|fd| Watch::register(fd.0, slow_after));
    let expires_at = principal.expires_at;
    let body = Body {
        holder: crate::revocation::Holder::of(principal),
        watch,
        preface,
        expires_at,
        expiry: expiry_timer(expires_at, config.heartbeat),
        closing: false,
        drain_at: startup::drain_moment(),
        signals: slot.state().signals.clone(),
        source,
        open: meters::OpenStream::open(principal.tier),
        slot,
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header(header::ContentEncoding::Identity)
        .streaming(futures::stream::unfold(body, Body::step))
}

/// `base` plus up to 50%, so that clients dropped together do not come back together.
fn jittered(base: Duration) -> Duration {
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(base_ms.saturating_add(fastrand::u64(0..=base_ms / 2)))
}

/// Where a stream starts: after this id, with a gap notice first when the resume id is one this story never
/// issued. (Gaps from retention are reported by the broker tail itself, atomically with its reads.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartPoint {
    pub(crate) after: EventId,
    pub(crate) gap: Option<Gap>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    Resolved(StartPoint),
    /// The broker could not be asked yet; resolve for this resume id once it answers.
    Pending(Option<EventId>),
}

fn start_point(resume: Option<EventId>, bounds: LogBounds) -> StartPoint {
    let newest = bounds.newest.unwrap_or(EventId::ZERO);
    match resume {
        None => StartPoint { after: newest, gap: None },
        // Newer than anything in the story: the store was reset or the id belongs elsewhere. Waiting for the
        // clock to pass it would be a silent hole; say so and replay what is retained.
        Some(id) if id > newest => StartPoint {
            after: EventId::ZERO,
            gap: Some(Gap { requested: id, resumed_from: bounds.oldest.unwrap_or(EventId::ZERO) }),
        },
        Some(id) => StartPoint { after: id, gap: None },
    }
}

/// The subscription a stream reads from `point`. A reader that sent a resume id is a resume: the engine reports
/// whether it was exact, unless the id was one this story never issued, which is a gap from the start. (`0`,
/// "from the oldest retained event", is a replay, not a resume.)
pub(crate) fn subscribe(state: &AppState, story: &StoryId, resume: Option<EventId>, point: StartPoint) -> Subscription {
    match (resume.filter(|id| *id != EventId::ZERO), point.gap) {
        (Some(_), None) => state.hub.resume(story, point.after),
        (Some(_), Some(_)) => {
            storyline_hub::Observer::resumed(&*state.hub_meters, storyline_hub::ResumeOutcome::Gap);
            state.hub.subscribe(story, point.after)
        }
        (None, _) => state.hub.subscribe(story, point.after),
    }
}

/// A comment frame: keeps proxies and load balancers from closing an idle stream, and reveals dead clients.
pub(crate) const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// `retry: <ms>\n\n`: the reconnection delay a client's `EventSource` uses after the stream ends. Sent first on
/// every stream, and once more just before a drain ends it.
pub(crate) fn encode_retry(delay: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", delay.as_millis()))
}

/// What a stream reads its story frames from: one story ([`Single`]) or several merged (`routes::streams`).
/// Everything else about a stream (heartbeats, drain, token expiry, slow consumers, its place among the
/// instance's streams) is the [`Body`]'s, the same for both.
pub(crate) trait Source {
    /// Waits for the next frames and appends them, whole, to `out` (or nothing, to be asked again). Must be
    /// cancel-safe: the body selects it against heartbeats, the drain and the token's expiry.
    async fn next(&mut self, state: &AppState, out: &mut VecDeque<Bytes>);

    /// The stories and the position reached, for the stream's close log line.
    fn describe(&self) -> (String, Option<String>);
}

/// One story's frames: its subscription (or, while the broker was unreachable at open, the resume point to
/// resolve), written as the engine encoded them.
pub(crate) struct Single {
    phase: Phase,
    story: StoryId,
    /// Current wait between broker retries while the broker is failing.
    backoff: Duration,
}

impl Source for Single {
    async fn next(&mut self, state: &AppState, out: &mut VecDeque<Bytes>) {
        match advance(&mut self.phase, state, &self.story, &mut self.backoff).await {
            Advance::Delivered(Delivery::Event(frame)) => {
                meters::delivered(&frame);
                out.push_back(frame.bytes.clone());
            }
            Advance::Delivered(Delivery::Gap(gap)) | Advance::Started { gap: Some(gap), .. } => {
                out.push_back(encode_gap(gap));
            }
            Advance::Started { gap: None, .. } | Advance::Again => {}
        }
    }

    fn describe(&self) -> (String, Option<String>) {
        let last_event_id = match &self.phase {
            Phase::Live(subscription) => Some(subscription.cursor().to_string()),
            Phase::Resolving(_) => None,
        };
        (self.story.to_string(), last_event_id)
    }
}

/// One stream's response body. Per connection it holds its source of story frames (cursors into the stories'
/// feeds) and a handle on the shared stream signal (heartbeat tick and drain): no task, no timer and no frame
/// buffer of its own.
pub(crate) struct Body<S: Source> {
    /// Registration with the slow-consumer sweeper (absent if the connection's fd is unknown).
    watch: Option<Watch>,
    /// Bytes to send before anything else: for this connection only (`retry:`, a start-up gap notice, the final
    /// `token-expired` frame), and the frames the source produced, in order.
    preface: VecDeque<Bytes>,
    /// The token's `exp` (seconds since the Unix epoch): the stream ends there, after a `token-expired` frame.
    expires_at: u64,
    /// Armed only within one heartbeat period of `expires_at` (checked at each tick), so that streams far from
    /// expiry carry no timer.
    expiry: Option<Pin<Box<Sleep>>>,
    /// The token's `sub` and `jti`, checked against the revocation list at every signal (`None`: a guest).
    holder: Option<Arc<crate::revocation::Holder>>,
    /// Ends the stream once `preface` is sent.
    closing: bool,
    /// This stream's moment in the drain window, in thousandths of it (see [`startup::drain_moment`]).
    drain_at: u16,
    signals: watch::Receiver<StreamSignal>,
    source: S,
    /// Counts the stream as open, and as closed (by reason) when the body is dropped.
    open: meters::OpenStream,
    /// The stream's place among `max_streams`, and through it the app state.
    slot: StreamSlot,
}

/// One of the instance's `max_streams` places and one of its principal's `streams_per_principal`, held by an
/// open stream (or a stream being opened) and given back when it is dropped. It holds the app state the stream
/// uses, so a stream keeps one handle on it.
pub(crate) struct StreamSlot {
    state: web::Data<AppState>,
    /// The principal's key in the per-principal count; `None` when that is unlimited.
    principal: Option<Arc<str>>,
}

impl StreamSlot {
    /// The per-principal limit is 429 (this client holds too many), the instance cap 503 (another instance may
    /// have room).
    fn acquire(state: &web::Data<AppState>, principal: &Principal, ip: std::net::IpAddr) -> Result<Self, ApiError> {
        let max = state.config.max_streams.map_or(usize::MAX, std::num::NonZeroUsize::get);
        if !state.shutdown.try_open_stream(max) {
            return Err(ApiError::AtCapacity {
                cap: crate::error::Capacity::MaxStreams,
                retry_after_secs: state.config.retry_after_secs,
            });
        }
        match state.limits.acquire_stream(principal, ip) {
            Ok(principal) => Ok(Self { state: state.clone(), principal }),
            Err(e) => {
                state.shutdown.stream_closed();
                Err(e)
            }
        }
    }

    pub(crate) fn state(&self) -> &AppState {
        &self.state
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state.shutdown.stream_closed();
        if let Some(key) = &self.principal {
            self.state.limits.release_stream(key);
        }
    }
}

impl<S: Source> Drop for Body<S> {
    fn drop(&mut self) {
        if self.watch.as_ref().is_some_and(Watch::was_cut) {
            self.open.reason = meters::CloseReason::SlowConsumer;
        }
        let (reason, open_secs) = (self.open.reason.as_str(), self.open.seconds_open());
        let (story, last_event_id) = self.source.describe();
        tracing::info!(target: STREAM_LOG, story = %story, reason, open_secs, last_event_id = ?last_event_id, "stream closed");
    }
}

/// The target of the stream open/close log lines.
pub(crate) const STREAM_LOG: &str = "storyline::stream";

/// A story's place in a stream.
pub(crate) enum Phase {
    /// The broker was unreachable at open: find the start point first.
    Resolving(Option<EventId>),
    Live(Subscription),
}

enum Step {
    Emit(Bytes),
    /// The token expired: send the `token-expired` frame, then end.
    Expired,
    /// The token was revoked: send the `token-revoked` frame, then end.
    Revoked(RevokedBy),
    /// This stream's moment in the drain has come: send a fresh `retry:` hint, then end.
    Drain,
    Again,
}

impl<S: Source> Body<S> {
    /// The next chunk of the body, or `None` once its moment in the server's drain has come (after a last
    /// `retry:` frame). Frames come whole, so the stream always ends at a frame boundary.
    async fn step(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        // actix asks for more only when the socket drains: that is the progress the sweeper watches.
        if let Some(watch) = &self.watch {
            watch.touch();
        }
        loop {
            if let Some(bytes) = self.preface.pop_front() {
                return Some((Ok(bytes), self));
            }
            if self.closing {
                return None;
            }
            let step = tokio::select! {
                biased;
                changed = self.signals.changed() => match changed {
                    // Whatever the signal, a revoked token ends the stream first (one atomic load while the list
                    // is empty).
                    Ok(()) => match (Self::signal(&mut self.signals), self.revoked()) {
                        (_, Some(entry)) => Step::Revoked(entry),
                        (signal, None) => match signal {
                        StreamSignal::Revocations => Step::Again,
                        StreamSignal::Tick(_) => {
                            if self.expiry.is_none() {
                                self.expiry = expiry_timer(self.expires_at, self.slot.state().config.heartbeat);
                            }
                            Step::Emit(Bytes::from_static(HEARTBEAT))
                        }
                        StreamSignal::Drain(share) if share >= self.drain_at => Step::Drain,
                        StreamSignal::Drain(_) => Step::Again,
                        },
                    },
                    // The signal task ended: the drain window is over, or the server is gone.
                    Err(_) => Step::Drain,
                },
                () = async { if let Some(expiry) = self.expiry.as_mut() { expiry.await } }, if self.expiry.is_some() => {
                    Step::Expired
                }
                () = self.source.next(self.slot.state(), &mut self.preface) => Step::Again,
            };
            match step {
                Step::Emit(bytes) => return Some((Ok(bytes), self)),
                Step::Drain => {
                    // Come back, to another instance, after a jittered pause: the readers of this instance
                    // reconnect spread over the drain window and then over this hint.
                    self.open.reason = meters::CloseReason::Shutdown;
                    self.preface.push_back(encode_retry(jittered(self.slot.state().config.retry_base)));
                    self.closing = true;
                }
                Step::Expired => {
                    self.open.reason = meters::CloseReason::TokenExpired;
                    self.preface.push_back(encode_token_expired(self.expires_at));
                    self.closing = true;
                }
                Step::Revoked(entry) => {
                    self.open.reason = meters::CloseReason::TokenRevoked;
                    self.preface.push_back(encode_token_revoked_by(entry));
                    self.closing = true;
                }
                Step::Again => {}
            }
        }
    }
}

impl<S: Source> Body<S> {
    fn signal(signals: &mut watch::Receiver<StreamSignal>) -> StreamSignal {
        *signals.borrow_and_update()
    }

    /// What revoked this stream's token, if it is revoked now.
    fn revoked(&self) -> Option<RevokedBy> {
        self.slot.state().revocations.holds(self.holder.as_deref()?).map(|entry| RevokedBy::of(&entry))
    }
}

/// A timer for the token's expiry, if it falls within the next heartbeat period (or has passed).
fn expiry_timer(expires_at: u64, heartbeat: Duration) -> Option<Pin<Box<Sleep>>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(expires_at).saturating_sub(now);
    (left <= heartbeat).then(|| Box::pin(tokio::time::sleep(left)))
}

// What `encode_token_expired` serializes, and the schema the OpenAPI and AsyncAPI documents publish for it (the doc
// comment below is its description there).
/// Data of the `token-expired` event, the last frame of a stream whose token expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenExpiredData {
    /// The token's `exp`, seconds since the Unix epoch.
    pub expired_at: u64,
}

/// The last frame of a stream whose token expired: the client fetches a new token and resumes with
/// `Last-Event-ID`. `expired_at` is the token's `exp` claim (seconds since the Unix epoch).
pub(crate) fn encode_token_expired(expires_at: u64) -> Bytes {
    // One integer field: serializing it cannot fail.
    let data = serde_json::to_string(&TokenExpiredData { expired_at: expires_at }).unwrap_or_default();
    Bytes::from(format!("event: {TOKEN_EXPIRED_EVENT}\ndata: {data}\n\n"))
}

// What `encode_token_revoked` serializes, and the schema the OpenAPI and AsyncAPI documents publish for it.
/// Data of the `token-revoked` event, the last frame of a stream whose token was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRevokedData {
    /// What the revocation named: `jti` (this token alone: a new token may work) or `sub` (every token of its
    /// subject, until the revocation expires).
    pub revoked: RevokedBy,
}

/// What a revocation named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RevokedBy {
    Jti,
    Sub,
}

impl RevokedBy {
    fn of(entry: &Revocation) -> Self {
        match entry.target {
            RevocationTarget::Jti(_) => Self::Jti,
            RevocationTarget::Sub(_) => Self::Sub,
        }
    }
}

/// The last frame of a stream whose token was revoked. The token is refused from now on: the client does not
/// reconnect with it.
pub(crate) fn encode_token_revoked(entry: &Revocation) -> Bytes {
    encode_token_revoked_by(RevokedBy::of(entry))
}

fn encode_token_revoked_by(revoked: RevokedBy) -> Bytes {
    // One enum field: serializing it cannot fail.
    let data = serde_json::to_string(&TokenRevokedData { revoked }).unwrap_or_default();
    Bytes::from(format!("event: {TOKEN_REVOKED_EVENT}\ndata: {data}\n\n"))
}

/// What one step of a story's phase produced.
pub(crate) enum Advance {
    /// A frame of the story (an event, or a gap notice).
    Delivered(Delivery),
    /// The broker answered at last and the story's start is resolved: from `from` (the resume point, or the
    /// story's newest id at that moment), with a gap notice first when that resume id is one the story never
    /// issued.
    Started { from: EventId, gap: Option<Gap> },
    /// Nothing yet (the broker failed and the backoff passed): ask again.
    Again,
}

/// One step of a story in a live or resolving stream. A broker failure keeps the stream open: it waits `backoff`
/// (doubling up to [`RETRY_MAX`]) and reports [`Advance::Again`]; heartbeats and draining stay live meanwhile
/// because the caller selects this against them (every await here is cancel-safe).
pub(crate) async fn advance(phase: &mut Phase, state: &AppState, story: &StoryId, backoff: &mut Duration) -> Advance {
    let failure = match phase {
        Phase::Live(subscription) => match subscription.next().await {
            Ok(delivery) => {
                *backoff = RETRY_MIN;
                return Advance::Delivered(delivery);
            }
            Err(e) => e,
        },
        Phase::Resolving(resume) => match state.broker.bounds(story).await {
            Ok(bounds) => {
                *backoff = RETRY_MIN;
                let resume = *resume;
                let point = start_point(resume, bounds);
                *phase = Phase::Live(subscribe(state, story, resume, point));
                return Advance::Started { from: resume.unwrap_or(point.after), gap: point.gap };
            }
            Err(e) => e,
        },
    };
    tracing::debug!(story = %story, error = %failure, "broker unavailable for a stream; retrying");
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(RETRY_MAX);
    Advance::Again
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that `.streaming(unfold(body, Body::step))` boxes per stream: the body plus the largest state of a
    /// pending `step` future (the select over the stream signal and the subscription's next frame).
    fn boxed_stream_size<F, Fut>(_step: F) -> usize
    where
        F: FnMut(Body<Single>) -> Fut,
    {
        std::mem::size_of::<futures::stream::Unfold<Body<Single>, F, Fut>>()
    }

    /// Memory per open stream is a budget. This is storyline's own state per stream (the boxed body stream with
    /// its pending future and, inside it, the subscription), not counting the socket and actix's connection
    /// buffers; BENCHMARKS.md has the measured total per idle stream. If this fails, a field or a future grew:
    /// make sure it is worth its bytes times 19,000 streams.
    #[test]
    fn per_stream_state_stays_within_its_budget() {
        // Measured 712 (body 160, subscription 56) when this budget was set at 768; token expiry (the `exp`, a
        // lazily armed boxed timer and its select branch) added 72 bytes; the stream slot holds the app state the
        // body used to hold separately: 784, budget 800. The per-principal stream limit needs the principal's key
        // to give its place back (16 bytes plus padding, 600 KB at 19,000 streams): 816, budget 816. Closes counted
        // by tier and reason with their duration (issue 5) need the tier, the reason and the open time (6 bytes,
        // the time as a u32 of tenths of a second): 832, budget 832. Resume outcomes (issue 5) need a subscription to
        // know it is a resume until it meets the story (a flag, 8 bytes with padding), and a delivery is now an
        // event frame with its meters or a notice (8 more in the pending step): 848 (300 KB at 19,000 streams). The
        // body became generic over its source of frames (one story, or several merged by `routes::streams`), so that
        // both streams share heartbeats, drain, expiry and slow-consumer handling: the pending step now holds the
        // source's `next` future around the story's step (its borrows and result), 40 bytes: 888 (760 KB at 19,000
        // streams). Per-token revocation (issue 16) needs each stream to know its token's `sub` and `jti`: one pointer
        // to them (8 bytes, 16 with the pending step's copy and padding): 904 (300 KB more at 19,000 streams).
        const BUDGET_BYTES: usize = 904;
        let body = std::mem::size_of::<Body<Single>>();
        let subscription = std::mem::size_of::<Subscription>();
        let boxed = boxed_stream_size(Body::<Single>::step);
        eprintln!("Body {body} B, Subscription {subscription} B, boxed stream {boxed} B");
        assert!(boxed <= BUDGET_BYTES, "the boxed stream is {boxed} bytes (body {body}), budget {BUDGET_BYTES}");
    }
}
