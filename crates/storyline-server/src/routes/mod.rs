//! One module per endpoint, plus the request-scoped helpers they share.

pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod publish;
pub(crate) mod stream;

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

/// Runs a broker call with the request-path timeout, mapping failures to 503/500.
pub(crate) async fn with_broker<T>(
    timeout: Duration,
    retry_after_secs: u32,
    call: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| ApiError::broker(e, retry_after_secs)),
        Err(_) => {
            Err(ApiError::Unavailable { retry_after_secs, cause: format!("broker did not answer within {timeout:?}") })
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
