//! The client's one error type: a variant per problem type the server answers with (each carrying the
//! problem+json body and the `Retry-After` that came with it), plus the failures that happen before or around an
//! answer (network, timeout, decoding, the token source).

use std::{fmt, time::Duration};

use serde::Deserialize;

/// A boxed error, as a [`crate::TokenSource`] may return one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The server's RFC 9457 `application/problem+json` body, and the `Retry-After` of the answer that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// `urn:storyline:problem:<slug>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The answer's `Retry-After` (seconds form), when it had one.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// The prefix of every problem type URI storyline sends.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:storyline:problem:";

impl Problem {
    /// The last part of the type URI (`unconfirmed`, `bad-story-id`, ...), if it is one of storyline's.
    pub fn slug(&self) -> Option<&str> {
        self.problem_type.strip_prefix(PROBLEM_TYPE_PREFIX)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {}): {}", self.title, self.status, self.problem_type, self.detail)?;
        if let Some(after) = self.retry_after {
            write!(f, " (Retry-After {} s)", after.as_secs())?;
        }
        Ok(())
    }
}

/// Declares the problem variants once: the enum, the slug of each, and the mapping from a problem body.
macro_rules! problems {
    ($( $(#[$doc:meta])* $variant:ident = $slug:literal, )*) => {
        /// Everything a call can fail with.
        #[derive(Debug, thiserror::Error)]
        #[non_exhaustive]
        pub enum Error {
            $( $(#[$doc])* #[error("{0}")] $variant(Problem), )*
            /// A problem type this client does not know (a newer server).
            #[error("{0}")]
            OtherProblem(Problem),
            /// A failed answer without a problem+json body (a proxy in between, say).
            #[error("the server answered {status} without a problem body{}", retry_after_text(*.retry_after))]
            Status { status: u16, retry_after: Option<Duration>, body: String },
            /// The request did not get an answer: connect, send or read failed.
            #[error("network error: {}", error_chain(.0))]
            Network(#[source] reqwest::Error),
            /// The TLS handshake failed: most often a server certificate the client does not trust (a private CA
            /// not added with [`crate::ClientBuilder::add_root_certificates_pem`], a wrong host name, an expired
            /// certificate). Not retried: the same handshake fails the same way.
            #[error("TLS failed: {}", error_chain(.0))]
            Tls(#[source] reqwest::Error),
            /// No answer (or, on a stream, no byte at all, not even a heartbeat) within this long.
            #[error("no answer within {0:?}")]
            TimedOut(Duration),
            /// An answer that does not follow the contract (not JSON, a frame that is not an envelope, ...).
            #[error("could not decode the answer: {0}")]
            Decode(String),
            /// The token source failed to produce a token.
            #[error("the token source failed: {0}")]
            Token(#[source] BoxError),
            /// The request could not be made (a bad base URL, data that does not serialize, ...).
            #[error("invalid request: {0}")]
            InvalidRequest(String),
        }

        /// Every problem slug this client has a variant for.
        #[cfg(test)]
        pub(crate) const KNOWN_SLUGS: &[&str] = &[$($slug),*];

        impl Error {
            /// The variant for a problem body, by its type URI.
            pub(crate) fn from_problem(problem: Problem) -> Self {
                match problem.slug() {
                    $( Some($slug) => Self::$variant(problem), )*
                    _ => Self::OtherProblem(problem),
                }
            }

            /// The problem body, for the variants that carry one.
            pub fn problem(&self) -> Option<&Problem> {
                match self {
                    $( Self::$variant(problem) )|* | Self::OtherProblem(problem) => Some(problem),
                    _ => None,
                }
            }
        }
    };
}

problems! {
    /// 400: the story id is not one storyline accepts.
    BadStoryId = "bad-story-id",
    /// 400: an event id (`after`, `Last-Event-ID`) is malformed.
    BadEventId = "bad-event-id",
    /// 400: a query parameter is invalid (for example a history `limit` out of range).
    BadQuery = "bad-query",
    /// 400: a path parameter does not decode.
    BadPath = "bad-path",
    /// 400: a many-story stream (`GET /v1/streams`) named more stories than one stream may carry.
    TooManyStories = "too-many-stories",
    /// 400: a many-story stream's resume cursor does not have one position per story.
    BadCursor = "bad-cursor",
    /// 400: the `Idempotency-Key` is not 1 to 128 visible ASCII characters.
    BadIdempotencyKey = "bad-idempotency-key",
    /// 422: the `Idempotency-Key` was already used on this story for a different event; nothing was stored. Not
    /// retried: a new event needs a new key.
    IdempotencyKeyMismatch = "idempotency-key-mismatch",
    /// 400: the body is not JSON.
    MalformedJson = "malformed-json",
    /// 400: the body ended before it was complete.
    IncompleteBody = "incomplete-body",
    /// 415: the body was not sent as `application/json`.
    UnsupportedMediaType = "unsupported-media-type",
    /// 413: the body is over the server's limit.
    BodyTooLarge = "body-too-large",
    /// 422: JSON, but not an event (its shape, or a reserved or invalid event type).
    InvalidEvent = "invalid-event",
    /// 401: missing, invalid or expired token (after one refresh from the token source).
    Unauthenticated = "unauthenticated",
    /// 401: the token was revoked (by its `jti`, or every token of its `sub`). Never retried with that token: the
    /// token source is asked once for a different one.
    TokenRevoked = "token-revoked",
    /// 422: a revocation request that names not exactly one of `jti` and `sub`, or an `until` not in the next ten
    /// years.
    InvalidRevocation = "invalid-revocation",
    /// 403: the token lacks the scope for this story.
    Forbidden = "forbidden",
    /// 431: the request headers are too large.
    HeadersTooLarge = "headers-too-large",
    /// 404.
    NotFound = "not-found",
    /// 405.
    MethodNotAllowed = "method-not-allowed",
    /// 503: the broker is unavailable; nothing was stored. Retried.
    Unavailable = "unavailable",
    /// 503: the append reached the broker unconfirmed; it may be stored. Retried with the same Idempotency-Key.
    Unconfirmed = "unconfirmed",
    /// 503: the instance holds its maximum of streams or admits new ones at its maximum rate. Retried.
    AtCapacity = "at-capacity",
    /// 429: a rate limit; see `retry_after`. Retried.
    RateLimited = "rate-limited",
    /// 403: the client address is not allowed.
    IpDenied = "ip-denied",
    /// 503: the instance is shutting down. Retried.
    Draining = "draining",
    /// 500.
    Internal = "internal",
}

/// What a failed attempt calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The server said when: wait at least this long.
    After(Duration),
    /// A transient failure with no hint: back off.
    Backoff,
    /// Not worth repeating.
    No,
}

impl Error {
    /// The answer's HTTP status, for errors that are answers.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            other => other.problem().map(|p| p.status),
        }
    }

    /// The `Retry-After` the server sent with this answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            other => other.problem().and_then(|p| p.retry_after),
        }
    }

    /// Whether a retry may succeed (503, 429, network errors, timeouts). The client retries these itself; this is
    /// for callers deciding what to do once its retry policy gave up.
    pub fn is_transient(&self) -> bool {
        self.retry() != Retry::No
    }

    pub(crate) fn retry(&self) -> Retry {
        let hinted = |after: Option<Duration>| after.filter(|d| !d.is_zero()).map_or(Retry::Backoff, Retry::After);
        match self {
            Self::Unavailable(p)
            | Self::Unconfirmed(p)
            | Self::AtCapacity(p)
            | Self::RateLimited(p)
            | Self::Draining(p) => hinted(p.retry_after),
            Self::OtherProblem(p) if matches!(p.status, 429 | 503) => hinted(p.retry_after),
            Self::Status { status: 429 | 503, retry_after, .. } => hinted(*retry_after),
            Self::Network(e) if !e.is_builder() => Retry::Backoff,
            Self::TimedOut(_) => Retry::Backoff,
            _ => Retry::No,
        }
    }
}

fn retry_after_text(after: Option<Duration>) -> String {
    after.map(|d| format!(" (Retry-After {} s)", d.as_secs())).unwrap_or_default()
}

/// An error and its sources on one line (reqwest's own message is often just "error sending request").
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The error for a failed answer: its problem+json body if it has one, else the status and body text.
pub(crate) fn from_answer(status: u16, retry_after: Option<Duration>, is_problem: bool, body: &[u8]) -> Error {
    if is_problem && let Ok(mut problem) = serde_json::from_slice::<Problem>(body) {
        problem.retry_after = retry_after;
        return Error::from_problem(problem);
    }
    let mut text = String::from_utf8_lossy(body).into_owned();
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    Error::Status { status, retry_after, body: text }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's problem slugs, read from its one error module: every one must have its own variant here.
    #[test]
    fn every_problem_type_the_server_sends_has_a_variant() {
        let source = include_str!("../../storyline-server/src/error.rs");
        let slugs_fn = source.split("fn slug(&self)").nth(1).expect("ApiError::slug in the server's error.rs");
        let body = slugs_fn.split("\n    }\n").next().unwrap_or_default();
        let server: Vec<&str> = body.split("=> \"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(server.len() >= 20, "found the server's slugs: {server:?}");
        for slug in &server {
            assert!(KNOWN_SLUGS.contains(slug), "the server sends {slug:?}, which has no variant here");
        }
        for slug in KNOWN_SLUGS {
            assert!(server.contains(slug), "{slug:?} has a variant but the server never sends it");
        }
    }

    #[test]
    fn a_problem_body_becomes_its_variant_with_status_detail_and_retry_after() {
        let body =
            br#"{"type":"urn:storyline:problem:unconfirmed","title":"Outcome unknown","status":503,"detail":"retry"}"#;
        let error = from_answer(503, Some(Duration::from_secs(2)), true, body);
        assert!(matches!(&error, Error::Unconfirmed(p) if p.detail == "retry"), "{error:?}");
        assert_eq!((error.status(), error.retry_after()), (Some(503), Some(Duration::from_secs(2))));
        assert_eq!(error.retry(), Retry::After(Duration::from_secs(2)));
        let unknown = br#"{"type":"urn:storyline:problem:new-thing","title":"T","status":409,"detail":"d"}"#;
        assert!(matches!(from_answer(409, None, true, unknown), Error::OtherProblem(_)));
        let text = from_answer(502, None, false, b"bad gateway");
        assert!(matches!(&text, Error::Status { status: 502, body, .. } if body == "bad gateway"), "{text:?}");
        assert_eq!(from_answer(503, None, false, b"").retry(), Retry::Backoff, "a bare 503 is still transient");
        let forbidden = br#"{"type":"urn:storyline:problem:forbidden","title":"Forbidden","status":403,"detail":"no"}"#;
        assert_eq!(from_answer(403, None, true, forbidden).retry(), Retry::No);
    }
}
