//! The revocation list in Redis, shared by every instance on this Redis (see [`storyline_core::Revocations`]).
//!
//! Two keys under one hash tag, `{~revocations}` (no story id can contain `~`, so no story's keys collide; one
//! tag is one Redis Cluster slot, so both scripts run on one node):
//! - `storyline:{~revocations}:list`, a sorted set: member `jti:<id>` or `sub:<id>`, score the entry's `until`
//!   (seconds since the epoch; integers that far below 2^53 are exact as scores). Each revoke drops the entries
//!   that expired, and the key expires with its last entry.
//! - `storyline:{~revocations}:version`, a counter incremented by every revoke, in the same script.
//!
//! Each instance reads the version every heartbeat (one `GET`) and the whole list only when it changed.

use fred::{prelude::*, types::scripts::Script};
use storyline_core::{BrokerError, Revocation, RevocationList, RevocationTarget, Revocations};

use crate::{RedisBroker, unavailable, unconfirmed};

pub(crate) const REVOKE_LUA: &str = include_str!("../scripts/revoke.lua");
pub(crate) const SNAPSHOT_LUA: &str = include_str!("../scripts/revocations.lua");

pub(crate) const LIST_KEY: &str = "storyline:{~revocations}:list";
pub(crate) const VERSION_KEY: &str = "storyline:{~revocations}:version";

/// The Redis revocation store: the broker's connections, two scripts.
#[derive(Debug)]
pub(crate) struct RedisRevocations {
    broker: RedisBroker,
    revoke: Script,
    snapshot: Script,
}

impl RedisRevocations {
    pub(crate) fn new(broker: RedisBroker) -> Self {
        Self { broker, revoke: Script::from_lua(REVOKE_LUA), snapshot: Script::from_lua(SNAPSHOT_LUA) }
    }
}

fn keys() -> Vec<String> {
    vec![LIST_KEY.to_owned(), VERSION_KEY.to_owned()]
}

fn version(value: i64) -> Result<u64, BrokerError> {
    u64::try_from(value).map_err(|_| BrokerError::Corrupt(format!("revocation version {value}")))
}

#[async_trait::async_trait]
impl Revocations for RedisRevocations {
    async fn revoke(&self, entry: Revocation, now: u64) -> Result<u64, BrokerError> {
        let args = vec![entry.target.encode(), entry.until.to_string(), now.to_string()];
        let client = self.broker.request_client()?;
        let new: i64 = self.revoke.evalsha_with_reload(client, keys(), args).await.map_err(unconfirmed)?;
        version(new)
    }

    async fn version(&self) -> Result<u64, BrokerError> {
        let current: Option<i64> = self.broker.request_client()?.get(VERSION_KEY).await.map_err(unavailable)?;
        version(current.unwrap_or(0))
    }

    async fn snapshot(&self, now: u64) -> Result<RevocationList, BrokerError> {
        let client = self.broker.request_client()?;
        let (current, flat): (i64, Vec<String>) =
            self.snapshot.evalsha_with_reload(client, keys(), vec![now.to_string()]).await.map_err(unavailable)?;
        let mut entries = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [member, until] = pair else {
                return Err(BrokerError::Corrupt("revocation list: a member without a score".into()));
            };
            let target = RevocationTarget::decode(member).map_err(|e| BrokerError::Corrupt(e.to_string()))?;
            // Scores come back as decimal text, and ours are whole seconds (Redis writes them without a fraction).
            let until =
                until.parse::<u64>().map_err(|_| BrokerError::Corrupt(format!("revocation until {until:?}")))?;
            entries.push(Revocation { target, until });
        }
        Ok(RevocationList::new(version(current)?, entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_keys_are_in_one_cluster_slot_apart_from_every_story() {
        use fred::util::redis_keyslot;
        assert_eq!(redis_keyslot(LIST_KEY.as_bytes()), redis_keyslot(VERSION_KEY.as_bytes()));
        assert!(storyline_core::StoryId::parse("~revocations").is_err(), "no story id can take the tag");
    }
}
