//! The one error type of the HTTP edge, rendered as RFC 9457 `application/problem+json`.
//!
//! Client faults say precisely what was wrong. Server faults say "internal" or "unavailable" and log the cause;
//! an append whose outcome the broker did not confirm says so ("unconfirmed"), so a client knows to retry with its
//! Idempotency-Key rather than assume nothing was stored.

use actix_web::{
    HttpResponse, ResponseError,
    http::{StatusCode, header},
};
use serde::Serialize;
use storyline_core::{BrokerError, EventIdError, EventTypeError, IdempotencyKeyError, StoryIdError};

/// A problem+json body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:storyline:problem:<slug>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid story id: {0}")]
    BadStoryId(#[from] StoryIdError),
    #[error("invalid event id {value:?}: {source}")]
    BadEventId { value: String, source: EventIdError },
    #[error("{0}")]
    BadQuery(String),
    /// A path parameter that does not decode (e.g. percent-encoded bytes that are not UTF-8).
    #[error("{0}")]
    BadPath(String),
    /// `GET /v1/streams` named more stories than one stream may carry.
    #[error("a stream may carry at most {limit} stories; {count} were named")]
    TooManyStories { count: usize, limit: usize },
    /// A many-story stream's resume cursor does not have one position per story.
    #[error(
        "the resume cursor has {positions} positions for {stories} stories: it needs one per story, in the order of `stories`"
    )]
    CursorMismatch { positions: usize, stories: usize },
    #[error("{0}")]
    BadIdempotencyKey(#[from] IdempotencyKeyError),
    #[error(
        "this Idempotency-Key was already used on this story for a different event (type or data); nothing was \
         appended. A retry must repeat the first request exactly; a new event needs a new key"
    )]
    IdempotencyKeyMismatch,
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body ended before it was complete: {0}")]
    IncompleteBody(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("invalid event type: {0}")]
    BadEventType(#[from] EventTypeError),
    #[error("{1}")]
    Unauthenticated(crate::auth::AuthFailure, String),
    #[error("{0}")]
    Forbidden(String),
    #[error("request headers total {size} bytes, over the limit of {limit}")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the event broker is unavailable; retry later")]
    Unavailable { retry_after_secs: u32, cause: String },
    #[error(
        "the event broker did not confirm the append, so the event may have been stored; retry with the same \
         Idempotency-Key: if it was stored, the retry answers 200 with its receipt and stores nothing"
    )]
    Unconfirmed { retry_after_secs: u32, cause: String },
    #[error("{} limit of {quota} exceeded; retry after {retry_after_secs} s", limit_text(*limit))]
    RateLimited { limit: crate::limits::Limit, quota: u32, retry_after_secs: u32 },
    #[error("requests from this address are not accepted")]
    IpDenied,
    #[error("this instance has no room for another stream; retry later (another instance may have room)")]
    AtCapacity { cap: Capacity, retry_after_secs: u32 },
    #[error("this instance is shutting down; retry later (another instance will answer)")]
    Draining { retry_after_secs: u32 },
    /// A revocation request that is JSON but not a valid revocation (`POST /v1/admin/revocations`).
    #[error("invalid revocation: {0}")]
    InvalidRevocation(String),
    #[error("internal error")]
    Internal(String),
}

/// Which of the instance's capacities a new stream found used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// The streams it holds open at once (`max_streams`).
    MaxStreams,
    /// The new streams it admits per second (`stream_admissions_per_sec`).
    Admissions,
}

impl Capacity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxStreams => "max_streams",
            Self::Admissions => "stream_admissions",
        }
    }
}

fn limit_text(limit: crate::limits::Limit) -> &'static str {
    use crate::limits::Limit;
    match limit {
        Limit::PublishPerSub => "publish rate (events per second per principal, for its tier)",
        Limit::PublishPerStory => "publish rate (events per second to this story)",
        Limit::StreamOpensPerIp => "stream open rate (new streams per second from this address)",
        Limit::StreamsPerPrincipal => "concurrent stream (streams open at once by this principal)",
    }
}

impl ApiError {
    fn slug(&self) -> &'static str {
        match self {
            Self::BadStoryId(_) => "bad-story-id",
            Self::BadEventId { .. } => "bad-event-id",
            Self::BadQuery(_) => "bad-query",
            Self::BadPath(_) => "bad-path",
            Self::TooManyStories { .. } => "too-many-stories",
            Self::CursorMismatch { .. } => "bad-cursor",
            Self::BadIdempotencyKey(_) => "bad-idempotency-key",
            Self::IdempotencyKeyMismatch => "idempotency-key-mismatch",
            Self::MalformedJson(_) => "malformed-json",
            Self::IncompleteBody(_) => "incomplete-body",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::InvalidEvent(_) | Self::BadEventType(_) => "invalid-event",
            Self::Unauthenticated(crate::auth::AuthFailure::Revoked, _) => "token-revoked",
            Self::Unauthenticated(..) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::HeadersTooLarge { .. } => "headers-too-large",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Unavailable { .. } => "unavailable",
            Self::Unconfirmed { .. } => "unconfirmed",
            Self::AtCapacity { .. } => "at-capacity",
            Self::RateLimited { .. } => "rate-limited",
            Self::IpDenied => "ip-denied",
            Self::Draining { .. } => "draining",
            Self::InvalidRevocation(_) => "invalid-revocation",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::BadStoryId(_) => "Invalid story id",
            Self::BadEventId { .. } => "Invalid event id",
            Self::BadQuery(_) => "Invalid query parameter",
            Self::BadPath(_) => "Invalid path parameter",
            Self::TooManyStories { .. } => "Too many stories",
            Self::CursorMismatch { .. } => "Invalid resume cursor",
            Self::BadIdempotencyKey(_) => "Invalid Idempotency-Key",
            Self::IdempotencyKeyMismatch => "Idempotency-Key reused",
            Self::MalformedJson(_) => "Malformed JSON",
            Self::IncompleteBody(_) => "Incomplete request body",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::InvalidEvent(_) | Self::BadEventType(_) => "Invalid event",
            Self::Unauthenticated(crate::auth::AuthFailure::Revoked, _) => "Token revoked",
            Self::Unauthenticated(..) => "Authentication required",
            Self::Forbidden(_) => "Forbidden",
            Self::HeadersTooLarge { .. } => "Request headers too large",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unavailable { .. } => "Service unavailable",
            Self::Unconfirmed { .. } => "Outcome unknown",
            Self::AtCapacity { .. } => "At capacity",
            Self::RateLimited { .. } => "Too many requests",
            Self::IpDenied => "Address not allowed",
            Self::Draining { .. } => "Shutting down",
            Self::InvalidRevocation(_) => "Invalid revocation",
            Self::Internal(_) => "Internal error",
        }
    }

    pub fn problem(&self) -> Problem {
        let detail = match self {
            // Never echo causes of server faults to clients.
            Self::Unavailable { .. } | Self::Internal(_) => self.title().to_owned() + ": retry later",
            other => other.to_string(),
        };
        Problem {
            problem_type: format!("urn:storyline:problem:{}", self.slug()),
            title: self.title().to_owned(),
            status: self.status_code().as_u16(),
            detail,
        }
    }

    pub(crate) fn broker(e: BrokerError, retry_after_secs: u32) -> Self {
        match e {
            BrokerError::Unavailable(cause) => Self::Unavailable { retry_after_secs, cause },
            BrokerError::Unconfirmed(cause) => Self::Unconfirmed { retry_after_secs, cause },
            BrokerError::IdempotencyKeyMismatch => Self::IdempotencyKeyMismatch,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadStoryId(_)
            | Self::BadEventId { .. }
            | Self::BadQuery(_)
            | Self::BadPath(_)
            | Self::TooManyStories { .. }
            | Self::CursorMismatch { .. }
            | Self::BadIdempotencyKey(_)
            | Self::MalformedJson(_)
            | Self::IncompleteBody(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidEvent(_)
            | Self::BadEventType(_)
            | Self::IdempotencyKeyMismatch
            | Self::InvalidRevocation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthenticated(..) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::IpDenied => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } | Self::Unconfirmed { .. } | Self::AtCapacity { .. } | Self::Draining { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable { cause, .. } => tracing::warn!(error = %cause, "broker unavailable"),
            Self::Unconfirmed { cause, .. } => tracing::warn!(error = %cause, "broker did not confirm an append"),
            Self::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        match self {
            Self::Unauthenticated(..) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"storyline\""));
            }
            Self::Unavailable { retry_after_secs, .. }
            | Self::Unconfirmed { retry_after_secs, .. }
            | Self::AtCapacity { retry_after_secs, .. }
            | Self::RateLimited { retry_after_secs, .. }
            | Self::Draining { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            _ => {}
        }
        response.body(serde_json::to_string(&self.problem()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_do_not_leak_their_cause() {
        let e = ApiError::Internal("password=hunter2 at redis://x".into());
        assert!(!e.problem().detail.contains("hunter2"));
        let e = ApiError::Unavailable { retry_after_secs: 1, cause: "redis://secret".into() };
        assert!(!e.problem().detail.contains("secret"));
        let e = ApiError::Unconfirmed { retry_after_secs: 1, cause: "redis://secret".into() };
        assert!(!e.problem().detail.contains("secret"));
        assert!(e.problem().detail.contains("Idempotency-Key"), "says how to settle the outcome");
    }

    #[test]
    fn path_and_query_rejections_name_what_was_wrong() {
        let path = ApiError::BadPath("cannot decode".into()).problem();
        assert_eq!((path.status, path.problem_type.as_str()), (400, "urn:storyline:problem:bad-path"));
        assert_eq!(path.title, "Invalid path parameter");
        let query = ApiError::BadQuery("limit".into()).problem();
        assert_eq!((query.status, query.title.as_str()), (400, "Invalid query parameter"));
    }

    #[test]
    fn client_faults_carry_the_limit() {
        let e = ApiError::BodyTooLarge { limit: 65536 };
        assert_eq!(e.problem().status, 413);
        assert!(e.problem().detail.contains("65536"));
        let too_many = ApiError::TooManyStories { count: 40, limit: 32 }.problem();
        assert_eq!((too_many.status, too_many.problem_type.as_str()), (400, "urn:storyline:problem:too-many-stories"));
        assert!(too_many.detail.contains("at most 32"), "{}", too_many.detail);
    }
}
