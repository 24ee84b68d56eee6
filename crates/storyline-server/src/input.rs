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

/// The token a request carries (`Authorization: Bearer`, `?access_token=`, cookie), `None` if none.
pub fn token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    crate::auth::token_from(req)
}
