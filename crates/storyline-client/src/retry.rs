//! How long to wait before trying again. Never a fixed interval: clients refused together must not come back
//! together, or a deploy or an outage turns into a reconnect storm.
//!
//! - The server said when (`Retry-After`): never earlier, and spread over one more such interval (full jitter
//!   over `[after, 2 × after]`).
//! - No hint (a network error, a timeout): capped exponential backoff with full jitter, a delay drawn uniformly
//!   from `[0, min(max_backoff, initial_backoff × 2^n)]` for the n-th consecutive failure.

use std::time::Duration;

/// Bounds on retrying a publish or a history read (a subscription uses the delays, but never gives up on
/// transient failures: drop it to stop it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry; it doubles with every further one...
    pub initial_backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt.
    pub max_elapsed: Duration,
    /// The longest `Retry-After` honoured; a longer one is capped to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The wait after the `failures`-th consecutive failure (1 for the first) that came with no hint.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let ceiling = self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        random_up_to(ceiling)
    }

    /// The wait for an answer that said `Retry-After: after`.
    pub fn after(&self, after: Duration) -> Duration {
        let after = after.min(self.max_retry_after);
        after + random_up_to(after)
    }
}

/// Uniform in `[0, ceiling]`, at millisecond resolution.
fn random_up_to(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ms))
}

/// `Retry-After` in its seconds form (the form storyline sends); an HTTP date is not understood.
pub(crate) fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    text.parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_a_doubling_capped_ceiling() {
        let policy = RetryPolicy::default();
        for failures in 1..40 {
            let ceiling = (Duration::from_millis(100) * 2u32.saturating_pow(failures - 1)).min(policy.max_backoff);
            let draws: Vec<Duration> = (0..200).map(|_| policy.backoff(failures)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "failure {failures}: within {ceiling:?}");
            if failures >= 3 {
                let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
                assert!(distinct.len() > 20, "failure {failures}: spread, not a fixed interval");
            }
        }
    }

    #[test]
    fn retry_after_is_never_shortened_and_is_spread_over_one_more_interval() {
        let policy = RetryPolicy::default();
        let draws: Vec<Duration> = (0..500).map(|_| policy.after(Duration::from_secs(2))).collect();
        assert!(draws.iter().all(|d| (Duration::from_secs(2)..=Duration::from_secs(4)).contains(d)), "{draws:?}");
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "jittered: {} distinct delays", distinct.len());
        assert!(policy.after(Duration::from_secs(3600)) <= Duration::from_secs(60), "capped");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let value = |s: &str| reqwest::header::HeaderValue::from_str(s).ok();
        assert_eq!(parse_retry_after(value("3").as_ref()), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(value("Wed, 21 Oct 2015 07:28:00 GMT").as_ref()), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
