//! `GET /v1/stories/{story}/stream`: a story's events as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! Frames: first `retry: <ms>` (jittered per connection), then one frame per event (`id:`, `event:`, `data:`
//! with the one-line JSON envelope) and a `: keep-alive` comment every heartbeat period. Where to start:
//! - no resume id: only events appended after the stream opened (the story's newest id at open time);
//! - `0`: from the oldest retained event;
//! - `<ms>-<seq>`: after that event. Whenever events due to the reader were trimmed by retention before they
//!   could be delivered (an old resume point, or a reader that fell behind), an `event: gap` frame names the
//!   last position and the id delivery resumes from. A resume id newer than anything in the story (a reset
//!   store) also gets a gap frame, then the retained history. Never a silent hole.
//!
//! The broker tail yields the backlog and then live events with no gap or duplicate at the seam. If the broker
//! is unreachable, at open or later, the stream stays open (heartbeats continue) and resumes after the last
//! delivered id once the broker is back: browsers' `EventSource` never retries after a non-200 answer, so the
//! only errors a stream open returns are the client's own (400, 401, 403) and draining (503).
//! At shutdown every stream ends at a frame boundary.

use std::time::Duration;

use actix_web::{HttpRequest, Responder, get, web};
use actix_web_lab::sse::{self, Sse};
use futures::StreamExt;
use serde::Deserialize;
use storyline_core::{EventId, LogBounds, StoredEvent, StoryId, TailItem};
use tokio::sync::mpsc;

use crate::{auth::Principal, error::ApiError, meters, openapi::GapData, startup::AppState};

/// Frames buffered per stream between the broker tail and the socket.
const STREAM_BUFFER: usize = 64;
/// Backoff bounds while the broker is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
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
        ("story" = String, Path, description = "Story id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id. Wins over `last_event_id`."),
        ("last_event_id" = Option<String>, Query, description = "Resume after this event id (for clients that cannot set headers). `0`: from the oldest retained event."),
        ("access_token" = Option<String>, Query, description = "Token, for EventSource (which cannot set headers)"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`. Each event frame carries `id`, `event` (the event type) and `data` (the envelope as one line of JSON). A `gap` event (data: GapData) precedes a resume whose point was trimmed.", body = crate::openapi::EnvelopeBody, content_type = "text/event-stream"),
        (status = 400, description = "Bad story id or resume id", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks read scope for this story", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The instance is shutting down; see Retry-After. (A broker outage does not fail the open: the stream stays open and catches up when the broker is back.)", body = crate::Problem, content_type = "application/problem+json"),
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
) -> Result<impl Responder, ApiError> {
    let story = super::story_from_path(&path)?;
    principal.require_read(&story)?;
    // An empty value means "no resume id" (what a client that has seen nothing yet may send).
    let header = req.headers().get("last-event-id").map(|v| v.to_str().unwrap_or("\u{0}")).filter(|v| !v.is_empty());
    let resume = match header {
        Some(v) => Some(super::event_id(v)?),
        None => query.last_event_id.as_deref().filter(|v| !v.is_empty()).map(super::event_id).transpose()?,
    };
    if state.shutdown.is_draining() {
        return Err(ApiError::Unavailable {
            retry_after_secs: state.config.retry_after_secs,
            cause: "shutting down".into(),
        });
    }
    let config = &state.config;
    // Resolve where to start before answering, so "only events appended after the stream opened" means after
    // the client saw the response. If the broker is unreachable, answer 200 anyway and let the pump resolve it
    // once the broker is back: a browser's EventSource gives up for good on any non-200 answer, so a 503 here
    // would turn a short broker outage into readers that never come back.
    let start =
        match super::with_broker(config.broker_timeout, config.retry_after_secs, state.broker.bounds(&story)).await {
            Ok(bounds) => Start::Resolved(start_point(resume, bounds)),
            Err(ApiError::Unavailable { cause, .. }) => {
                tracing::warn!(story = %story, error = %cause, "broker unavailable at stream open; will resolve later");
                Start::Pending(resume)
            }
            Err(e) => return Err(e),
        };

    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(pump(state.clone(), story, start, tx));

    let retry = jittered(config.retry_base);
    Ok(Sse::from_infallible_receiver(rx)
        .with_retry_duration(retry)
        .with_keep_alive(config.heartbeat)
        .customize()
        .insert_header(("X-Accel-Buffering", "no")))
}

/// `base` plus up to 50%, so that clients dropped together do not come back together.
fn jittered(base: Duration) -> Duration {
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(base_ms.saturating_add(fastrand::u64(0..=base_ms / 2)))
}

/// Where a stream starts: after this id, with a gap notice first when the resume id is one this story never
/// issued. (Gaps from retention are reported by the broker tail itself, atomically with its reads.)
#[derive(Debug, Clone, Copy)]
struct StartPoint {
    after: EventId,
    gap: Option<GapData>,
}

#[derive(Debug, Clone, Copy)]
enum Start {
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
            gap: Some(GapData { requested: id, resumed_from: bounds.oldest.unwrap_or(EventId::ZERO) }),
        },
        Some(id) => StartPoint { after: id, gap: None },
    }
}

/// `event: gap` with `{"requested", "resumed_from"}` and no `id:` (so the client's Last-Event-ID stays where it was).
fn gap_frame(gap: GapData) -> sse::Event {
    sse::Data::new(serde_json::to_string(&gap).unwrap_or_default()).event("gap").into()
}

fn frame(event: &StoredEvent) -> sse::Event {
    sse::Data::new(event.envelope().to_json()).id(event.id.to_string()).event(event.event_type.as_str()).into()
}

/// Moves events from the broker to one subscriber until the client goes away or the server drains.
async fn pump(state: web::Data<AppState>, story: StoryId, start: Start, tx: mpsc::Sender<sse::Event>) {
    let _open = meters::OpenStream::open();
    let shutdown = state.shutdown.clone();
    let mut backoff = RETRY_MIN;
    let start = match start {
        Start::Resolved(point) => point,
        Start::Pending(resume) => loop {
            match tokio::time::timeout(state.config.broker_timeout, state.broker.bounds(&story)).await {
                Ok(Ok(bounds)) => break start_point(resume, bounds),
                Ok(Err(e)) => tracing::debug!(story = %story, error = %e, "broker still unavailable"),
                Err(_) => tracing::debug!(story = %story, "broker still not answering"),
            }
            tokio::select! {
                () = shutdown.drained() => return,
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        },
    };
    if let Some(gap) = start.gap
        && tx.send(gap_frame(gap)).await.is_err()
    {
        return;
    }
    let mut cursor = start.after;
    backoff = RETRY_MIN;
    loop {
        let mut tail = state.broker.tail(&story, cursor);
        loop {
            let next = tokio::select! {
                () = shutdown.drained() => return,
                () = tx.closed() => return,
                next = tail.next() => next,
            };
            match next {
                Some(Ok(TailItem::Event(event))) => {
                    backoff = RETRY_MIN;
                    cursor = event.id;
                    if tx.send(frame(&event)).await.is_err() {
                        return;
                    }
                    meters::delivered();
                }
                Some(Ok(TailItem::Gap(gap))) => {
                    tracing::info!(story = %story, requested = %gap.requested, resumed_from = %gap.resumed_from, "gap: events were trimmed before delivery");
                    if tx
                        .send(gap_frame(GapData { requested: gap.requested, resumed_from: gap.resumed_from }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(story = %story, error = %e, "stream tail failed; retrying");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            () = shutdown.drained() => return,
            () = tx.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}
