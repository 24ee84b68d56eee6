//! `POST /v1/stories/{story}/events`: append an event to a story.
//!
//! Checks run cheapest first and nothing is appended unless all pass: token (401), story id (400), scope (403),
//! `Idempotency-Key` (400), media type (415), size (413, before reading a declared-too-large body), JSON syntax
//! (400), shape and event type (422). The answer (201, or 200 for an idempotent replay) is sent only after the
//! broker holds the event.
//!
//! Idempotency (IETF httpapi Idempotency-Key draft): the key is remembered with a fingerprint of the request
//! (SHA-256 of the event type and data as stored; the method and story are fixed by the route and the key's
//! scope). A repeat with the same fingerprint is answered 200 with the first receipt; the key reused with another
//! fingerprint is 422 `idempotency-key-mismatch` and stores nothing. A request whose key's first request is still
//! in flight waits for it (the broker's check-and-append is one atomic step per story), then gets one of those
//! two answers: never 409, on any instance, with either broker.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, http::header, post, web};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use storyline_core::{EventData, EventType, Idempotency, IdempotencyKey, Metadata, NewEvent};

use crate::{
    auth::Principal,
    error::ApiError,
    meters,
    openapi::{PublishRequest, ReceiptBody},
    startup::AppState,
};

/// The request body. Unknown fields are rejected so that typos (`"dta"`) are not silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Publish an event to a story.
#[utoipa::path(
    post,
    path = "/v1/stories/{story}/events",
    tag = "events",
    params(
        ("story" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", description = "Story id"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,128}$", description = "1..128 visible ASCII characters. Within the idempotency window (default 24 h), a repeat on the same story with the same event (type and data) returns 200 with the first event's receipt and appends nothing; the key reused with a different event is 422 `idempotency-key-mismatch` and appends nothing. A repeat sent while the first request with the key is still being appended waits for it (serialised, on every instance) and then gets one of those answers; it is never answered 409."),
    ),
    request_body(content = PublishRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Appended", body = ReceiptBody),
        (status = 200, description = "Already appended with this Idempotency-Key; nothing new was stored", body = ReceiptBody),
        (status = 400, description = "Bad story id, Idempotency-Key or malformed JSON (`malformed-json`), or a body that ended before it was complete (`incomplete-body`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks write scope for this story (`forbidden`), or the client address is not allowed (`ip-denied`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the limit", body = crate::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body is JSON but not a valid event (shape, or event type invalid or reserved: `invalid-event`), or the Idempotency-Key was already used on this story for a different event (`idempotency-key-mismatch`; nothing was appended, and retrying will not help: use a new key)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Publish rate exceeded: per principal (by tier) or per story (`rate-limited`); see Retry-After. Nothing was appended", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable (`unavailable`): nothing was stored. Or the append was sent to the broker but not confirmed in time (`unconfirmed`): the event may have been stored, and a retry with the same Idempotency-Key answers 200 with its receipt if it was. See Retry-After: whole seconds drawn per response from [base, 2 x base] (base `STORYLINE_BROKER_RETRY_AFTER_SECS`, default 2), so writers turned away together do not return together", body = crate::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = []))
)]
#[post("/v1/stories/{story}/events")]
pub(crate) async fn publish(
    req: HttpRequest,
    principal: Principal,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrived = std::time::Instant::now();
    let story = super::story_from_path(&path)?;
    principal.require_write(&story)?;
    state.limits.check_publish(&principal, &story).await?;
    let idempotency_key = match req.headers().get("idempotency-key") {
        Some(v) => Some(IdempotencyKey::parse(v.to_str().unwrap_or("\u{0}"))?),
        None => None,
    };
    require_json(&req)?;
    let body = read_limited(&req, payload, state.config.body_limit_bytes).await?;
    let (event_type, data) = parse_body(&body)?;

    let mut meta = Metadata::new();
    crate::telemetry::inject_current(&mut meta, req.headers());
    let event = NewEvent { event_type, data, author: principal.sub.clone(), ts: super::now_ms(), meta };
    let idempotency = idempotency_key.map(|key| Idempotency::for_event(key, &event));
    let appended = super::with_broker(
        state.config.broker_timeout,
        state.config.retry_after_secs,
        super::Effect::Append,
        state.broker.append(&story, event, idempotency.as_ref()),
    )
    .await?;

    meters::publish_duration(arrived.elapsed().as_secs_f64());
    let receipt = appended.receipt;
    if appended.duplicate {
        meters::counter(meters::IDEMPOTENT_REPLAYS);
        Ok(HttpResponse::Ok().json(receipt))
    } else {
        meters::event_published(&state.event_labels, &receipt.story, &receipt.event_type, principal.tier);
        Ok(HttpResponse::Created().json(receipt))
    }
}

pub(super) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = matches!(
        req.mime_type(),
        Ok(Some(m)) if m.type_() == mime::APPLICATION && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    );
    if is_json { Ok(()) } else { Err(ApiError::UnsupportedMediaType) }
}

/// Reads the body, refusing (without reading further) anything over `limit` bytes.
pub(super) async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::IncompleteBody(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Syntax errors are 400; valid JSON that is not an event is 422.
pub(crate) fn parse_body(body: &[u8]) -> Result<(EventType, EventData), ApiError> {
    let parsed: Body<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.classify() != serde_json::error::Category::Data {
            return ApiError::MalformedJson(e.to_string());
        }
        // serde stops at the first error, so a shape error can hide a syntax error further on (`{"x"`, `1 2`):
        // only a body that is JSON throughout is 422.
        match syntax_error(body) {
            Some(syntax) => ApiError::MalformedJson(syntax),
            None => ApiError::InvalidEvent(format!("expected {{\"type\": string, \"data\": any JSON}}: {e}")),
        }
    })?;
    let event_type = EventType::parse(&parsed.event_type)?;
    let data = EventData::from_raw(parsed.data).map_err(|e| ApiError::InvalidEvent(e.to_string()))?;
    Ok((event_type, data))
}

/// Why `body` is not one JSON text, if it is not: UTF-8, then grammar (`IgnoredAny` allocates nothing, but skips
/// strings without checking their encoding, hence the UTF-8 check first). Runs on the error path only.
fn syntax_error(body: &[u8]) -> Option<String> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str::<serde::de::IgnoredAny>(text).err().map(|e| e.to_string()),
        Err(e) => Some(format!("body is not UTF-8: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_are_classified_as_the_contract_says() {
        let cases: &[(&str, u16)] = &[
            ("{", 400),
            ("not json", 400),
            ("{\"type\":\"a\",\"data\":1} trailing", 400),
            ("[]", 422),
            ("{\"type\":\"a\"}", 422),
            ("{\"data\":1}", 422),
            ("{\"type\":1,\"data\":1}", 422),
            ("{\"type\":\"a\",\"data\":1,\"extra\":1}", 422),
            ("{\"type\":\"Bad\",\"data\":1}", 422),
            ("{\"type\":\"gap\",\"data\":1}", 422),
            // Found by fuzzing: a shape error first, a syntax error after it. Not JSON, so 400.
            ("{\"x\"", 400),
            ("{\"type\":1", 400),
            ("1 2", 400),
            ("{\"type\":\"a\",\"x\":\"\u{fffd}\"}", 422),
        ];
        for (body, status) in cases {
            let got = parse_body(body.as_bytes()).err().map(|e| actix_web::ResponseError::status_code(&e).as_u16());
            assert_eq!(got, Some(*status), "case {body:?}");
        }
    }

    #[test]
    fn invalid_utf8_after_a_shape_error_is_still_400() {
        // Found by fuzzing: an unknown field first, then a string that is not UTF-8.
        let body = b"{\"type\":\"chapter\",\"3data\":{\"te\xf8t\":1}}";
        let got = parse_body(body).err().map(|e| actix_web::ResponseError::status_code(&e).as_u16());
        assert_eq!(got, Some(400));
    }

    #[test]
    fn escaped_strings_in_type_are_parsed_before_validation() {
        assert!(parse_body(br#"{"type":"ch\u0061pter","data":null}"#).is_ok());
        assert!(parse_body(br#"{"type":"a\nid: 1","data":null}"#).is_err());
    }
}
