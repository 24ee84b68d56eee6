//! The AsyncAPI 3.0 document of storyline's streams: what a reader receives on `GET /v1/stories/{story}/stream`
//! (every SSE frame the server writes) and what a writer sends to `POST /v1/stories/{story}/events` and gets back.
//! `storyline asyncapi` prints it; `asyncapi/storyline.yaml` in the repository is checked against it by a test
//! and validated by the official AsyncAPI parser (`scripts/asyncapi.sh`).
//!
//! Nothing in it is retyped from the code. It is generated from:
//! - the payload schemas of the same Rust types utoipa documents in the OpenAPI document ([`EnvelopeBody`],
//!   [`GapData`], [`TokenExpiredData`], [`TokenRevokedData`], [`PublishRequest`], [`ReceiptBody`], [`Problem`]), through their
//!   `ToSchema` implementations; the frame bodies' types are the ones their encoders serialize;
//! - the OpenAPI document itself ([`ApiDoc`]) for the channel addresses, HTTP methods, parameters, security and
//!   refusals, so that the two documents cannot disagree;
//! - the event names the code writes ([`GAP_EVENT`], [`TOKEN_EXPIRED_EVENT`], [`TOKEN_REVOKED_EVENT`]);
//! - one example frame per message, written by the server's own encoders (`encode_event`, `encode_gap`, the
//!   stream route's `retry:`, `token-expired` and heartbeat frames) and read back with the SSE parser of
//!   [`storyline_hub::take_frame`]. `x-sse-frame` shows those bytes; the parsed fields are the example's headers
//!   and payload, which `asyncapi/validate.mjs` validates against the message's schemas: the encoders' real
//!   output is checked against the published schemas.
//!
//! AsyncAPI has no Server-Sent Events binding, so the stream is described with protocol `http`: each message is
//! one SSE frame, its SSE fields (`id`, `event`, `retry`) are the message's `headers`, its `data` line (one line
//! of JSON) is the payload, and the framing is spelled out in the descriptions and in `x-sse-frame`.
//!
//! The document describes storyline, the application: it *sends* the stream's frames and *receives* published
//! events, replying with a receipt or a problem.

use std::{borrow::Cow, time::Duration};

use bytes::BytesMut;
use serde_norway::{Mapping, Value};
use storyline_core::{
    EventData, EventId, EventType, GAP_EVENT, Gap, Metadata, StoredEvent, StoryId, TOKEN_EXPIRED_EVENT,
    TOKEN_REVOKED_EVENT,
};
use storyline_hub::{EventFrame, EventMeters, SseFrame, encode_event, encode_gap, encode_story_gap, take_frame};
use utoipa::{OpenApi, ToSchema};

use crate::{
    error::{ApiError, Problem},
    openapi::{
        ApiDoc, CURSOR_PATTERN, EnvelopeBody, GapData, PublishRequest, ReceiptBody, StoryGapData, TokenExpiredData,
        TokenRevokedData,
    },
    routes::{
        stream::{HEARTBEAT, encode_retry, encode_token_expired, encode_token_revoked},
        streams::cursor_line,
    },
};

/// The AsyncAPI version the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";
/// The version of the AsyncAPI HTTP bindings used.
const HTTP_BINDING_VERSION: &str = "0.3.0";
/// The OpenAPI operation ids of the two operations described (utoipa names them after the handlers).
const STREAM_OPERATION: &str = "stream";
const STREAMS_OPERATION: &str = "streams";
const PUBLISH_OPERATION: &str = "publish";
/// Component keys, used both where a component is defined and where it is referenced.
const STREAM_CHANNEL: &str = "storyStream";
const STREAMS_CHANNEL: &str = "storiesStream";
const EVENTS_CHANNEL: &str = "storyEvents";
const STORY_PARAMETER: &str = "story";
/// `storyline serve`'s default listen address (`STORYLINE_LISTEN`), the plain HTTP server's default host.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Something the document is generated from is not as expected: a bug in this module or in the OpenAPI
/// annotations it reads, never something a client controls.
#[derive(Debug, thiserror::Error)]
pub enum AsyncApiError {
    #[error("the OpenAPI document has no operation `{0}`")]
    MissingOperation(&'static str),
    #[error("the OpenAPI operation `{operation}` has no {location} parameter `{name}`")]
    MissingParameter { operation: &'static str, location: &'static str, name: &'static str },
    #[error("the OpenAPI document has no {0}")]
    MissingField(&'static str),
    #[error("the OpenAPI security scheme `{0}` has no AsyncAPI counterpart here")]
    UnsupportedSecurityScheme(String),
    #[error("an example fixture does not parse: {0}")]
    Fixture(String),
    #[error("the example frame for `{0}` is not one complete SSE frame")]
    Frame(&'static str),
    #[error("the example frame for `{message}` has no valid JSON data: {source}")]
    FrameData { message: &'static str, source: serde_json::Error },
    #[error("cannot represent the document as YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
}

/// An ordered YAML mapping from `key => value` pairs (values anything that converts into a [`Value`]).
macro_rules! map {
    ($($key:expr => $value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut mapping = Mapping::new();
        $( mapping.insert(Value::from($key), Value::from($value)); )*
        Value::Mapping(mapping)
    }};
}

/// The document as YAML (the form committed to `asyncapi/storyline.yaml`).
pub fn yaml() -> Result<String, AsyncApiError> {
    Ok(serde_norway::to_string(&document()?)?)
}

/// The document.
pub fn document() -> Result<Value, AsyncApiError> {
    let openapi = serde_norway::to_value(ApiDoc::openapi())?;
    let stream = Operation::find(&openapi, STREAM_OPERATION)?;
    let streams = Operation::find(&openapi, STREAMS_OPERATION)?;
    let publish = Operation::find(&openapi, PUBLISH_OPERATION)?;
    let schemas = Schemas::new()?;
    let info = get(&openapi, &["info"], "info")?;

    Ok(map! {
        "asyncapi" => ASYNCAPI_VERSION,
        "info" => map! {
            "title" => format!("{} streams", text(info, "title")?),
            "version" => text(info, "version")?,
            "description" => INFO_DESCRIPTION,
            "license" => map! {
                "name" => text(get(info, &["license"], "info.license")?, "name")?,
                "url" => "https://www.apache.org/licenses/LICENSE-2.0",
            },
        },
        "defaultContentType" => "application/json",
        "servers" => servers(),
        "channels" => map! {
            STREAM_CHANNEL => stream_channel(&stream)?,
            STREAMS_CHANNEL => streams_channel(&streams),
            EVENTS_CHANNEL => events_channel(&publish)?,
        },
        "operations" => map! {
            "streamStory" => stream_operation(&stream)?,
            "streamStories" => streams_operation(&streams)?,
            "publishEvent" => publish_operation(&publish)?,
        },
        "components" => map! {
            "schemas" => schemas.components(),
            "parameters" => map! { STORY_PARAMETER => story_parameter(&stream)? },
            "messages" => messages(&schemas, &publish)?,
            "securitySchemes" => security_schemes(&openapi)?,
        },
    })
}

const INFO_DESCRIPTION: &str = "\
Real-time story streams. Writers (people and AI agents) POST story events; readers subscribe to a story with \
Server-Sent Events (a browser's `EventSource`) and resume exactly where they left off with `Last-Event-ID`.

This document describes storyline itself: it *sends* the frames of a story's stream and *receives* published \
events. The HTTP side (history, health, metrics, every status code) is in the OpenAPI document \
(`openapi/openapi.json`, served at `/openapi.json`); both are generated from the same code.

AsyncAPI has no Server-Sent Events binding, so the stream uses protocol `http`: each message of the stream \
channel is one SSE frame (lines `field: value`, ended by a blank line). A message's `headers` are the frame's SSE \
fields (`id`, `event`, `retry`), its payload is the frame's `data` line (one line of JSON), and `x-sse-frame` \
holds the exact bytes the server writes for the message's example.";

fn servers() -> Value {
    let listen = |description: &str| map! { "default" => DEFAULT_LISTEN, "description" => description };
    map! {
        "http" => map! {
            "host" => "{listen}",
            "protocol" => "http",
            "protocolVersion" => "1.1",
            "title" => "Plain HTTP",
            "description" => "storyline's own listener without TLS: the default, and what a TLS-terminating proxy \
                or load balancer in front talks to. Such a proxy must not buffer `text/event-stream` responses \
                (the stream answers `X-Accel-Buffering: no`) and needs a read timeout above the heartbeat period.",
            "variables" => map! { "listen" => listen("`STORYLINE_LISTEN`, host:port") },
        },
        "https" => map! {
            "host" => "{listen}",
            "protocol" => "https",
            "protocolVersion" => "2",
            "title" => "TLS, HTTP/2",
            "description" => "With `STORYLINE_TLS_CERT_FILE` and `STORYLINE_TLS_KEY_FILE` storyline serves TLS \
                itself and offers HTTP/2 (ALPN `h2`) and HTTP/1.1. Over HTTP/2 a page's streams share one \
                connection instead of the browser's six per origin over HTTP/1.1.",
            "variables" => map! {
                "listen" => listen("`STORYLINE_LISTEN`, host:port (with a name the certificate covers)"),
            },
        },
    }
}

fn stream_channel(stream: &Operation<'_>) -> Result<Value, AsyncApiError> {
    Ok(map! {
        "address" => stream.path.as_str(),
        "title" => "Story stream",
        "description" => STREAM_CHANNEL_DESCRIPTION,
        "messages" => channel_messages(&STREAM_MESSAGES),
        "parameters" => map! { STORY_PARAMETER => reference(&["components", "parameters", STORY_PARAMETER]) },
    })
}

const STREAM_CHANNEL_DESCRIPTION: &str = "\
A story's events as Server-Sent Events: one HTTP `GET` answered `200` with an endless `text/event-stream` body \
(`Cache-Control: no-cache`, no content encoding). Frames, in order:

1. `retry: <ms>`: the reconnection delay for `EventSource`, `STORYLINE_RETRY_MS` plus up to 50% jitter per \
connection, so that readers dropped together do not come back together.
2. `gap`, when events due to the reader were trimmed by retention before it could get them, or went with their \
story when it expired (`STORYLINE_STORY_TTL_SECS`).
3. The story's events, in id order, one frame each (`id`, `event` = the event type, `data` = the envelope). \
Later `gap` frames may come between them if the reader fell behind retention.
4. `: keep-alive` comments every `STORYLINE_HEARTBEAT_SECS` (default 15), throughout.

How a stream ends: the client closes it; the token expires (a `token-expired` frame, then the server closes); \
the instance drains for a restart (a fresh `retry:` frame at the stream's own random moment in the drain \
window, then the server closes at that frame boundary); or the reader stopped reading for \
`STORYLINE_SLOW_CONSUMER_SECS` (the connection is cut). In every case the reader reconnects with \
`Last-Event-ID` and loses nothing. A broker outage does not end the stream: heartbeats continue and delivery \
resumes when the broker is back.";

fn events_channel(publish: &Operation<'_>) -> Result<Value, AsyncApiError> {
    Ok(map! {
        "address" => publish.path.as_str(),
        "title" => "Story events",
        "description" => "Where writers append events to a story: one `POST` per event, answered with the \
            event's receipt (or a problem). Appended events go out to every reader of the story's stream.",
        "messages" => channel_messages(&EVENTS_MESSAGES),
        "parameters" => map! { STORY_PARAMETER => reference(&["components", "parameters", STORY_PARAMETER]) },
    })
}

/// The `story` channel parameter, from the OpenAPI path parameter (AsyncAPI 3.0 parameters have no schema: the
/// pattern goes into the description and `x-pattern`).
fn story_parameter(stream: &Operation<'_>) -> Result<Value, AsyncApiError> {
    let param = stream.parameter("path", STORY_PARAMETER)?;
    let pattern = text(get(param, &["schema"], "story parameter schema")?, "pattern")?;
    Ok(map! {
        "description" => format!(
            "{}: matches `{pattern}` (any other is refused with 400).",
            text(param, "description")?
        ),
        "examples" => vec!["demo", "public:tale-42"],
        "x-pattern" => pattern,
    })
}

fn stream_operation(stream: &Operation<'_>) -> Result<Value, AsyncApiError> {
    let spec = StreamOperation {
        channel: STREAM_CHANNEL,
        messages: &STREAM_MESSAGES,
        query: &["last_event_id", "access_token"],
        required: &[],
        summary: "Every frame a reader of a story receives.",
        description: format!(
            "{STREAM_RESUME_DESCRIPTION}\n\nRefusals, before the stream opens (`application/problem+json`):\n{}",
            stream.refusals()?
        ),
    };
    spec.operation(stream)
}

/// What tells the two stream operations apart; the rest of their description is the same.
struct StreamOperation {
    channel: &'static str,
    messages: &'static [&'static str],
    /// The query parameters, from the OpenAPI operation, and those of them that are required.
    query: &'static [&'static str],
    required: &'static [&'static str],
    summary: &'static str,
    description: String,
}

impl StreamOperation {
    fn operation(self, op: &Operation<'_>) -> Result<Value, AsyncApiError> {
        let mut query = Mapping::new();
        for name in self.query {
            query.insert(Value::from(*name), op.parameter_schema("query", name)?);
        }
        let mut query = map! { "type" => "object", "properties" => Value::Mapping(query) };
        if let (Value::Mapping(m), false) = (&mut query, self.required.is_empty()) {
            m.insert("required".into(), self.required.to_vec().into());
        }
        let last_event_id = "Last-Event-ID";
        Ok(map! {
            "action" => "send",
            "channel" => reference(&["channels", self.channel]),
            "title" => text(op.operation, "summary")?,
            "summary" => self.summary,
            "description" => self.description,
            "security" => op.security()?,
            "bindings" => map! {
                "http" => map! {
                    "method" => op.method.to_uppercase(),
                    "query" => query,
                    "bindingVersion" => HTTP_BINDING_VERSION,
                },
            },
            "x-request-headers" => map! {
                "type" => "object",
                "properties" => map! { last_event_id => op.parameter_schema("header", last_event_id)? },
            },
            "messages" => operation_messages(self.channel, self.messages),
        })
    }
}

const STREAM_RESUME_DESCRIPTION: &str = "\
Where the stream starts is the resume id: the `Last-Event-ID` request header (see `x-request-headers`; \
`EventSource` sends it by itself when it reconnects), else the `last_event_id` query parameter (for clients that \
cannot set headers); the header wins, and an empty value counts as none.

- none: only events appended after the stream opened;
- `0`: every retained event from the oldest, then live ones;
- `<ms>-<seq>`: the events after that id, then live ones, with no gap or duplicate at the seam.

When the resume point is older than the retained history (`STORYLINE_RETENTION_*`), a `gap` frame comes first: \
`requested` is the id asked for, `resumed_from` the oldest retained event, delivered next. A resume id newer than \
anything in the story (a reset store) also gets a `gap`, then the retained history; so does a resume id of a story \
that expired (`STORYLINE_STORY_TTL_SECS`) and started afresh. Never a silent hole. \
`gap` and `token-expired` frames carry no `id`, so the client's last event id stays on the last event delivered: \
reconnecting with it loses nothing.

The token may come as `Authorization: Bearer`, as `?access_token=` (what `EventSource` can do) or in the \
`storyline_token` cookie; with `STORYLINE_PUBLIC_READ` the stories it matches need none.";

fn streams_channel(streams: &Operation<'_>) -> Value {
    map! {
        "address" => streams.path.as_str(),
        "title" => "Several stories on one stream",
        "description" => STREAMS_CHANNEL_DESCRIPTION,
        "messages" => channel_messages(&STREAMS_MESSAGES),
    }
}

const STREAMS_CHANNEL_DESCRIPTION: &str = "\
Several stories' events on one Server-Sent Events stream (`GET /v1/streams?stories=a,b,c`), so that a page showing \
many stories needs one connection (a browser opens at most six per origin over HTTP/1.1). It answers as the \
story stream does (`200`, an endless `text/event-stream`), with these differences:

1. After `retry:`, an id-only frame (`id: <cursor>`, nothing else) names every story's start position, so that a \
reader that reconnects before any event arrives resumes exactly. An SSE parser sets its last event id from it and \
dispatches nothing.
2. Every frame's `id` is the cursor: one position per story, in the order of `stories`, joined by `,` \
(`<ms>-<seq>`: after that event; `0`: from the oldest retained). An event's frame carries the cursor with its \
story advanced to it; its envelope names the story. Per story, events come in log order; across stories, in any \
interleaving.
3. A `gap` names its story and carries an `id`: the cursor with that story just before the event delivered next, \
so that a resume after it does not report the hole again.

`token-expired`, `retry:` and `: keep-alive` frames, the drain, slow consumers and broker outages are as on the \
story stream. The cursor costs O(stories) bytes on every frame (at most 41 per story).";

fn streams_operation(streams: &Operation<'_>) -> Result<Value, AsyncApiError> {
    let spec = StreamOperation {
        channel: STREAMS_CHANNEL,
        messages: &STREAMS_MESSAGES,
        query: &["stories", "last_event_id", "access_token"],
        required: &["stories"],
        summary: "Every frame a reader of several stories on one stream receives.",
        description: format!(
            "{STREAMS_RESUME_DESCRIPTION}\n\nRefusals, before the stream opens (`application/problem+json`); \
             nothing is opened on any of them:\n{}",
            streams.refusals()?
        ),
    };
    spec.operation(streams)
}

const STREAMS_RESUME_DESCRIPTION: &str = "\
`stories` names 1 to `STORYLINE_MAX_STORIES_PER_STREAM` (default 32) distinct stories; the token must be able \
to read every one. The connection counts as one stream against every limit.

The resume cursor is the `Last-Event-ID` request header (what `EventSource` sends back, unchanged, when it \
reconnects), else the `last_event_id` query parameter; the header wins, and an empty value counts as none. It \
must have one position per story. Without one, each story starts at its newest event at open (only new events); \
with one, each story continues after its position, with no gap or duplicate, or with a `gap` naming the story \
when its position fell out of the retained history.";

fn publish_operation(publish: &Operation<'_>) -> Result<Value, AsyncApiError> {
    let refusals = publish.refusals()?;
    Ok(map! {
        "action" => "receive",
        "channel" => reference(&["channels", EVENTS_CHANNEL]),
        "title" => text(publish.operation, "summary")?,
        "summary" => "Append an event to a story; readers of its stream receive it as a story event.",
        "description" => format!(
            "The event (`type`, `data`) is stored in the story's log and delivered to every reader. The reply is \
             its receipt: `201` when appended, `200` when the `Idempotency-Key` was already used on this story \
             within the window (nothing new is stored). A refused event is not stored; the reply is a \
             problem:\n{refusals}"
        ),
        "security" => publish.security()?,
        "bindings" => map! {
            "http" => map! { "method" => publish.method.to_uppercase(), "bindingVersion" => HTTP_BINDING_VERSION },
        },
        "messages" => operation_messages(EVENTS_CHANNEL, &EVENTS_MESSAGES[..1]),
        "reply" => map! {
            "channel" => reference(&["channels", EVENTS_CHANNEL]),
            "messages" => operation_messages(EVENTS_CHANNEL, &EVENTS_MESSAGES[1..]),
        },
    })
}

/// The stream channel's messages (component keys), in the order the descriptions present them.
const STREAM_MESSAGES: [&str; 6] = ["storyEvent", "gap", "tokenExpired", "tokenRevoked", "retry", "keepAlive"];
/// The many-story stream channel's messages: its own event, cursor and gap frames, then the frames it shares.
const STREAMS_MESSAGES: [&str; 7] =
    ["storiesEvent", "cursor", "storyGap", "tokenExpired", "tokenRevoked", "retry", "keepAlive"];
/// The events channel's messages: the request first, then the replies.
const EVENTS_MESSAGES: [&str; 4] = ["publishEvent", "receiptCreated", "receiptRepeated", "problem"];

fn channel_messages(keys: &[&str]) -> Value {
    let mut messages = Mapping::new();
    for key in keys {
        messages.insert(Value::from(*key), reference(&["components", "messages", key]));
    }
    Value::Mapping(messages)
}

fn operation_messages(channel: &str, keys: &[&str]) -> Value {
    keys.iter().map(|key| reference(&["channels", channel, "messages", key])).collect()
}

/// Every message. The stream's refusals are problems too, but they answer the stream's `GET` instead of opening
/// it, so they are listed in the stream operation's description rather than as frames.
fn messages(schemas: &Schemas, publish: &Operation<'_>) -> Result<Value, AsyncApiError> {
    let fixture = Fixture::new()?;
    let id_pattern = schemas.property_text::<EnvelopeBody>("id", "pattern")?;
    let type_pattern = schemas.property_text::<PublishRequest>("type", "pattern")?;

    let story_event = Example::from_frame("storyEvent", &encode_event(&fixture.event))?;
    let gap = Example::from_frame(
        "gap",
        &encode_gap(Gap { requested: EventId::new(1_732_406_000_000, 3), resumed_from: fixture.event.id }),
    )?;
    let token_expired = Example::from_frame("tokenExpired", &encode_token_expired(1_732_410_000))?;
    let revoked_by_sub = storyline_core::Revocation {
        target: storyline_core::RevocationTarget::sub("mallory").map_err(|e| AsyncApiError::Fixture(e.to_string()))?,
        until: 1_732_500_000,
    };
    let token_revoked = Example::from_frame("tokenRevoked", &encode_token_revoked(&revoked_by_sub))?;
    let retry = Example::from_frame("retry", &encode_retry(Duration::from_millis(2000)))?;
    let keep_alive = Example::from_frame("keepAlive", HEARTBEAT)?;
    // A stream of two stories, `demo` and one with no event yet, framed as the many-story route frames them: its
    // cursor line, then the shared bytes of the event's frame.
    let start = [EventId::new(1_732_406_000_000, 3), EventId::ZERO];
    let advanced = [fixture.event.id, EventId::ZERO];
    let stories_event = Example::from_frame(
        "storiesEvent",
        &concat(&[cursor_line(&advanced, false), EventFrame::new(&fixture.event, EventMeters::noop()).fields()]),
    )?;
    let cursor = Example::from_frame("cursor", &cursor_line(&start, true))?;
    let story_gap_at = Gap { requested: start[0], resumed_from: fixture.event.id };
    let story_gap = Example::from_frame(
        "storyGap",
        &concat(&[
            cursor_line(&[storyline_hub::position_after_gap(story_gap_at), EventId::ZERO], false),
            encode_story_gap(&fixture.event.story, story_gap_at),
        ]),
    )?;
    let heartbeat_comment = keep_alive.frame.comments.first().cloned().ok_or(AsyncApiError::Frame("keepAlive"))?;

    let request = PublishRequest {
        event_type: fixture.event.event_type.as_str().to_owned(),
        data: serde_json::from_str(fixture.event.data.as_str()).map_err(|e| AsyncApiError::Fixture(e.to_string()))?,
    };
    let receipt = serde_norway::to_value(fixture.event.receipt())?;
    let reserved = EventType::parse(GAP_EVENT).err().ok_or(AsyncApiError::Fixture("`gap` is accepted".into()))?;
    let problem = serde_norway::to_value(ApiError::BadEventType(reserved).problem())?;

    let request_content_type = publish.request_content_type()?;
    let idempotency_key = "Idempotency-Key";
    let story_event_fields = |id: Value| {
        sse_fields(
            &["id", "event"],
            map! {
                "id" => id,
                "event" => map! {
                    "type" => "string",
                    "pattern" => type_pattern.as_str(),
                    "not" => map! {
                        "anyOf" => vec![
                            map! { "enum" => vec![GAP_EVENT, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT] },
                            map! { "pattern" => RESERVED_TYPE_PATTERN },
                        ],
                    },
                    "description" => "The event type (SSE `event`). Never a reserved name: those are the \
                        control frames' and storyline's own.",
                },
            },
        )
    };
    let cursor_field = || {
        map! {
            "type" => "string",
            "pattern" => CURSOR_PATTERN,
            "description" => "The cursor (SSE `id`): one position per story, in the order of `stories`, joined by \
                `,`; what `Last-Event-ID` resumes every story after.",
        }
    };
    Ok(map! {
        "storiesEvent" => map! {
            "name" => "stories-event",
            "title" => "Story event, on a stream of several stories",
            "summary" => "One event of one of the stories: `id` the cursor, `event` its type, `data` the envelope.",
            "description" => "As a story event, but its `id` is the stream's cursor with this event's story at \
                this event (the other stories keep their positions); the envelope's `story` says which story it \
                is. The `event:` and `data:` lines are the very bytes every reader of the story gets.",
            "contentType" => "application/json",
            "headers" => story_event_fields(cursor_field()),
            "payload" => schemas.reference::<EnvelopeBody>(),
            "examples" => vec![stories_event.example("chapter", "A chapter of `demo`, the first of two stories")],
            "x-sse-frame" => stories_event.bytes.as_str(),
        },
        "cursor" => map! {
            "name" => "cursor",
            "title" => "Start positions",
            "summary" => "`id: <cursor>` alone, right after `retry:`: every story's start position.",
            "description" => "The first frame after `retry:` on a stream of several stories. An SSE parser sets its \
                last event id to it and dispatches nothing, so a reader that reconnects before any event arrives \
                resumes every story exactly. No `event` and no `data`.",
            "headers" => sse_fields(&["id"], map! { "id" => cursor_field() }),
            "examples" => vec![cursor.example("start", "Two stories: one after an event, one from its oldest")],
            "x-sse-frame" => cursor.bytes.as_str(),
        },
        "storyGap" => map! {
            "name" => GAP_EVENT,
            "title" => "Gap, on a stream of several stories",
            "summary" => "Events of `story` due to this reader were trimmed by retention: its delivery resumes from \
                `resumed_from`.",
            "description" => "As the story stream's `gap`, for one of the stories, which `story` names. Its `id` is \
                the cursor with that story just before `resumed_from`, so a resume after it does not report the \
                hole again.",
            "contentType" => "application/json",
            "headers" => sse_fields(
                &["id", "event"],
                map! { "id" => cursor_field(), "event" => map! { "const" => GAP_EVENT } },
            ),
            "payload" => schemas.reference::<StoryGapData>(),
            "examples" => vec![story_gap.example("trimmed", "A story's position older than its retained history")],
            "x-sse-frame" => story_gap.bytes.as_str(),
        },
        "storyEvent" => map! {
            "name" => "story-event",
            "title" => "Story event",
            "summary" => "One event of the story: `id` its id, `event` its type, `data` the envelope.",
            "description" => "The SSE `event` field is the event's type, so a browser listens with \
                `source.addEventListener('<type>', e => JSON.parse(e.data))`; `id` is the event id, which \
                `EventSource` remembers and sends back as `Last-Event-ID` when it reconnects. Ids are `<ms>-<seq>` \
                and strictly increase per story. `data` is the envelope on one line; its `data` member is the \
                publisher's JSON, verbatim (line breaks between JSON tokens become spaces). Every reader gets \
                every event, in order.",
            "contentType" => "application/json",
            "headers" => story_event_fields(map! {
                "type" => "string",
                "pattern" => id_pattern.as_str(),
                "description" => "The event id (SSE `id`): what `Last-Event-ID` resumes after.",
            }),
            "payload" => schemas.reference::<EnvelopeBody>(),
            "examples" => vec![story_event.example("chapter", "A chapter appended by an agent")],
            "x-sse-frame" => story_event.bytes.as_str(),
        },
        "gap" => map! {
            "name" => GAP_EVENT,
            "title" => "Gap",
            "summary" => "Events due to this reader were trimmed by retention: delivery resumes from `resumed_from`.",
            "description" => "Sent before the events that follow a hole: first on a stream whose resume point is \
                older than the retained history (or newer than anything in the story), and later if the reader \
                fell so far behind that retention trimmed events before it read them. `requested` is the \
                reader's position, `resumed_from` the id delivered next. No `id` field, so the client's last \
                event id is unchanged. A client that must not miss events refetches what it needs elsewhere, \
                or reports the loss.",
            "contentType" => "application/json",
            "headers" => sse_fields(&["event"], map! { "event" => map! { "const" => GAP_EVENT } }),
            "payload" => schemas.reference::<GapData>(),
            "examples" => vec![gap.example("trimmed", "A resume point older than the retained history")],
            "x-sse-frame" => gap.bytes.as_str(),
        },
        "tokenExpired" => map! {
            "name" => TOKEN_EXPIRED_EVENT,
            "title" => "Token expired",
            "summary" => "The reader's token expired; this is the stream's last frame and the server closes it.",
            "description" => "Sent when the token's `exp` passes (`expired_at`), then the server ends the stream. \
                Fetch a new token and reconnect with `Last-Event-ID`: nothing is lost. No `id` field.",
            "contentType" => "application/json",
            "headers" => sse_fields(&["event"], map! { "event" => map! { "const" => TOKEN_EXPIRED_EVENT } }),
            "payload" => schemas.reference::<TokenExpiredData>(),
            "examples" => vec![token_expired.example("expired", "The last frame of a stream whose token expired")],
            "x-sse-frame" => token_expired.bytes.as_str(),
        },
        "tokenRevoked" => map! {
            "name" => TOKEN_REVOKED_EVENT,
            "title" => "Token revoked",
            "summary" => "The reader's token was revoked; this is the stream's last frame and the server closes it.",
            "description" => "Sent within one heartbeat period of an admin revoking the token (`POST \
                /v1/admin/revocations`): by its `jti` (`revoked: jti`, this token alone) or every token of its \
                `sub` (`revoked: sub`). The server then ends the stream and answers the token 401 \
                `token-revoked` from then on: do not reconnect with it. A client that can get a new token may \
                try once with it and `Last-Event-ID` (a new token of a revoked `sub` is refused too). No `id` \
                field.",
            "contentType" => "application/json",
            "headers" => sse_fields(&["event"], map! { "event" => map! { "const" => TOKEN_REVOKED_EVENT } }),
            "payload" => schemas.reference::<TokenRevokedData>(),
            "examples" => vec![token_revoked.example("bySub", "The last frame of a stream whose subject was revoked")],
            "x-sse-frame" => token_revoked.bytes.as_str(),
        },
        "retry" => map! {
            "name" => "retry",
            "title" => "Reconnection delay",
            "summary" => "`retry: <ms>` alone: how long `EventSource` waits before reconnecting.",
            "description" => "The first frame of every stream: `STORYLINE_RETRY_MS` (default 2000) plus up to 50% \
                jitter, drawn per connection. Sent once more, freshly jittered, right before the server ends the \
                stream while draining for a restart, so that the instance's readers reconnect to other instances \
                spread out in time. No `event`, `id` or `data`: an SSE parser dispatches nothing for it.",
            "headers" => sse_fields(
                &["retry"],
                map! {
                    "retry" => map! {
                        "type" => "integer",
                        "minimum" => 0,
                        "description" => "Milliseconds (SSE `retry`).",
                    },
                },
            ),
            "examples" => vec![retry.example("default", "The default base delay, before jitter")],
            "x-sse-frame" => retry.bytes.as_str(),
        },
        "keepAlive" => map! {
            "name" => heartbeat_comment.as_str(),
            "title" => "Heartbeat",
            "summary" => format!("`: {heartbeat_comment}`, an SSE comment, every heartbeat period."),
            "description" => "Sent every `STORYLINE_HEARTBEAT_SECS` (default 15) on every stream, so that proxies \
                and load balancers keep an idle stream open and a dead client is noticed. A comment carries no \
                fields and no payload; SSE parsers ignore it.",
            "x-sse-frame" => keep_alive.bytes.as_str(),
        },
        "publishEvent" => map! {
            "name" => "publish",
            "title" => "Publish an event",
            "summary" => "The body of the `POST`: the event's type and its data.",
            "description" => "Event types match the pattern and are not `gap`, `token-expired` or `storyline.*` \
                (else 422); other members are refused. `data` is any JSON value, nested at most 64 levels. \
                Retry with the same `Idempotency-Key` after a timeout or a 503 `unconfirmed`: a repeat is answered \
                with the first receipt and stores nothing.",
            "contentType" => request_content_type.as_str(),
            "payload" => schemas.reference::<PublishRequest>(),
            "bindings" => map! {
                "http" => map! {
                    "headers" => map! {
                        "type" => "object",
                        "required" => vec!["Content-Type"],
                        "properties" => map! {
                            "Content-Type" => map! {
                                "type" => "string",
                                "enum" => vec![request_content_type.as_str()],
                            },
                            idempotency_key => publish.parameter_schema("header", idempotency_key)?,
                        },
                    },
                    "bindingVersion" => HTTP_BINDING_VERSION,
                },
            },
            "examples" => vec![map! {
                "name" => "chapter",
                "summary" => "An agent appends a chapter",
                "payload" => serde_norway::to_value(&request)?,
            }],
        },
        "receiptCreated" => receipt_message(schemas, 201, "Appended", "The event was appended.", &receipt),
        "receiptRepeated" => receipt_message(
            schemas,
            200,
            "Already appended",
            "The `Idempotency-Key` was already used on this story within the window: the first event's receipt; \
             nothing new was stored.",
            &receipt,
        ),
        "problem" => map! {
            "name" => "problem",
            "title" => "Refused",
            "summary" => "An RFC 9457 problem: the event was not stored (but see 503 `unconfirmed`).",
            "description" => "The status codes and their causes are in the operation's description and in the \
                OpenAPI document.",
            "contentType" => "application/problem+json",
            "payload" => schemas.reference::<Problem>(),
            "examples" => vec![map! {
                "name" => "reserved-type",
                "summary" => "A reserved event type (422)",
                "payload" => problem,
            }],
        },
    })
}

/// `storyline.*`: event types storyline keeps for itself (checked against `EventType::parse` by a test).
const RESERVED_TYPE_PATTERN: &str = "^storyline\\.";

/// Frames written as consecutive chunks, as one.
fn concat(chunks: &[bytes::Bytes]) -> Vec<u8> {
    chunks.iter().flat_map(|chunk| chunk.iter().copied()).collect()
}

fn receipt_message(schemas: &Schemas, status: u16, title: &str, summary: &str, receipt: &Value) -> Value {
    map! {
        "name" => format!("receipt-{status}"),
        "title" => title,
        "summary" => summary,
        "contentType" => "application/json",
        "payload" => schemas.reference::<ReceiptBody>(),
        "bindings" => map! { "http" => map! { "statusCode" => status, "bindingVersion" => HTTP_BINDING_VERSION } },
        "examples" => vec![map! { "name" => "chapter", "payload" => receipt.clone() }],
    }
}

/// The schema of a frame's SSE fields, as the message's `headers`: exactly these fields, no others.
fn sse_fields(required: &[&str], properties: Value) -> Value {
    map! {
        "type" => "object",
        "description" => "The frame's SSE fields other than `data` (not HTTP headers): a field absent here is \
            absent from the frame.",
        "required" => required.to_vec(),
        "properties" => properties,
        "additionalProperties" => false,
    }
}

fn security_schemes(openapi: &Value) -> Result<Value, AsyncApiError> {
    let schemes = get(openapi, &["components", "securitySchemes"], "components.securitySchemes")?;
    let Value::Mapping(schemes) = schemes else { return Err(AsyncApiError::MissingField("security schemes")) };
    let mut out = Mapping::new();
    for (name, scheme) in schemes {
        let key = name.as_str().unwrap_or_default().to_owned();
        let converted = match (text(scheme, "type")?.as_str(), scheme.get("in").and_then(Value::as_str)) {
            ("http", _) => {
                let kind = text(scheme, "scheme")?;
                let mut http = map! {
                    "type" => "http",
                    "scheme" => kind.as_str(),
                    "description" => format!("The token in `Authorization: {}`.", capitalised(&kind)),
                };
                if let (Value::Mapping(m), Some(format)) = (&mut http, scheme.get("bearerFormat")) {
                    m.insert("bearerFormat".into(), format.clone());
                }
                http
            }
            ("apiKey", Some(location @ ("query" | "header" | "cookie"))) => {
                let param = text(scheme, "name")?;
                let description = match location {
                    "query" => format!(
                        "The token as the `{param}` query parameter, for `EventSource`, which cannot set headers."
                    ),
                    "cookie" => format!("The token in the `{param}` cookie."),
                    _ => format!("The token in the `{param}` header."),
                };
                map! { "type" => "httpApiKey", "name" => param, "in" => location, "description" => description }
            }
            _ => return Err(AsyncApiError::UnsupportedSecurityScheme(key)),
        };
        out.insert(Value::from(key), converted);
    }
    Ok(Value::Mapping(out))
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// A `$ref` to a place in this document.
fn reference(path: &[&str]) -> Value {
    map! { "$ref" => format!("#/{}", path.join("/")) }
}

/// Looks up `path` in `value`; `what` names it in the error.
fn get<'a>(value: &'a Value, path: &[&str], what: &'static str) -> Result<&'a Value, AsyncApiError> {
    path.iter().try_fold(value, |v, key| v.get(*key)).ok_or(AsyncApiError::MissingField(what))
}

/// The string at `key` of `value`.
fn text(value: &Value, key: &'static str) -> Result<String, AsyncApiError> {
    value.get(key).and_then(Value::as_str).map(str::to_owned).ok_or(AsyncApiError::MissingField(key))
}

/// One operation of the OpenAPI document, found by its id.
struct Operation<'a> {
    id: &'static str,
    path: String,
    method: String,
    operation: &'a Value,
}

impl<'a> Operation<'a> {
    fn find(openapi: &'a Value, id: &'static str) -> Result<Self, AsyncApiError> {
        let Some(Value::Mapping(paths)) = openapi.get("paths") else {
            return Err(AsyncApiError::MissingField("paths"));
        };
        paths
            .iter()
            .find_map(|(path, item)| {
                let Value::Mapping(methods) = item else { return None };
                methods.iter().find_map(|(method, operation)| {
                    (operation.get("operationId").and_then(Value::as_str) == Some(id)).then(|| Operation {
                        id,
                        path: path.as_str().unwrap_or_default().to_owned(),
                        method: method.as_str().unwrap_or_default().to_owned(),
                        operation,
                    })
                })
            })
            .ok_or(AsyncApiError::MissingOperation(id))
    }

    fn parameter(&self, location: &'static str, name: &'static str) -> Result<&'a Value, AsyncApiError> {
        let missing = AsyncApiError::MissingParameter { operation: self.id, location, name };
        let Some(Value::Sequence(params)) = self.operation.get("parameters") else { return Err(missing) };
        params
            .iter()
            .find(|p| {
                p.get("in").and_then(Value::as_str) == Some(location)
                    && p.get("name").and_then(Value::as_str) == Some(name)
            })
            .ok_or(missing)
    }

    /// A parameter's schema with its description, as one schema.
    fn parameter_schema(&self, location: &'static str, name: &'static str) -> Result<Value, AsyncApiError> {
        let param = self.parameter(location, name)?;
        let mut schema = get(param, &["schema"], "parameter schema")?.clone();
        if let (Value::Mapping(m), Some(description)) = (&mut schema, param.get("description")) {
            m.insert("description".into(), description.clone());
        }
        Ok(schema)
    }

    /// The operation's security requirements, as references to the security schemes (any one of them suffices).
    fn security(&self) -> Result<Value, AsyncApiError> {
        let Some(Value::Sequence(requirements)) = self.operation.get("security") else {
            return Err(AsyncApiError::MissingField("operation security"));
        };
        Ok(requirements
            .iter()
            .filter_map(|r| match r {
                Value::Mapping(m) => Some(m.keys().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .map(|name| reference(&["components", "securitySchemes", &name]))
            .collect())
    }

    /// The operation's error responses, one Markdown list item each: `- `status`: description`.
    fn refusals(&self) -> Result<String, AsyncApiError> {
        let Some(Value::Mapping(responses)) = self.operation.get("responses") else {
            return Err(AsyncApiError::MissingField("operation responses"));
        };
        Ok(responses
            .iter()
            .filter_map(|(status, response)| {
                let status = status.as_str()?;
                let description = response.get("description").and_then(Value::as_str)?;
                (!status.starts_with('2')).then(|| format!("- `{status}`: {description}"))
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The request body's media type.
    fn request_content_type(&self) -> Result<String, AsyncApiError> {
        let Some(Value::Mapping(content)) = self.operation.get("requestBody").and_then(|b| b.get("content")) else {
            return Err(AsyncApiError::MissingField("request body content"));
        };
        content
            .keys()
            .find_map(Value::as_str)
            .map(str::to_owned)
            .ok_or(AsyncApiError::MissingField("request body media type"))
    }
}

/// The payload schemas, from the types' `ToSchema` implementations (the ones the OpenAPI document uses).
struct Schemas(Vec<(Cow<'static, str>, Value)>);

impl Schemas {
    fn new() -> Result<Self, AsyncApiError> {
        fn entry<T: ToSchema>() -> Result<(Cow<'static, str>, Value), AsyncApiError> {
            Ok((T::name(), serde_norway::to_value(T::schema())?))
        }
        Ok(Self(vec![
            entry::<EnvelopeBody>()?,
            entry::<GapData>()?,
            entry::<StoryGapData>()?,
            entry::<TokenExpiredData>()?,
            entry::<TokenRevokedData>()?,
            entry::<crate::openapi::RevokedBy>()?,
            entry::<PublishRequest>()?,
            entry::<ReceiptBody>()?,
            entry::<Problem>()?,
        ]))
    }

    fn components(&self) -> Value {
        Value::Mapping(self.0.iter().map(|(name, schema)| (Value::from(name.as_ref()), schema.clone())).collect())
    }

    fn reference<T: ToSchema>(&self) -> Value {
        reference(&["components", "schemas", &T::name()])
    }

    /// A string keyword of one property of `T`'s schema, e.g. the `pattern` of `EnvelopeBody.id`.
    fn property_text<T: ToSchema>(
        &self,
        property: &'static str,
        keyword: &'static str,
    ) -> Result<String, AsyncApiError> {
        let name = T::name();
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, schema)| schema.get("properties")?.get(property)?.get(keyword)?.as_str())
            .map(str::to_owned)
            .ok_or(AsyncApiError::MissingField(keyword))
    }
}

/// The story event the examples are made of.
struct Fixture {
    event: StoredEvent,
}

impl Fixture {
    fn new() -> Result<Self, AsyncApiError> {
        let fixture = |e: &dyn std::fmt::Display| AsyncApiError::Fixture(e.to_string());
        let event = StoredEvent {
            id: EventId::new(1_732_406_400_000, 0),
            story: StoryId::parse("demo").map_err(|e| fixture(&e))?,
            event_type: EventType::parse("chapter").map_err(|e| fixture(&e))?,
            data: EventData::from_json_text(r#"{"text":"Once upon a time"}"#).map_err(|e| fixture(&e))?,
            author: "agent-7".into(),
            ts: 1_732_406_400_000,
            meta: Metadata::new(),
        };
        Ok(Self { event })
    }
}

/// One frame as an encoder wrote it, and as an SSE parser reads it.
struct Example {
    bytes: String,
    frame: SseFrame,
    payload: Option<Value>,
}

impl Example {
    fn from_frame(message: &'static str, bytes: &[u8]) -> Result<Self, AsyncApiError> {
        let mut buf = BytesMut::from(bytes);
        let frame = take_frame(&mut buf).filter(|_| buf.is_empty()).ok_or(AsyncApiError::Frame(message))?;
        // Parsed into a YAML value directly, so that the example keeps the order of the members on the wire.
        let payload = frame
            .data
            .as_deref()
            .map(serde_json::from_str::<Value>)
            .transpose()
            .map_err(|source| AsyncApiError::FrameData { message, source })?;
        Ok(Self { bytes: String::from_utf8_lossy(bytes).into_owned(), frame, payload })
    }

    /// The AsyncAPI message example: the frame's SSE fields as headers, its data as the payload.
    fn example(&self, name: &str, summary: &str) -> Value {
        let mut headers = Mapping::new();
        if let Some(id) = &self.frame.id {
            headers.insert("id".into(), id.as_str().into());
        }
        if let Some(event) = &self.frame.event {
            headers.insert("event".into(), event.as_str().into());
        }
        if let Some(retry) = self.frame.retry {
            headers.insert("retry".into(), retry.into());
        }
        let mut example = map! { "name" => name, "summary" => summary, "headers" => Value::Mapping(headers) };
        if let (Value::Mapping(m), Some(payload)) = (&mut example, &self.payload) {
            m.insert("payload".into(), payload.clone());
        }
        example
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::PartialSchema;

    use super::*;

    fn doc() -> Value {
        document().expect("the document generates")
    }

    /// Follows a local `$ref` (`#/a/b/c`) in `doc`.
    fn resolve<'a>(doc: &'a Value, reference: &Value) -> &'a Value {
        let target = reference.get("$ref").and_then(Value::as_str).expect("a $ref");
        let path = target.strip_prefix("#/").unwrap_or_else(|| panic!("{target} is not local"));
        path.split('/').try_fold(doc, |v, key| v.get(key)).unwrap_or_else(|| panic!("{target} does not resolve"))
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        match value {
            Value::Mapping(m) => m.keys().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => BTreeSet::new(),
        }
    }

    fn walk_refs<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
        match value {
            Value::Mapping(m) => {
                if m.contains_key("$ref") {
                    found.push(value);
                }
                m.values().for_each(|v| walk_refs(v, found));
            }
            Value::Sequence(s) => s.iter().for_each(|v| walk_refs(v, found)),
            _ => {}
        }
    }

    #[test]
    fn the_yaml_is_the_document_and_states_its_version() {
        let text = yaml().unwrap();
        let parsed: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(parsed, doc(), "the YAML reads back as the document");
        assert!(text.starts_with(&format!("asyncapi: {ASYNCAPI_VERSION}\n")), "{}", &text[..40]);
    }

    #[test]
    fn the_stream_channel_is_the_stream_route_with_the_story_parameter_and_its_pattern() {
        let doc = doc();
        let channel = &doc["channels"][STREAM_CHANNEL];
        assert_eq!(channel["address"].as_str(), Some("/v1/stories/{story}/stream"));
        assert_eq!(doc["channels"][EVENTS_CHANNEL]["address"].as_str(), Some("/v1/stories/{story}/events"));
        let story = resolve(&doc, &channel["parameters"][STORY_PARAMETER]);
        let pattern = story["x-pattern"].as_str().unwrap();
        assert_eq!(pattern, "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", "the OpenAPI path parameter's pattern");
        assert!(story["description"].as_str().unwrap().contains(pattern), "the pattern is in the description too");
        for example in story["examples"].as_sequence().unwrap() {
            let example = example.as_str().unwrap();
            assert!(StoryId::parse(example).is_ok(), "example story id {example:?} is one the server accepts");
        }
        let binding = &doc["operations"]["streamStory"]["bindings"]["http"];
        assert_eq!(binding["method"].as_str(), Some("GET"));
        assert_eq!(
            keys(&binding["query"]["properties"]),
            BTreeSet::from(["last_event_id".into(), "access_token".into()])
        );
        let headers = &doc["operations"]["streamStory"]["x-request-headers"]["properties"];
        assert!(headers["Last-Event-ID"]["pattern"].as_str().is_some(), "the resume header, with its pattern");
    }

    #[test]
    fn every_frame_the_stream_writes_is_a_message_of_the_stream_operation() {
        let doc = doc();
        let operation = &doc["operations"]["streamStory"];
        assert_eq!(operation["action"].as_str(), Some("send"), "storyline sends the stream");
        let messages: Vec<&Value> =
            operation["messages"].as_sequence().unwrap().iter().map(|r| resolve(&doc, resolve(&doc, r))).collect();
        let names: BTreeSet<&str> = messages.iter().filter_map(|m| m["name"].as_str()).collect();
        for name in [GAP_EVENT, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT, "keep-alive", "retry", "story-event"] {
            assert!(names.contains(name), "a message named {name:?} among {names:?}");
        }
        for (key, event) in
            [("gap", GAP_EVENT), ("tokenExpired", TOKEN_EXPIRED_EVENT), ("tokenRevoked", TOKEN_REVOKED_EVENT)]
        {
            let message = &doc["components"]["messages"][key];
            assert_eq!(message["headers"]["properties"]["event"]["const"].as_str(), Some(event), "{key}");
            assert!(message["headers"]["properties"].get("id").is_none(), "{key} frames carry no id");
            assert_eq!(message["examples"][0]["headers"]["event"].as_str(), Some(event), "{key} example");
        }
        let story_event = &doc["components"]["messages"]["storyEvent"];
        let reserved = &story_event["headers"]["properties"]["event"]["not"]["anyOf"][0]["enum"];
        assert_eq!(
            reserved,
            &Value::from(vec![GAP_EVENT, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT]),
            "story events never use those names"
        );
    }

    /// `x-sse-frame` is what the encoder writes for the message's example, byte for byte: the encoders are the
    /// ones the stream route uses, and the examples carry their output.
    #[test]
    fn each_frame_is_what_the_server_writes_for_the_example() {
        let doc = doc();
        let messages = &doc["components"]["messages"];
        let frame = |key: &str| messages[key]["x-sse-frame"].as_str().unwrap().to_owned();
        let example = |key: &str| messages[key]["examples"][0].clone();

        let gap: GapData = serde_norway::from_value(example("gap")["payload"].clone()).unwrap();
        let written = encode_gap(Gap { requested: gap.requested, resumed_from: gap.resumed_from });
        assert_eq!(frame("gap").as_bytes(), &written[..]);

        let expired: TokenExpiredData = serde_norway::from_value(example("tokenExpired")["payload"].clone()).unwrap();
        assert_eq!(frame("tokenExpired").as_bytes(), &encode_token_expired(expired.expired_at)[..]);

        let revoked: TokenRevokedData = serde_norway::from_value(example("tokenRevoked")["payload"].clone()).unwrap();
        assert_eq!(revoked.revoked, crate::openapi::RevokedBy::Sub);
        let by_sub =
            storyline_core::Revocation { target: storyline_core::RevocationTarget::sub("anyone").unwrap(), until: 1 };
        assert_eq!(frame("tokenRevoked").as_bytes(), &encode_token_revoked(&by_sub)[..]);

        let retry = example("retry")["headers"]["retry"].as_u64().unwrap();
        assert_eq!(frame("retry").as_bytes(), &encode_retry(Duration::from_millis(retry))[..]);

        assert_eq!(frame("keepAlive").as_bytes(), HEARTBEAT);

        let story_event = example("storyEvent");
        let envelope: EnvelopeBody = serde_norway::from_value(story_event["payload"].clone()).unwrap();
        let stored = StoredEvent {
            id: EventId::parse(&envelope.id).unwrap(),
            story: StoryId::parse(&envelope.story).unwrap(),
            event_type: EventType::parse(&envelope.event_type).unwrap(),
            data: EventData::from_json_text(&envelope.data.to_string()).unwrap(),
            author: envelope.author,
            ts: envelope.ts,
            meta: Metadata::new(),
        };
        assert_eq!(frame("storyEvent").as_bytes(), &encode_event(&stored)[..]);
        assert_eq!(story_event["headers"]["id"].as_str(), Some(envelope.id.as_str()), "SSE id = event id");
        assert_eq!(story_event["headers"]["event"].as_str(), Some(envelope.event_type.as_str()), "SSE event = type");
    }

    #[test]
    fn payloads_reference_the_component_schemas_of_the_openapi_types() {
        let doc = doc();
        let messages = &doc["components"]["messages"];
        for (message, schema, component) in [
            ("storyEvent", EnvelopeBody::name(), serde_norway::to_value(EnvelopeBody::schema()).unwrap()),
            ("gap", GapData::name(), serde_norway::to_value(GapData::schema()).unwrap()),
            ("tokenExpired", TokenExpiredData::name(), serde_norway::to_value(TokenExpiredData::schema()).unwrap()),
            ("tokenRevoked", TokenRevokedData::name(), serde_norway::to_value(TokenRevokedData::schema()).unwrap()),
            ("publishEvent", PublishRequest::name(), serde_norway::to_value(PublishRequest::schema()).unwrap()),
            ("receiptCreated", ReceiptBody::name(), serde_norway::to_value(ReceiptBody::schema()).unwrap()),
            ("receiptRepeated", ReceiptBody::name(), serde_norway::to_value(ReceiptBody::schema()).unwrap()),
            ("problem", Problem::name(), serde_norway::to_value(Problem::schema()).unwrap()),
        ] {
            let payload = &messages[message]["payload"];
            assert_eq!(payload["$ref"].as_str(), Some(format!("#/components/schemas/{schema}").as_str()), "{message}");
            assert_eq!(resolve(&doc, payload), &component, "{message}: the component is the type's own schema");
        }
        let openapi = serde_norway::to_value(ApiDoc::openapi()).unwrap();
        for (name, schema) in doc["components"]["schemas"].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            assert_eq!(&openapi["components"]["schemas"][name], schema, "{name} is the same in the OpenAPI document");
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let mut refs = Vec::new();
        walk_refs(&doc, &mut refs);
        assert!(refs.len() > 20, "{} references", refs.len());
        for reference in refs {
            resolve(&doc, reference);
        }
    }

    /// The examples are what the encoders write: their payloads have exactly the members the schema lists, so a
    /// member renamed in an encoder (or in a schema type) shows here, not only in the YAML.
    #[test]
    fn example_payloads_have_exactly_the_members_of_their_schemas() {
        let doc = doc();
        let mut checked = 0;
        for (key, message) in doc["components"]["messages"].as_mapping().unwrap() {
            let Some(examples) = message["examples"].as_sequence() else { continue };
            for example in examples {
                let Some(payload) = example.get("payload") else { continue };
                let schema = resolve(&doc, &message["payload"]);
                assert_eq!(keys(payload), keys(&schema["properties"]), "{key:?}: example members vs schema properties");
                let required: BTreeSet<String> = schema["required"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
                assert!(required.is_subset(&keys(payload)), "{key:?}: the example has every required member");
                checked += 1;
            }
        }
        assert_eq!(checked, 10, "every message with a payload has an example");
    }

    #[test]
    fn the_reserved_type_pattern_matches_what_event_types_refuse() {
        for reserved in [GAP_EVENT, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT, "storyline.tick", "storyline.x.y"] {
            assert!(EventType::parse(reserved).is_err(), "{reserved:?} is refused");
        }
        for allowed in ["storyline", "storylines.x", "chapter"] {
            assert!(EventType::parse(allowed).is_ok(), "{allowed:?} is accepted");
        }
        assert_eq!(RESERVED_TYPE_PATTERN, "^storyline\\.", "the prefix the tests above exercise");
    }

    #[test]
    fn security_schemes_are_the_three_ways_a_token_travels() {
        let doc = doc();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["type"].as_str(), Some("http"));
        assert_eq!(schemes["bearer"]["scheme"].as_str(), Some("bearer"));
        assert_eq!(schemes["access_token"]["in"].as_str(), Some("query"));
        assert_eq!(schemes["access_token"]["name"].as_str(), Some(crate::auth::TOKEN_QUERY));
        assert_eq!(schemes["cookie"]["in"].as_str(), Some("cookie"));
        assert_eq!(schemes["cookie"]["name"].as_str(), Some(crate::auth::TOKEN_COOKIE));
        for operation in ["streamStory", "publishEvent"] {
            let security = doc["operations"][operation]["security"].as_sequence().unwrap();
            assert_eq!(security.len(), 3, "{operation}: any of the three");
            for scheme in security {
                resolve(&doc, scheme);
            }
        }
    }

    #[test]
    fn the_publish_operation_receives_the_request_and_replies_with_receipts_or_a_problem() {
        let doc = doc();
        let operation = &doc["operations"]["publishEvent"];
        assert_eq!(operation["action"].as_str(), Some("receive"));
        assert_eq!(operation["bindings"]["http"]["method"].as_str(), Some("POST"));
        let request = resolve(&doc, resolve(&doc, &operation["messages"][0]));
        assert!(request["bindings"]["http"]["headers"]["properties"].get("Idempotency-Key").is_some());
        let statuses: Vec<u64> = operation["reply"]["messages"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|r| resolve(&doc, resolve(&doc, r))["bindings"]["http"]["statusCode"].as_u64())
            .collect();
        assert_eq!(statuses, [201, 200]);
    }
}
