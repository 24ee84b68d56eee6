//! The OpenAPI document, generated from the handlers' annotations. `storyline openapi` prints it, the server
//! serves it at `/openapi.json`, and `openapi/openapi.json` in the repository is checked against it by a test.
//!
//! The schema types here document wire formats whose serializers live in `storyline-core` (receipt, envelope);
//! the contract tests check real responses against these shapes.

use serde::{Deserialize, Serialize};
use storyline_core::EventId;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{error::Problem, routes};

/// The body of `POST /v1/stories/{story}/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishRequest {
    /// Event type: `^[a-z][a-z0-9_.-]{0,63}$`; `gap`, `token-expired` and `storyline.*` are reserved.
    #[serde(rename = "type")]
    #[schema(pattern = "^[a-z][a-z0-9_.-]{0,63}$", example = "chapter")]
    pub event_type: String,
    /// Any JSON value; delivered to readers verbatim.
    pub data: serde_json::Value,
}

/// The answer to a publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReceiptBody {
    /// The event's id, `<ms>-<seq>`; strictly increasing per story.
    #[schema(pattern = "^[0-9]+-[0-9]+$", example = "1732406400000-0")]
    pub id: String,
    pub story: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// An event as readers receive it (the SSE `data:` line, and items of history pages).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvelopeBody {
    #[schema(pattern = "^[0-9]+-[0-9]+$", example = "1732406400000-0")]
    pub id: String,
    pub story: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The publisher's `data`, verbatim.
    pub data: serde_json::Value,
    /// The publisher's token `sub`.
    pub author: String,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// A page of history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    pub events: Vec<EnvelopeBody>,
    /// Pass as `after` to get the next page; null when this page was not full.
    pub next: Option<String>,
}

/// Data of the `gap` event: the resume point fell out of retained history.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct GapData {
    /// The id the client asked to resume after.
    #[schema(value_type = String)]
    pub requested: EventId,
    /// The id of the first event delivered instead (the oldest retained).
    #[schema(value_type = String)]
    pub resumed_from: EventId,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new(crate::auth::TOKEN_QUERY))),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::TOKEN_COOKIE))),
        );
    }
}

/// storyline's HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "storyline",
        description = "Real-time story streams: writers POST events, readers subscribe with Server-Sent Events and resume with Last-Event-ID. Errors are RFC 9457 problem+json.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::publish::publish,
        routes::history::history,
        routes::stream::stream,
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
        routes::health::openapi,
    ),
    components(schemas(Problem, GapData, EnvelopeBody, ReceiptBody, PublishRequest, HistoryPage)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "events", description = "Publish, subscribe, read history"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline (the form committed to `openapi/openapi.json`).
pub fn pretty_json() -> String {
    let mut json = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}
