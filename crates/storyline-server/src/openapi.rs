//! The OpenAPI document, generated from the handlers' annotations. `storyline openapi` prints it, the server
//! serves it at `/openapi.json`, and `openapi/openapi.json` in the repository is checked against it by a test.
//!
//! The schema types here document wire formats whose serializers live in `storyline-core` (receipt, envelope);
//! the contract tests and `scripts/schemathesis.sh` check real responses against these shapes, and the AsyncAPI
//! document ([`crate::asyncapi`]) carries frames written by those serializers as examples, which
//! `scripts/asyncapi.sh` validates against them. The SSE control frames' bodies ([`GapData`],
//! [`TokenExpiredData`]) are the very types their encoders serialize.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        ObjectBuilder, Ref, RefOr, Schema, Type,
        schema::AnyOfBuilder,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{error::Problem, routes};

/// The body of `POST /v1/stories/{story}/events`; other fields are refused (422).
// `deny_unknown_fields` as on the handler's body type: the schema says `additionalProperties: false`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Event type: `^[a-z][a-z0-9_.-]{0,63}$`; `gap`, `token-expired`, `token-revoked` and `storyline.*` are reserved.
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

// The bodies of the stream's control frames are defined beside the code that writes them, so that the schema and
// the wire cannot differ: the `gap` notice in the fan-out engine, `token-expired` in the stream route.
pub use storyline_hub::{GapData, StoryGapData};

pub use crate::routes::{
    admin::{MAX_REVOCATION_SECS, RevocationBody, RevocationRequest, RevocationsBody},
    stream::{RevokedBy, TokenExpiredData, TokenRevokedData},
};

/// One event of `GET /v1/stories/{story}/stream`, as an SSE parser (a browser's `EventSource`) hands it over:
/// `event` names it and `data` is one line of JSON whose shape depends on `event`. Comments (`: keep-alive`)
/// and the `retry:` hint that opens every stream are not events. `gap`, `token-expired` and `token-revoked` frames carry no
/// `id:` line (a parser reports the last id it saw).
///
/// The schema of the stream's `text/event-stream` response is this, one event at a time (the OpenAPI 3.1
/// reading that tools such as schemathesis use), so that each frame is checked against the payload its
/// `event` announces.
#[derive(Debug)]
pub struct StreamEvent;

impl StreamEvent {
    /// `data`: a string holding JSON of the named schema.
    fn data(payload: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .content_schema(Some(Ref::from_schema_name(payload)))
    }

    fn id(pattern: &str) -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern))
    }

    fn retry() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))
    }

    fn control(event: &str, payload: &str, description: &str, id: Option<&str>) -> ObjectBuilder {
        let frame = ObjectBuilder::new()
            .schema_type(Type::Object)
            .title(Some(event))
            .description(Some(description))
            .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([event])))
            .property("data", Self::data(payload))
            .property("id", Self::id(id.unwrap_or(EVENT_ID_PATTERN)))
            .property("retry", Self::retry())
            .required("event")
            .required("data");
        match id {
            Some(_) => frame.required("id"),
            None => frame,
        }
    }

    /// The schema of one event of a stream whose frames' `id` matches `id_pattern` and whose `gap` carries
    /// `gap_payload`; `gap_id` is the gap's `id` pattern when it has one.
    fn schema_with(
        id_pattern: &str,
        story_event: &str,
        gap_payload: &str,
        gap: &str,
        gap_id: Option<&str>,
    ) -> RefOr<Schema> {
        // anyOf, not oneOf: `contentSchema` is only an annotation to a plain JSON Schema validator, for which a
        // `gap` frame would also match the story-event branch.
        let story_event = ObjectBuilder::new()
            .schema_type(Type::Object)
            .title(Some("story event"))
            .description(Some(story_event))
            .property("event", ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[a-z][a-z0-9_.-]{0,63}$")))
            .property("data", Self::data(EnvelopeBody::name().as_ref()))
            .property("id", Self::id(id_pattern))
            .property("retry", Self::retry())
            .required("id")
            .required("event")
            .required("data");
        AnyOfBuilder::new()
            .description(Some(
                "One event of the stream, as an SSE parser delivers it: `event` names it, `data` is one line of JSON.",
            ))
            .item(story_event)
            .item(Self::control(storyline_core::GAP_EVENT, gap_payload, gap, gap_id))
            .item(Self::control(
                storyline_core::TOKEN_EXPIRED_EVENT,
                TokenExpiredData::name().as_ref(),
                "The token expired; the server closes the stream. Reconnect with a new token and `Last-Event-ID`.",
                None,
            ))
            .item(Self::control(
                storyline_core::TOKEN_REVOKED_EVENT,
                TokenRevokedData::name().as_ref(),
                "The token was revoked (by its `jti`, or every token of its `sub`); the server closes the stream and \
                 refuses the token from now on (401 `token-revoked`). Do not reconnect with it.",
                None,
            ))
            .into()
    }
}

/// An event id, `<ms>-<seq>`.
const EVENT_ID_PATTERN: &str = "^[0-9]+-[0-9]+$";

/// A many-story stream's cursor: one position per story (`<ms>-<seq>` or `0`), joined by `,`.
pub const CURSOR_PATTERN: &str = "^(0|[0-9]+-[0-9]+)(,(0|[0-9]+-[0-9]+))*$";

impl PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        Self::schema_with(
            EVENT_ID_PATTERN,
            "An event of the story. `event` is its type (never `gap`, `token-expired` or `token-revoked`), `id` its id.",
            GapData::name().as_ref(),
            "Events due to this reader were trimmed by retention (or the resume id is unknown): delivery resumes \
             from `resumed_from`.",
            None,
        )
    }
}

impl ToSchema for StreamEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StreamEvent")
    }
}

/// One event of `GET /v1/streams`, as an SSE parser hands it over: as [`StreamEvent`], but every `id` is the
/// stream's cursor (one position per story) and a `gap` names its story and carries the cursor past the hole.
/// The id-only frame that follows `retry:` dispatches no event, so it is not one of these.
#[derive(Debug)]
pub struct StreamsEvent;

impl PartialSchema for StreamsEvent {
    fn schema() -> RefOr<Schema> {
        StreamEvent::schema_with(
            CURSOR_PATTERN,
            "An event of one of the stories (its envelope names it). `event` is its type (never `gap`, \
             `token-expired` or `token-revoked`), `id` the cursor with this event's story at this event.",
            StoryGapData::name().as_ref(),
            "Events of `story` due to this reader were trimmed by retention (or its resume position is unknown): \
             its delivery resumes from `resumed_from`; `id` is the cursor with the story just before it.",
            Some(CURSOR_PATTERN),
        )
    }
}

impl ToSchema for StreamsEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StreamsEvent")
    }
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
        routes::streams::streams,
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
        routes::health::openapi,
        routes::admin::revoke,
        routes::admin::revocations,
    ),
    components(schemas(
        Problem,
        StreamEvent,
        StreamsEvent,
        GapData,
        StoryGapData,
        TokenExpiredData,
        TokenRevokedData,
        RevokedBy,
        RevocationRequest,
        RevocationBody,
        RevocationsBody,
        EnvelopeBody,
        ReceiptBody,
        PublishRequest,
        HistoryPage
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "events", description = "Publish, subscribe, read history"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "admin", description = "Admin-tier operations: token revocation"),
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
