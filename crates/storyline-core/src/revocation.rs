//! The revocation port: tokens that must stop working before their `exp`, named by their `jti` (one token) or
//! their `sub` (every token of a principal), each entry in force until a time of its own.
//!
//! # What every implementation guarantees
//!
//! 1. **Visibility.** [`Revocations::revoke`] returns `Ok` only once the entry is stored; every
//!    [`Revocations::snapshot`] taken after it (by any instance sharing the store) contains it while it is in
//!    force. An entry for a target that already has one replaces it (so a revocation can be extended or cut
//!    short by revoking again).
//! 2. **Change counter.** The version ([`Revocations::version`], [`RevocationList::version`]) strictly increases
//!    with every revoke, and a snapshot's entries are read atomically with its version: an instance that holds a
//!    snapshot of version `v` and reads `v` again has nothing new to fetch. Reading the version is the cheap call
//!    each instance makes every heartbeat.
//! 3. **Expiry.** An entry is in force while `now < until` (seconds since the Unix epoch, the clock of the
//!    caller). A snapshot holds only the entries in force at the `now` it was asked for; expired entries may stay
//!    in the store for a while but never apply again.
//! 4. **Failure.** Every call completes or fails with [`BrokerError::Unavailable`] within the adapter's timeout;
//!    a revoke that may have reached the store fails with [`BrokerError::Unconfirmed`] (revoking is idempotent:
//!    retry it).
//!
//! This module does no I/O: it has the types, the snapshot and the in-process store ([`MemoryRevocations`]).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use crate::BrokerError;

/// The longest `jti` or `sub` a revocation may name, in bytes.
pub const MAX_REVOCATION_ID_LEN: usize = 256;

/// Why a revocation target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("the {0} to revoke is empty")]
    Empty(&'static str),
    #[error("the {kind} to revoke is longer than {max} bytes")]
    TooLong { kind: &'static str, max: usize },
    #[error("the {0} to revoke contains a control character")]
    ControlCharacter(&'static str),
    #[error("not a stored revocation target: {0:?}")]
    NotATarget(String),
}

/// What a revocation names: one token (its `jti`) or every token of a principal (its `sub`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevocationTarget {
    Jti(RevocationId),
    Sub(RevocationId),
}

/// A `jti` or `sub` value: 1 to [`MAX_REVOCATION_ID_LEN`] bytes, no control characters (so it is safe in a log
/// line, a Redis member and a JSON answer). Only [`RevocationTarget::jti`] and [`RevocationTarget::sub`] make one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevocationId(Arc<str>);

impl RevocationId {
    fn parse(kind: &'static str, s: &str) -> Result<Self, RevocationError> {
        if s.is_empty() {
            return Err(RevocationError::Empty(kind));
        }
        if s.len() > MAX_REVOCATION_ID_LEN {
            return Err(RevocationError::TooLong { kind, max: MAX_REVOCATION_ID_LEN });
        }
        if s.chars().any(char::is_control) {
            return Err(RevocationError::ControlCharacter(kind));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RevocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl RevocationTarget {
    /// One token, by its `jti` claim.
    pub fn jti(jti: &str) -> Result<Self, RevocationError> {
        RevocationId::parse("jti", jti).map(Self::Jti)
    }

    /// Every token whose `sub` claim is `sub`.
    pub fn sub(sub: &str) -> Result<Self, RevocationError> {
        RevocationId::parse("sub", sub).map(Self::Sub)
    }

    /// `jti` or `sub`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Jti(_) => "jti",
            Self::Sub(_) => "sub",
        }
    }

    /// The claim value it names.
    pub fn id(&self) -> &str {
        match self {
            Self::Jti(id) | Self::Sub(id) => id.as_str(),
        }
    }

    /// The stored form: `jti:<id>` or `sub:<id>`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.kind(), self.id())
    }

    /// Parses [`RevocationTarget::encode`]'s form.
    pub fn decode(s: &str) -> Result<Self, RevocationError> {
        match s.split_once(':') {
            Some(("jti", id)) => Self::jti(id),
            Some(("sub", id)) => Self::sub(id),
            _ => Err(RevocationError::NotATarget(s.chars().take(64).collect())),
        }
    }
}

impl fmt::Debug for RevocationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:?}", self.kind(), self.id())
    }
}

/// One entry of the list: `target` is revoked while `now < until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: RevocationTarget,
    /// Seconds since the Unix epoch. For a `jti`, the token's `exp` is enough; for a `sub`, as long as the
    /// principal must stay locked out.
    pub until: u64,
}

impl Revocation {
    pub fn in_force(&self, now: u64) -> bool {
        now < self.until
    }
}

/// A snapshot of the list: what each instance checks every request and every open stream against, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    /// The store's change counter when this was read (see the module docs).
    pub version: u64,
    jti: HashMap<Arc<str>, u64>,
    sub: HashMap<Arc<str>, u64>,
}

impl RevocationList {
    /// A snapshot of `version` holding `entries` (later entries for one target replace earlier ones).
    pub fn new(version: u64, entries: impl IntoIterator<Item = Revocation>) -> Self {
        let mut list = Self { version, ..Self::default() };
        for entry in entries {
            list.insert(entry);
        }
        list
    }

    /// Adds `entry`, replacing any entry for its target.
    pub fn insert(&mut self, entry: Revocation) {
        let (map, id) = match entry.target {
            RevocationTarget::Jti(id) => (&mut self.jti, id),
            RevocationTarget::Sub(id) => (&mut self.sub, id),
        };
        map.insert(id.0, entry.until);
    }

    /// Drops the entries no longer in force at `now`.
    pub fn prune(&mut self, now: u64) {
        self.jti.retain(|_, until| now < *until);
        self.sub.retain(|_, until| now < *until);
    }

    /// The entry that revokes a token of `sub` with `jti`, if one is in force at `now`: its `jti`'s, else its
    /// `sub`'s. Two hash look-ups; nothing allocated.
    pub fn revoking(&self, sub: &str, jti: Option<&str>, now: u64) -> Option<Revocation> {
        let by_jti = jti.and_then(|jti| {
            let (id, until) = self.jti.get_key_value(jti)?;
            (now < *until)
                .then(|| Revocation { target: RevocationTarget::Jti(RevocationId(Arc::clone(id))), until: *until })
        });
        by_jti.or_else(|| {
            let (id, until) = self.sub.get_key_value(sub)?;
            (now < *until)
                .then(|| Revocation { target: RevocationTarget::Sub(RevocationId(Arc::clone(id))), until: *until })
        })
    }

    /// Whether a token of `sub` with `jti` is revoked at `now`.
    pub fn is_revoked(&self, sub: &str, jti: Option<&str>, now: u64) -> bool {
        self.revoking(sub, jti, now).is_some()
    }

    /// The entries in force at `now`, `jti`s first, each kind sorted by id.
    pub fn entries(&self, now: u64) -> Vec<Revocation> {
        let mut entries: Vec<Revocation> = [(true, &self.jti), (false, &self.sub)]
            .into_iter()
            .flat_map(|(jti, map)| {
                map.iter().filter(|(_, until)| now < **until).map(move |(id, until)| Revocation {
                    target: if jti {
                        RevocationTarget::Jti(RevocationId(Arc::clone(id)))
                    } else {
                        RevocationTarget::Sub(RevocationId(Arc::clone(id)))
                    },
                    until: *until,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.target.cmp(&b.target));
        entries
    }

    /// Entries held, in force or not (until the next [`RevocationList::prune`]).
    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jti.is_empty() && self.sub.is_empty()
    }
}

/// The store of revocations that the instances of one deployment share. See the module docs for what every
/// implementation owes. Times are seconds since the Unix epoch, on the caller's clock.
#[async_trait::async_trait]
pub trait Revocations: Send + Sync + fmt::Debug + 'static {
    /// Stores `entry` (replacing one for the same target) and drops entries expired at `now`; returns the new
    /// version.
    async fn revoke(&self, entry: Revocation, now: u64) -> Result<u64, BrokerError>;

    /// The change counter: one cheap read, to tell whether a snapshot is stale.
    async fn version(&self) -> Result<u64, BrokerError>;

    /// The entries in force at `now`, with the version they were read at.
    async fn snapshot(&self, now: u64) -> Result<RevocationList, BrokerError>;
}

/// Revocations kept in this process: the memory broker's, and what a server uses when its broker shares none.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    list: Mutex<RevocationList>,
}

impl MemoryRevocations {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_list<T>(&self, f: impl FnOnce(&mut RevocationList) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters: keep serving.
        f(&mut self.list.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait::async_trait]
impl Revocations for MemoryRevocations {
    async fn revoke(&self, entry: Revocation, now: u64) -> Result<u64, BrokerError> {
        Ok(self.with_list(|list| {
            list.prune(now);
            list.insert(entry);
            list.version += 1;
            list.version
        }))
    }

    async fn version(&self) -> Result<u64, BrokerError> {
        Ok(self.with_list(|list| list.version))
    }

    async fn snapshot(&self, now: u64) -> Result<RevocationList, BrokerError> {
        Ok(self.with_list(|list| {
            let mut snapshot = list.clone();
            snapshot.prune(now);
            snapshot
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(s: &str) -> RevocationTarget {
        RevocationTarget::jti(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sub(s: &str) -> RevocationTarget {
        RevocationTarget::sub(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn targets_parse_and_round_trip_through_their_stored_form() {
        for target in [jti("a-b.c"), sub("user:42"), sub("x".repeat(MAX_REVOCATION_ID_LEN).as_str())] {
            assert_eq!(RevocationTarget::decode(&target.encode()), Ok(target.clone()), "{target:?}");
        }
        assert_eq!(RevocationTarget::jti(""), Err(RevocationError::Empty("jti")));
        assert_eq!(RevocationTarget::sub("a\nb"), Err(RevocationError::ControlCharacter("sub")));
        assert!(matches!(
            RevocationTarget::sub(&"x".repeat(MAX_REVOCATION_ID_LEN + 1)),
            Err(RevocationError::TooLong { .. })
        ));
        assert!(RevocationTarget::decode("kid:x").is_err(), "unknown kind");
        assert!(RevocationTarget::decode("jti").is_err(), "no separator");
    }

    #[test]
    fn a_token_is_revoked_by_its_jti_or_its_sub_while_the_entry_is_in_force() {
        let list = RevocationList::new(
            1,
            [Revocation { target: jti("t1"), until: 100 }, Revocation { target: sub("mallory"), until: 200 }],
        );
        assert!(list.is_revoked("ann", Some("t1"), 99), "by jti");
        assert!(!list.is_revoked("ann", Some("t1"), 100), "the jti entry expired at its until");
        assert!(!list.is_revoked("ann", Some("t2"), 50), "another token");
        assert!(!list.is_revoked("ann", None, 50), "a token without jti");
        assert!(list.is_revoked("mallory", None, 199), "by sub");
        assert!(list.is_revoked("mallory", Some("t9"), 199), "by sub, whatever the jti");
        assert!(!list.is_revoked("mallory", None, 200), "the sub entry expired");
        assert_eq!(list.revoking("mallory", Some("t1"), 10).map(|r| r.target), Some(jti("t1")), "jti first");
    }

    #[test]
    fn entries_list_only_what_is_in_force_and_a_later_entry_replaces_an_earlier_one() {
        let mut list = RevocationList::default();
        list.insert(Revocation { target: sub("b"), until: 50 });
        list.insert(Revocation { target: sub("a"), until: 10 });
        list.insert(Revocation { target: sub("b"), until: 30 });
        list.insert(Revocation { target: jti("z"), until: 40 });
        assert_eq!(
            list.entries(20),
            vec![Revocation { target: jti("z"), until: 40 }, Revocation { target: sub("b"), until: 30 }]
        );
        list.prune(35);
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn the_memory_store_counts_versions_and_forgets_expired_entries() {
        let store = MemoryRevocations::new();
        let now = 1_000;
        let revoke = |target, until| futures::executor::block_on(store.revoke(Revocation { target, until }, now));
        assert_eq!(revoke(jti("t"), now + 10), Ok(1));
        assert_eq!(revoke(sub("s"), now + 1), Ok(2));
        assert_eq!(futures::executor::block_on(store.version()), Ok(2));
        let later = futures::executor::block_on(store.snapshot(now + 5)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((later.version, later.entries(now + 5).len()), (2, 1), "the sub entry expired");
    }
}
