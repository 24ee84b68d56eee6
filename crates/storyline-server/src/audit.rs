//! The audit trail: one structured event per security-relevant outcome, under the tracing target
//! [`AUDIT_TARGET`] (the binary writes that target as JSON lines whatever the log format), and counted in
//! `storyline_audit_events_total{event,reason}`, whose labels are bounded enums: never a user, story or token.
//!
//! | event | when | reason |
//! |---|---|---|
//! | `auth_failure` | 401 | [`AuthFailure`] (`missing`, `expired`, `bad_signature`, ...) |
//! | `access_denied` | 403 | `scope` (token lacks the scope), `ip` (allow/deny lists) |
//! | `rate_limited` | 429, and 503 `at-capacity` | the limit (`publish_rate_per_sub`, ..., `max_streams`, `stream_admissions`) |
//! | `admin_action` | any request by an `admin`-tier principal | `read` or `write` |
//! | `revocation` | an admin revoked a token (`POST /v1/admin/revocations`); the line also names the `jti` or `sub` revoked and `until` | `jti` or `sub` |
//!
//! Each event carries the client IP, method, route template and status, and the token's `sub` when it names one
//! (`sub_verified=false` when the token was not, or could not be, verified: a 401 or an address refusal). Never
//! the token.

use actix_web::{Error, HttpMessage, body::MessageBody, dev::ServiceResponse, middleware::Next};
use base64::Engine;

use crate::{
    auth::{AuthFailure, Principal, Tier},
    error::ApiError,
    meters, network,
};

/// The tracing target of audit events.
pub const AUDIT_TARGET: &str = "storyline::audit";

/// What happened, and why (both bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    AuthFailure(AuthFailure),
    AccessDenied(&'static str),
    RateLimited(&'static str),
    AdminAction(&'static str),
}

impl Outcome {
    fn event(self) -> &'static str {
        match self {
            Self::AuthFailure(_) => "auth_failure",
            Self::AccessDenied(_) => "access_denied",
            Self::RateLimited(_) => "rate_limited",
            Self::AdminAction(_) => "admin_action",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::AuthFailure(failure) => failure.as_str(),
            Self::AccessDenied(reason) | Self::RateLimited(reason) | Self::AdminAction(reason) => reason,
        }
    }

    fn of(error: &ApiError) -> Option<Self> {
        match error {
            ApiError::Unauthenticated(failure, _) => Some(Self::AuthFailure(*failure)),
            ApiError::Forbidden(_) => Some(Self::AccessDenied("scope")),
            ApiError::IpDenied => Some(Self::AccessDenied("ip")),
            ApiError::RateLimited { limit, .. } => Some(Self::RateLimited(limit.as_str())),
            ApiError::AtCapacity { cap, .. } => Some(Self::RateLimited(cap.as_str())),
            _ => None,
        }
    }
}

/// The `sub` a token claims, read without verifying it (for the audit trail of a token that failed). Bounded
/// in length; `None` if the token is not a JWT with a string `sub`.
fn claimed_sub(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 8 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = value.get("sub")?.as_str()?;
    Some(sub.chars().take(128).collect())
}

/// Middleware: records the audit event of each response that has one.
pub(crate) async fn audit(
    req: actix_web::dev::ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let res = next.call(req).await?;
    let outcome = match res.response().error().and_then(|e| e.as_error::<ApiError>()) {
        Some(error) => Outcome::of(error),
        None => {
            let admin = res.request().extensions().get::<Principal>().is_some_and(|p| p.tier == Tier::Admin);
            let write =
                !matches!(*res.request().method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD);
            admin.then_some(Outcome::AdminAction(if write { "write" } else { "read" }))
        }
    };
    if let Some(outcome) = outcome {
        record(&res, outcome);
    }
    Ok(res)
}

/// The `revocation` event: who revoked what, until when (the revoked id is in the log line, never a label).
pub(crate) fn revocation(req: &actix_web::HttpRequest, admin: &Principal, entry: &storyline_core::Revocation) {
    let kind = entry.target.kind();
    meters::audit_event("revocation", kind);
    tracing::info!(
        target: AUDIT_TARGET,
        event = "revocation",
        reason = kind,
        client_ip = %network::client_ip(req),
        method = %req.method(),
        route = req.match_pattern().unwrap_or_default(),
        sub = admin.sub.as_str(),
        sub_verified = true,
        revoked = entry.target.id(),
        until = entry.until,
        "audit"
    );
}

fn record<B>(res: &ServiceResponse<B>, outcome: Outcome) {
    let req = res.request();
    let (event, reason) = (outcome.event(), outcome.reason());
    meters::audit_event(event, reason);
    // Every outcome but an authentication failure or an address refusal comes after the token verified.
    let sub_verified = !matches!(outcome, Outcome::AuthFailure(_) | Outcome::AccessDenied("ip"));
    let sub = crate::auth::token_from(req).ok().flatten().as_deref().and_then(claimed_sub);
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    tracing::info!(
        target: AUDIT_TARGET,
        event,
        reason,
        client_ip = %network::client_ip(req),
        method = %req.method(),
        route,
        status = res.status().as_u16(),
        sub = sub.as_deref(),
        sub_verified,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claimed_sub_is_read_without_verification_and_bounded() {
        // {"alg":"HS256"}.{"sub":"mallory","exp":1}.sig
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjoxfQ.c2ln";
        assert_eq!(claimed_sub(token).as_deref(), Some("mallory"));
        assert_eq!(claimed_sub("not-a-jwt"), None);
        assert_eq!(claimed_sub("a.!!!.c"), None);
        let long = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"sub": "x".repeat(1000)}).to_string());
        assert_eq!(claimed_sub(&format!("h.{long}.s")).map(|s| s.len()), Some(128));
    }
}
