//! One module per endpoint, plus the request-scoped helpers they share.

pub(crate) mod admin;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod publish;
pub(crate) mod reader;
pub(crate) mod stream;
pub(crate) mod streams;

use std::{future::Future, time::Duration};

use storyline_core::{BrokerError, EventId, StoryId};

use crate::error::ApiError;

/// Parses the `{story}` path segment.
pub(crate) fn story_from_path(raw: &str) -> Result<StoryId, ApiError> {
    Ok(StoryId::parse(raw)?)
}

/// Parses a resume/cursor id supplied by a client.
pub(crate) fn event_id(value: &str) -> Result<EventId, ApiError> {
    EventId::parse(value).map_err(|source| ApiError::BadEventId { value: value.chars().take(64).collect(), source })
}

/// What a broker call does, which decides what its timeout means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A read: past the timeout nothing happened that matters, and the answer is 503 `unavailable`.
    Read,
    /// An append: past the timeout the command may already have reached the broker and stored the event, so the
    /// answer is 503 `unconfirmed`, which tells the client to retry with its Idempotency-Key.
    Append,
}

/// The `Retry-After` of one broker-outage answer: uniform in `[base, 2 * base]` whole seconds, drawn per response,
/// so that the clients one outage turned away do not all come back in the same second (and the next outage
/// answer spreads them again).
pub(crate) fn jittered_retry_after(base_secs: u32) -> u32 {
    fastrand::u32(base_secs..=base_secs.saturating_mul(2))
}

/// Runs a broker call with the request-path timeout, mapping failures to 503/500. A 503's `Retry-After` is
/// `retry_after_secs` jittered per response ([`jittered_retry_after`]).
pub(crate) async fn with_broker<T>(
    timeout: Duration,
    retry_after_secs: u32,
    effect: Effect,
    call: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| ApiError::broker(e, jittered_retry_after(retry_after_secs))),
        Err(_) => {
            let retry_after_secs = jittered_retry_after(retry_after_secs);
            let cause = format!("broker did not answer within {timeout:?}");
            Err(match effect {
                Effect::Read => ApiError::Unavailable { retry_after_secs, cause },
                Effect::Append => ApiError::Unconfirmed { retry_after_secs, cause },
            })
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_outage_retry_after_is_jittered_between_the_base_and_twice_it() {
        let drawn: Vec<u32> = (0..200).map(|_| jittered_retry_after(5)).collect();
        assert!(drawn.iter().all(|s| (5..=10).contains(s)), "within [5, 10]: {drawn:?}");
        assert!(drawn.iter().any(|s| *s != drawn[0]), "not all equal: {drawn:?}");
        assert_eq!(jittered_retry_after(u32::MAX), u32::MAX, "no overflow at the top");
    }
}
