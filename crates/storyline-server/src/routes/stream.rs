//! `GET /v1/stories/{story}/stream`: a story's events as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! Frames: first `retry: <ms>` (jittered per connection), then one frame per event (`id:`, `event:`, `data:`
//! with the one-line JSON envelope) and a `: keep-alive` comment every heartbeat period. Where to start:
//! - no resume id: only events appended after the stream opened (the story's newest id at open time);
//! - `0`: from the oldest retained event;
//! - `<ms>-<seq>`: after that event; if retention has trimmed events after it, an `event: gap` frame first
//!   (naming the requested id and the id resumed from), then the oldest retained events. Never a silent hole.
//!
//! The broker tail yields the backlog and then live events with no gap or duplicate at the seam. If the broker
//! becomes unreachable the stream stays open (heartbeats continue) and resumes after the last delivered id.
//! At shutdown every stream ends at a frame boundary.

use std::time::Duration;

use actix_web::{HttpRequest, Responder, get, web};
use actix_web_lab::sse::{self, Sse};
use futures::StreamExt;
use serde::Deserialize;
use storyline_core::{EventId, StoredEvent, StoryId};
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
        (status = 503, description = "Broker unavailable or shutting down; see Retry-After", body = crate::Problem, content_type = "application/problem+json"),
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
    let resume = match req.headers().get("last-event-id") {
        Some(v) => Some(super::event_id(v.to_str().unwrap_or("\u{0}"))?),
        None => query.last_event_id.as_deref().map(super::event_id).transpose()?,
    };
    if state.shutdown.is_draining() {
        return Err(ApiError::Unavailable {
            retry_after_secs: state.config.retry_after_secs,
            cause: "shutting down".into(),
        });
    }
    let config = &state.config;
    let bounds =
        super::with_broker(config.broker_timeout, config.retry_after_secs, state.broker.bounds(&story)).await?;
    let (start, gap) = match resume {
        None => (bounds.newest.unwrap_or(EventId::ZERO), None),
        Some(id) => (id, bounds.gap_for(id).map(|resumed_from| GapData { requested: id, resumed_from })),
    };

    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(pump(state.clone(), story, start, gap, tx));

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

fn frame(event: &StoredEvent) -> sse::Event {
    sse::Data::new(event.envelope().to_json()).id(event.id.to_string()).event(event.event_type.as_str()).into()
}

/// Moves events from the broker to one subscriber until the client goes away or the server drains.
async fn pump(
    state: web::Data<AppState>,
    story: StoryId,
    mut cursor: EventId,
    gap: Option<GapData>,
    tx: mpsc::Sender<sse::Event>,
) {
    let _open = meters::OpenStream::open();
    let shutdown = state.shutdown.clone();
    if let Some(gap) = gap {
        let data = serde_json::to_string(&gap).unwrap_or_default();
        if tx.send(sse::Data::new(data).event("gap").into()).await.is_err() {
            return;
        }
    }
    let mut backoff = RETRY_MIN;
    loop {
        let mut tail = state.broker.tail(&story, cursor);
        loop {
            let next = tokio::select! {
                () = shutdown.drained() => return,
                () = tx.closed() => return,
                next = tail.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    backoff = RETRY_MIN;
                    cursor = event.id;
                    if tx.send(frame(&event)).await.is_err() {
                        return;
                    }
                    meters::delivered();
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
