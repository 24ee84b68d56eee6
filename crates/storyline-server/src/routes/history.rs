//! `GET /v1/stories/{story}/events?after=<id>&limit=<1..1000>`: a page of a story's history, oldest first.

use actix_web::{HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use storyline_core::{Envelope, EventId, MAX_PAGE_LIMIT, PageLimit};

use crate::{auth::Principal, error::ApiError, openapi::HistoryPage, startup::AppState};

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
struct Page<'a> {
    events: Vec<Envelope<'a>>,
    next: Option<EventId>,
}

/// Read a page of a story's events.
#[utoipa::path(
    get,
    path = "/v1/stories/{story}/events",
    tag = "events",
    params(
        ("story" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", description = "Story id"),
        ("after" = Option<String>, Query, pattern = "^(0|[0-9]{1,19}-[0-9]{1,19})$", description = "Return events after this id (`<ms>-<seq>`); `0` or absent: from the oldest retained"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1..1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of events, oldest first. `next` is the `after` for the following page, or null when this page was not full. History does not signal events removed by retention; the stream's `gap` frame does.", body = HistoryPage),
        (status = 400, description = "Bad story id, `after` or `limit`", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks read scope for this story", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable; see Retry-After", body = crate::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = []))
)]
#[get("/v1/stories/{story}/events")]
pub(crate) async fn history(
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let story = super::story_from_path(&path)?;
    principal.require_read(&story)?;
    let after = query.after.as_deref().map(super::event_id).transpose()?.unwrap_or(EventId::ZERO);
    let limit = match query.limit.as_deref() {
        None => PageLimit::default(),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .and_then(PageLimit::new)
            .ok_or_else(|| ApiError::BadQuery(format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}")))?,
    };
    let page = super::with_broker(
        state.config.broker_timeout,
        state.config.retry_after_secs,
        super::Effect::Read,
        state.broker.read_after(&story, after, limit),
    )
    .await?;
    let events = page.events;
    let next = if events.len() == limit.get() { events.last().map(|e| e.id) } else { None };
    let body = Page { events: events.iter().map(|e| e.envelope()).collect(), next };
    Ok(HttpResponse::Ok().json(body))
}
