//! Rate limits shared by every instance on one Redis: [`RateLimitStore`] as one GCRA script call per decision
//! ([`scripts/gcra.lua`], one round trip, the Redis server's clock).
//!
//! Each subject is one key holding its theoretical arrival time, expiring once the subject is back at a full
//! burst, so idle subjects cost nothing. A publisher's bucket is `storyline:rate:<class>:{<sub>}`; a story's is
//! `storyline:{<story>}:rate`, in the story's own hash slot (next to its log, so the check could one day ride in
//! the append script). The two live in different slots on a cluster, so a publish costs two calls; each script
//! touches only its one key, so neither can fail with `CROSSSLOT`. Sub keys can never collide with story keys:
//! the prefixes differ.
//!
//! This module decides nothing about what happens when Redis cannot answer: an error is returned, and the
//! server falls back to its own limiter.

use std::num::NonZeroU32;

use fred::types::scripts::Script;
use storyline_core::{BrokerError, RateDecision, RateLimitStore, RateSubject, StoryId};

use crate::RedisBroker;

pub(crate) const GCRA_LUA: &str = include_str!("../scripts/gcra.lua");

/// The key of a publisher's bucket.
fn publisher_key(class: &str, sub: &str) -> String {
    format!("storyline:rate:{class}:{{{sub}}}")
}

/// The key of a story's bucket, in the story's slot.
fn story_key(story: &StoryId) -> String {
    format!("storyline:{{{story}}}:rate")
}

/// The Redis broker's [`RateLimitStore`]: shares its connections.
#[derive(Debug)]
pub(crate) struct RedisRateLimits {
    broker: RedisBroker,
    gcra: Script,
}

impl RedisRateLimits {
    pub(crate) fn new(broker: RedisBroker) -> Self {
        Self { broker, gcra: Script::from_lua(GCRA_LUA) }
    }
}

#[async_trait::async_trait]
impl RateLimitStore for RedisRateLimits {
    async fn check(&self, subject: RateSubject<'_>, per_second: NonZeroU32) -> Result<RateDecision, BrokerError> {
        let key = match subject {
            RateSubject::Publisher { class, sub } => publisher_key(class, sub),
            RateSubject::Story(story) => story_key(story),
        };
        let interval_us = (1_000_000 / per_second.get()).max(1);
        // Fails at once when the pool is known to be disconnected: the caller falls back without waiting.
        let client = self.broker.request_client()?;
        let (admitted, wait_us): (i64, i64) = self
            .gcra
            .evalsha_with_reload(client, vec![key], vec![interval_us.to_string(), per_second.get().to_string()])
            .await
            .map_err(crate::unavailable)?;
        if admitted == 1 {
            Ok(RateDecision::Allowed)
        } else {
            let wait_us = u64::try_from(wait_us).unwrap_or(0);
            Ok(RateDecision::Limited { retry_after: std::time::Duration::from_micros(wait_us) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_and_story_buckets_never_share_a_key() {
        let story = StoryId::parse("public:tale").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(publisher_key("member", "ann"), "storyline:rate:member:{ann}");
        assert_eq!(story_key(&story), "storyline:{public:tale}:rate");
        let slot = fred::util::redis_keyslot(story.as_str().as_bytes());
        assert_eq!(fred::util::redis_keyslot(story_key(&story).as_bytes()), slot, "a story's bucket is in its slot");
        assert_ne!(publisher_key("member", "x}:rate"), story_key(&story));
    }
}
