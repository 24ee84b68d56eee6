//! The parsers that read what a client sends, in the form requests use them. Public so that the fuzz targets
//! under `fuzz/` drive exactly the code a request reaches, not a copy of it.

use actix_web::HttpRequest;
use storyline_core::{EventData, EventId, EventType, StoryId};

use crate::error::ApiError;

/// The `{story}` path segment.
pub fn story_id(raw: &str) -> Result<StoryId, ApiError> {
    crate::routes::story_from_path(raw)
}

/// A `POST …/events` body: `{"type": …, "data": …}`.
pub fn publish_body(body: &[u8]) -> Result<(EventType, EventData), ApiError> {
    crate::routes::publish::parse_body(body)
}

/// The resume point of a stream request: `Last-Event-ID`, else the `last_event_id` query parameter.
pub fn resume_point(req: &HttpRequest, query: Option<&str>) -> Result<Option<EventId>, ApiError> {
    crate::routes::stream::resume_point(req, query)
}

/// The `stories` parameter of `GET /v1/streams`: 1 to `limit` distinct story ids, comma-separated.
pub fn stream_stories(raw: &str, limit: usize) -> Result<Vec<StoryId>, ApiError> {
    crate::routes::streams::parse_stories(raw, limit)
}

/// The resume cursor of `GET /v1/streams` (`Last-Event-ID`, else `last_event_id`): one position per story.
pub fn resume_cursor(req: &HttpRequest, query: Option<&str>, stories: usize) -> Result<Option<Vec<EventId>>, ApiError> {
    crate::routes::streams::resume_cursor(req, query, stories)
}

/// The token a request carries (`Authorization: Bearer`, `?access_token=`, cookie), `None` if none.
pub fn token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    crate::auth::token_from(req)
}
