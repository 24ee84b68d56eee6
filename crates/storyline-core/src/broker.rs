//! The broker port: the durable, ordered, per-story event log that the HTTP surface talks to.
//!
//! # What every adapter guarantees
//!
//! 1. **Ids.** [`Broker::append`] assigns each event an [`EventId`] strictly greater than every id previously
//!    assigned in that story (Redis Streams semantics: `<ms>-<seq>`, `ms` never going backwards). An id is never
//!    reused, even after the event is trimmed.
//! 2. **Durability of the answer.** `append` returns `Ok` only once the event is in the log; every later read sees
//!    it until retention trims it.
//! 3. **Idempotency.** With an [`Idempotency`] (a key and the [`Fingerprint`](crate::Fingerprint) of the
//!    request), the first append within the idempotency window stores the event and remembers its receipt with the
//!    fingerprint. A later append with the same key on the same story, within the window, stores nothing: with the
//!    same fingerprint it returns the first append's [`Receipt`] with `duplicate: true`; with another fingerprint
//!    (the key reused for a different request) it fails with [`BrokerError::IdempotencyKeyMismatch`]. Check and
//!    append are one atomic step, serialised per key: two concurrent appends with one key store one event, and the
//!    second waits for the first and is answered as a later one would be (duplicate or mismatch), never "in
//!    flight". A key remembered without a fingerprint (a Redis record written before fingerprints existed) is
//!    taken to match: it answers with its receipt, as it did when it was written.
//! 4. **Order.** [`Broker::read_after`] and [`Broker::tail`] yield events with ids strictly greater than the given
//!    id, in id order, each exactly once.
//! 5. **Tail.** [`Broker::tail`] first yields what is already in the log after the id, then waits for and yields
//!    new events as they are appended: no gap and no duplicate at the seam. It ends only by yielding an error
//!    (the broker became unreachable); the caller resumes with a new tail after the last id it received.
//! 6. **Retention.** Each story keeps about the [`Retention::for_story`] number of events (Redis trims
//!    approximately, so a few more may remain; never fewer), and none older than its age limit once it is next
//!    appended to. [`Broker::bounds`] reports the oldest retained id and the newest id trimmed
//!    away, so a reader can tell a resume point that fell out of the log (a gap) from one that did not.
//! 7. **Failure.** Every operation either completes or fails with [`BrokerError::Unavailable`] within the
//!    adapter's configured timeout; none hangs. An append that fails after it was sent to the store (the
//!    connection broke or the timeout passed before the answer) fails with [`BrokerError::Unconfirmed`] instead:
//!    the event may or may not be in the log, and only a retry with the same [`IdempotencyKey`] settles which
//!    without storing it twice. `Unavailable` from an append means nothing was stored.
//! 8. **Expiry.** With [`Retention::story_ttl`], a story not appended to for that long is forgotten: its events,
//!    its trimming record and its idempotency keys go together (no key outlives its story, so a later story under
//!    the same id never answers with a receipt of the forgotten one). The next append starts the story afresh, with
//!    an id from the clock (above the forgotten ids unless the clock went back by more than the TTL). That first
//!    append records everything before its id as trimmed, so a reader resuming with an id of the forgotten story
//!    is told of a [`Gap`] (on a read, on a tail's catch-up and on a tail that is live when it happens), never left
//!    with a silent hole; a reader starting from [`EventId::ZERO`] gets no gap, as ever.

use std::{collections::BTreeMap, fmt, num::NonZeroUsize, sync::Arc, time::Duration};

use futures::stream::BoxStream;

use crate::{EventId, Idempotency, NewEvent, Receipt, Revocations, StoredEvent, StoryId};

/// Default and maximum page sizes for [`Broker::read_after`].
pub const DEFAULT_PAGE_LIMIT: usize = 100;
pub const MAX_PAGE_LIMIT: usize = 1000;

/// A page size in `1..=MAX_PAGE_LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(NonZeroUsize);

impl PageLimit {
    pub fn new(n: usize) -> Option<Self> {
        if n > MAX_PAGE_LIMIT {
            return None;
        }
        NonZeroUsize::new(n).map(Self)
    }

    pub fn get(self) -> usize {
        self.0.get()
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self(NonZeroUsize::new(DEFAULT_PAGE_LIMIT).unwrap_or(NonZeroUsize::MIN))
    }
}

/// How much of one story's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    /// Events kept (approximate in Redis: trimmed in small batches, never below this).
    pub max_events: NonZeroUsize,
    /// Events older than this (by the millisecond part of their id) are removed when the story is next appended
    /// to. `None` keeps events regardless of age. The newest event of a story is never removed for its age.
    pub max_age: Option<Duration>,
}

/// How much history each story keeps, by default and per namespace, and for how long idempotency keys are
/// remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// What a story keeps unless its namespace says otherwise.
    pub log: LogRetention,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Per-namespace retention (the namespace: [`StoryId::namespace`]), replacing [`Retention::log`] for the stories of
    /// that namespace.
    pub namespaces: Arc<BTreeMap<String, LogRetention>>,
    /// A story not appended to for this long is forgotten, events and idempotency keys together (guarantee 8).
    /// `None` keeps stories until retention trims them. Idempotency keys are then remembered for the shorter of
    /// the window and this.
    pub story_ttl: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            log: LogRetention { max_events: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN), max_age: None },
            idempotency_window: Duration::from_secs(24 * 60 * 60),
            namespaces: Arc::default(),
            story_ttl: None,
        }
    }
}

impl Retention {
    /// What `story` keeps: its namespace's retention if it has one, else the defaults.
    pub fn for_story(&self, story: &StoryId) -> LogRetention {
        self.namespaces.get(story.namespace()).copied().unwrap_or(self.log)
    }

    /// How long an idempotency key is remembered: the window, or the story TTL if that is shorter (a key must not
    /// outlive its story).
    pub fn idempotency_ttl(&self) -> Duration {
        self.story_ttl.map_or(self.idempotency_window, |ttl| ttl.min(self.idempotency_window))
    }

    /// The same, with `namespace`'s stories keeping `retention`.
    pub fn with_namespace(mut self, namespace: impl Into<String>, retention: LogRetention) -> Self {
        Arc::make_mut(&mut self.namespaces).insert(namespace.into(), retention);
        self
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub receipt: Receipt,
    /// `true` when an earlier append with the same idempotency key is being answered and nothing was stored.
    pub duplicate: bool,
}

/// What a story's log currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The oldest event still retained, if any.
    pub oldest: Option<EventId>,
    /// The newest event in the log, if any: where a live-only subscription starts.
    pub newest: Option<EventId>,
    /// The newest id ever removed from the log by retention, if any.
    pub trimmed_through: Option<EventId>,
}

impl LogBounds {
    /// If resuming after `resume` would silently skip trimmed events, the id of the first event that will be
    /// delivered instead (or the last trimmed id when nothing is retained). `None` means resuming is exact.
    ///
    /// `EventId::ZERO` ("from the oldest retained event") never reports a gap: the client asked for what is kept.
    /// The newest id the story ever had, whether still retained or trimmed away (`ZERO` for a story that never
    /// had an event): where a live reader starts, so that an emptied story with a trimmed past is not mistaken
    /// for a hole later.
    pub fn last_known(&self) -> EventId {
        self.newest.max(self.trimmed_through).unwrap_or(EventId::ZERO)
    }

    pub fn gap_for(&self, resume: EventId) -> Option<EventId> {
        Gap::after(resume, self.trimmed_through, self.oldest).map(|gap| gap.resumed_from)
    }
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The backing store could not be reached or did not answer in time. Retrying later may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A write reached the store, or may have, but its answer did not come back (the connection broke, or the
    /// timeout passed): it may or may not have taken effect. Retrying later may succeed; an append retried with
    /// the same idempotency key stores nothing twice.
    #[error("broker did not confirm the write: {0}")]
    Unconfirmed(String),
    /// The story's log cannot take another id (the sequence within a millisecond overflowed).
    #[error("story log is full: no further ids can be assigned")]
    IdSpaceExhausted,
    /// The idempotency key was used on this story, within the window, for a request with another fingerprint
    /// (another type or data): nothing was stored. Retrying will not help; a new request needs a new key.
    #[error("the idempotency key was already used for a different request")]
    IdempotencyKeyMismatch,
    /// The store refused the operation for a reason retrying will not fix (an incompatible server version, a
    /// wrong-type key, a script error): a bug or a misconfiguration, not an outage.
    #[error("broker rejected the operation: {0}")]
    Rejected(String),
    /// The store answered with something this adapter cannot interpret; a bug or a foreign writer.
    #[error("broker returned corrupt data: {0}")]
    Corrupt(String),
}

/// Events after `requested` up to (not including) `resumed_from` were removed by retention before they could be
/// delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The position the reader was at.
    pub requested: EventId,
    /// The next event that will be delivered (the oldest retained one), or, if nothing is retained, the newest
    /// removed id.
    pub resumed_from: EventId,
}

impl Gap {
    /// The gap a reader at `position` faces, given the newest trimmed id and the oldest retained one, or `None`
    /// when nothing after `position` was trimmed. [`EventId::ZERO`] ("from the oldest retained") never has one.
    pub fn after(position: EventId, trimmed_through: Option<EventId>, oldest: Option<EventId>) -> Option<Self> {
        let trimmed = trimmed_through?;
        (!position.is_zero() && position < trimmed)
            .then(|| Self { requested: position, resumed_from: oldest.filter(|o| *o > trimmed).unwrap_or(trimmed) })
    }
}

/// A page of a story's log: the events after a position and, if retention removed events right after that
/// position, the gap (read atomically with the events).
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub gap: Option<Gap>,
    pub events: Vec<StoredEvent>,
}

/// What a tail yields.
#[derive(Debug, Clone)]
pub enum TailItem {
    Event(StoredEvent),
    /// Events were trimmed before they could be read; the following items continue from `resumed_from`.
    Gap(Gap),
}

/// Events after a position, as they are appended. See [`Broker::tail`].
pub type EventStream = BoxStream<'static, Result<TailItem, BrokerError>>;

/// The durable per-story event log. See the module docs for the guarantees every implementation owes.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// A short, stable name for logs (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Appends an event, or answers an earlier append with the same idempotency key (guarantee 3).
    async fn append(
        &self,
        story: &StoryId,
        event: NewEvent,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BrokerError>;

    /// Up to `limit` events with ids greater than `after`, oldest first, and the gap if events right after
    /// `after` were removed by retention.
    async fn read_after(&self, story: &StoryId, after: EventId, limit: PageLimit) -> Result<Page, BrokerError>;

    /// Every event after `after`: the retained backlog first, then new events as they are appended.
    fn tail(&self, story: &StoryId, after: EventId) -> EventStream;

    /// The retained range of a story's log (all `None` for a story that never had an event).
    async fn bounds(&self, story: &StoryId) -> Result<LogBounds, BrokerError>;

    /// Succeeds when the broker can serve requests now (readiness).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// A rate-limit store shared by every instance on this broker's store, if it has one (see
    /// [`RateLimitStore`](crate::RateLimitStore)). `None` (the default): limits stay per instance.
    fn rate_limits(&self) -> Option<Arc<dyn crate::RateLimitStore>> {
        None
    }

    /// An optional capability: the revocation list kept in this broker's store, shared by every instance that uses
    /// it (see [`Revocations`]). `None` (the default): the store keeps none, and each server keeps its own.
    fn revocations(&self) -> Option<Arc<dyn Revocations>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limit_is_one_to_a_thousand() {
        assert_eq!(PageLimit::new(0), None);
        assert_eq!(PageLimit::new(1).map(PageLimit::get), Some(1));
        assert_eq!(PageLimit::new(1000).map(PageLimit::get), Some(1000));
        assert_eq!(PageLimit::new(1001), None);
    }

    #[test]
    fn a_gap_is_reported_only_when_trimmed_events_lie_after_the_resume_point() {
        let bounds = LogBounds {
            oldest: Some(EventId::new(10, 0)),
            newest: Some(EventId::new(12, 0)),
            trimmed_through: Some(EventId::new(9, 3)),
        };
        assert_eq!(bounds.gap_for(EventId::new(9, 2)), Some(EventId::new(10, 0)), "event 9-3 was trimmed");
        assert_eq!(bounds.gap_for(EventId::new(9, 3)), None, "resuming right after the last trimmed event");
        assert_eq!(bounds.gap_for(EventId::new(12, 0)), None);
        assert_eq!(bounds.gap_for(EventId::ZERO), None, "0 means from the oldest retained");
        assert_eq!(LogBounds::default().gap_for(EventId::new(1, 0)), None, "nothing ever trimmed");
        let all_trimmed = LogBounds { oldest: None, newest: None, trimmed_through: Some(EventId::new(9, 3)) };
        assert_eq!(all_trimmed.gap_for(EventId::new(1, 0)), Some(EventId::new(9, 3)));
    }
}
