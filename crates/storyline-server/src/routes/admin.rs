//! `POST /v1/admin/revocations` (revoke a token by its `jti`, or every token of a `sub`, until a time) and
//! `GET /v1/admin/revocations` (the entries in force). Admin tier only; every call is audited (`admin_action`, and
//! a `revocation` event naming what was revoked).
//!
//! A revocation applies on this instance as soon as the answer is sent, and on every instance sharing the broker
//! within one heartbeat period: requests with the token get 401 `token-revoked`, and open streams end with an
//! `event: token-revoked` frame (see `revocation`).

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use storyline_core::{Revocation, RevocationTarget};

use crate::{
    auth::{Principal, Tier},
    error::ApiError,
    revocation::now_secs,
    startup::AppState,
};

/// The longest revocation a request may set: ten years, the longest lifetime `storyline token` mints.
pub const MAX_REVOCATION_SECS: u64 = 10 * 365 * 24 * 60 * 60;

/// The largest request body accepted: a `jti` or `sub` is at most 256 bytes.
const MAX_BODY_BYTES: usize = 4 * 1024;

/// A revocation to store: exactly one of `jti` and `sub`, and until when.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    /// Revoke the one token with this `jti` claim.
    #[schema(min_length = 1, max_length = 256)]
    pub jti: Option<String>,
    /// Revoke every token with this `sub` claim.
    #[schema(min_length = 1, max_length = 256)]
    pub sub: Option<String>,
    /// Until when, seconds since the Unix epoch: after now, at most ten years ahead. For a `jti`, the token's
    /// `exp` is enough. Revoking the same `jti` or `sub` again replaces the entry (to extend or shorten it).
    pub until: u64,
}

/// One revocation in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevocationBody {
    /// The revoked token's `jti` (absent when the entry names a `sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The revoked subject (absent when the entry names a `jti`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Until when, seconds since the Unix epoch.
    pub until: u64,
}

impl From<&Revocation> for RevocationBody {
    fn from(entry: &Revocation) -> Self {
        let id = Some(entry.target.id().to_owned());
        match entry.target {
            RevocationTarget::Jti(_) => Self { jti: id, sub: None, until: entry.until },
            RevocationTarget::Sub(_) => Self { jti: None, sub: id, until: entry.until },
        }
    }
}

/// The revocations in force.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevocationsBody {
    /// `jti` entries first, each kind by id.
    pub revocations: Vec<RevocationBody>,
}

fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.tier == Tier::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("revocations are managed by admin-tier tokens only".into()))
    }
}

/// Parses and checks a revocation request at `now`.
pub(crate) fn parse_request(body: &[u8], now: u64) -> Result<Revocation, ApiError> {
    let request: RevocationRequest = serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            ApiError::InvalidRevocation(format!("expected {{\"jti\" or \"sub\": string, \"until\": integer}}: {e}"))
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })?;
    let target = match (request.jti.as_deref(), request.sub.as_deref()) {
        (Some(jti), None) => RevocationTarget::jti(jti),
        (None, Some(sub)) => RevocationTarget::sub(sub),
        _ => return Err(ApiError::InvalidRevocation("name exactly one of `jti` and `sub`".into())),
    }
    .map_err(|e| ApiError::InvalidRevocation(e.to_string()))?;
    if request.until <= now {
        return Err(ApiError::InvalidRevocation(format!("`until` ({}) is not after now ({now})", request.until)));
    }
    if request.until - now > MAX_REVOCATION_SECS {
        return Err(ApiError::InvalidRevocation(format!(
            "`until` is more than {MAX_REVOCATION_SECS} s (ten years) ahead"
        )));
    }
    Ok(Revocation { target, until: request.until })
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`], with the publish route's checks (media type, declared and
/// actual length).
async fn read_json(req: &HttpRequest, payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    super::publish::require_json(req)?;
    super::publish::read_limited(req, payload, MAX_BODY_BYTES).await
}

/// Revoke a token (by `jti`) or every token of a subject (by `sub`) until a time. Admin tier.
#[utoipa::path(
    post,
    path = "/v1/admin/revocations",
    tag = "admin",
    request_body(content = RevocationRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored. Requests with a revoked token get 401 `token-revoked` and its open streams end with a `token-revoked` frame: on this instance at once, on every instance sharing the broker within one heartbeat period. The entry applies until `until`", body = RevocationBody),
        (status = 400, description = "Malformed JSON (`malformed-json`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is not of the admin tier (`forbidden`), or the client address is not allowed (`ip-denied`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 4 KiB", body = crate::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not one of `jti` and `sub`, an id that is empty, longer than 256 bytes or has control characters, or `until` not in the next ten years (`invalid-revocation`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker is unavailable (`unavailable`): nothing was revoked; or it did not confirm the write (`unconfirmed`): retry, revoking is idempotent. See Retry-After", body = crate::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/revocations")]
pub(crate) async fn revoke(
    req: HttpRequest,
    principal: Principal,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&principal)?;
    let body = read_json(&req, payload).await?;
    let entry = parse_request(&body, now_secs())?;
    super::with_broker(
        state.config.broker_timeout,
        state.config.retry_after_secs,
        super::Effect::Append,
        state.revocations.revoke(entry.clone()),
    )
    .await?;
    crate::audit::revocation(&req, &principal, &entry);
    Ok(HttpResponse::Created().json(RevocationBody::from(&entry)))
}

/// The revocations in force, as every instance will apply them. Admin tier.
#[utoipa::path(
    get,
    path = "/v1/admin/revocations",
    tag = "admin",
    responses(
        (status = 200, description = "The entries in force (expired entries are not listed)", body = RevocationsBody),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is not of the admin tier (`forbidden`), or the client address is not allowed (`ip-denied`)", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker is unavailable (`unavailable`); see Retry-After", body = crate::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/revocations")]
pub(crate) async fn revocations(principal: Principal, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_admin(&principal)?;
    let entries = super::with_broker(
        state.config.broker_timeout,
        state.config.retry_after_secs,
        super::Effect::Read,
        state.revocations.list(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(RevocationsBody { revocations: entries.iter().map(RevocationBody::from).collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_exactly_one_target_and_an_until_in_the_next_ten_years() {
        let now = 1_000_000;
        let status = |body: String| {
            parse_request(body.as_bytes(), now).err().map(|e| actix_web::ResponseError::status_code(&e).as_u16())
        };
        let cases: &[(&str, String, Option<u16>)] = &[
            ("by jti", format!(r#"{{"jti":"t1","until":{}}}"#, now + 1), None),
            ("by sub", format!(r#"{{"sub":"ann","until":{}}}"#, now + MAX_REVOCATION_SECS), None),
            ("both", format!(r#"{{"jti":"t","sub":"s","until":{}}}"#, now + 1), Some(422)),
            ("neither", format!(r#"{{"until":{}}}"#, now + 1), Some(422)),
            ("until now", format!(r#"{{"sub":"s","until":{now}}}"#), Some(422)),
            ("too far", format!(r#"{{"sub":"s","until":{}}}"#, now + MAX_REVOCATION_SECS + 1), Some(422)),
            ("no until", r#"{"sub":"s"}"#.to_owned(), Some(422)),
            ("empty id", format!(r#"{{"sub":"","until":{}}}"#, now + 1), Some(422)),
            ("control character", format!(r#"{{"jti":"a\nb","until":{}}}"#, now + 1), Some(422)),
            ("unknown field", format!(r#"{{"sub":"s","until":{},"x":1}}"#, now + 1), Some(422)),
            ("negative until", r#"{"sub":"s","until":-1}"#.to_owned(), Some(422)),
            ("not JSON", "{".to_owned(), Some(400)),
        ];
        for (case, body, expected) in cases {
            assert_eq!(status(body.clone()), *expected, "case {case}");
        }
    }
}
