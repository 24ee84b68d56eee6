//! The embedded, in-memory broker: storyline's zero-setup default.
//!
//! Each story is a bounded log (a `VecDeque` of at most `LogRetention::max_events` events) behind a short-lived
//! mutex, with a [`tokio::sync::Notify`] that wakes tails when an event is appended. Ids are assigned exactly as
//! Redis Streams assigns them (`<ms>-<seq>`, never going backwards), so clients cannot tell the brokers apart.
//!
//! What it is not: durable or shared. Events live as long as the process; two instances do not see each other's
//! stories. Use the Redis broker for that.
//!
//! Memory: every story keeps at most `max_events` events (fewer with `max_age`); idempotency keys are forgotten
//! after `idempotency_window` (or the story TTL, if shorter) in every story, written to or not; a story entry that
//! holds no events, keys or tails is removed (so opening streams on made-up story ids costs nothing once they
//! close). With a story TTL, a story not appended to for that long is forgotten (events, trimming record and keys
//! together): at once for whoever looks at it next, and its memory is reclaimed by a sweep that runs with appends
//! (at most twice the TTL after its last append). Without one, the number of stories with events is not bounded
//! here.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use storyline_core::{
    Appended, Broker, BrokerError, EventId, EventStream, Fingerprint, Gap, Idempotency, LogBounds, LogRetention,
    NewEvent, Page, PageLimit, Receipt, Retention, StoredEvent, StoryId, TailItem,
};
use storyline_core::{MemoryRevocations, Revocations};
use tokio::sync::Notify;

/// How many events a tail fetches from the log per lock acquisition.
const TAIL_BATCH: usize = 256;

/// The in-memory broker. Cloning shares the same logs.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    retention: Retention,
    stories: Mutex<HashMap<StoryId, Arc<StoryLog>>>,
    /// Every remembered idempotency key, oldest first. The window is constant, so this is also expiry order, and
    /// sweeping it on each append forgets keys of idle stories too (amortised O(1) per append).
    key_expiry: Mutex<VecDeque<(Instant, StoryId, String)>>,
    /// With a story TTL: stories to look at for expiry, in the order they were queued (at most one entry per
    /// story; a story still in use when looked at is queued again).
    story_expiry: Mutex<VecDeque<(Instant, StoryId)>>,
    /// The revocation list, shared like the logs by every server on this broker (in one process).
    revocations: Arc<MemoryRevocations>,
}

#[derive(Debug, Default)]
struct StoryLog {
    state: Mutex<LogState>,
    appended: Notify,
}

#[derive(Debug, Default)]
struct LogState {
    events: VecDeque<StoredEvent>,
    last_id: EventId,
    trimmed_through: Option<EventId>,
    /// Remembered keys, with the fingerprint of the request that stored them and when they were stored.
    idempotency: HashMap<String, (Receipt, Fingerprint, Instant)>,
    /// Open tails on this story (an entry with no events, keys or tails is removed).
    tails: usize,
    /// When the story was last appended to (for the story TTL).
    last_append: Option<Instant>,
    /// Whether the story is in the expiry sweep's queue.
    queued_for_expiry: bool,
}

impl MemoryBroker {
    pub fn new(retention: Retention) -> Self {
        Self {
            inner: Arc::new(Inner {
                retention,
                stories: Mutex::default(),
                key_expiry: Mutex::default(),
                story_expiry: Mutex::default(),
                revocations: Arc::default(),
            }),
        }
    }

    /// A story's state, locked, with the story forgotten first if it expired (lazily: whoever looks next sees it
    /// gone, sweep or not).
    fn state<'a>(&self, log: &'a StoryLog, now: Instant) -> MutexGuard<'a, LogState> {
        let mut state = lock(&log.state);
        state.expire_if_idle(now, self.inner.retention.story_ttl);
        state
    }

    /// Forgets stories not appended to for the TTL, and drops their entries when nothing else holds them.
    fn expire_idle_stories(&self, now: Instant) {
        let Some(ttl) = self.inner.retention.story_ttl else { return };
        loop {
            let due = {
                let mut queue = lock(&self.inner.story_expiry);
                match queue.front() {
                    Some((queued_at, _)) if now.duration_since(*queued_at) >= ttl => queue.pop_front(),
                    _ => None,
                }
            };
            let Some((_, story)) = due else { return };
            let Some(log) = self.existing_log(&story) else { continue };
            let mut state = self.state(&log, now);
            state.queued_for_expiry = false;
            if state.last_append.is_some() {
                // Appended to since it was queued: look again a TTL from now (by then it is at most 2 TTLs old).
                state.queued_for_expiry = true;
                lock(&self.inner.story_expiry).push_back((now, story.clone()));
            }
            drop(state);
            self.remove_if_unused(&story);
        }
    }

    /// The story's log, created if needed, with `f` run on its state while the map lock is still held, so that
    /// [`MemoryBroker::remove_if_unused`] cannot drop the entry between the lookup and `f` (lock order: map, then
    /// story).
    fn with_log<R>(&self, story: &StoryId, f: impl FnOnce(&mut LogState) -> R) -> (Arc<StoryLog>, R) {
        let mut stories = lock(&self.inner.stories);
        let log = Arc::clone(stories.entry(story.clone()).or_default());
        let result = f(&mut lock(&log.state));
        drop(stories);
        (log, result)
    }

    fn existing_log(&self, story: &StoryId) -> Option<Arc<StoryLog>> {
        lock(&self.inner.stories).get(story).cloned()
    }

    /// Forgets idempotency keys older than the window, in every story.
    fn expire_idempotency_keys(&self, now: Instant) {
        let window = self.inner.retention.idempotency_ttl();
        loop {
            let expired = {
                let mut queue = lock(&self.inner.key_expiry);
                match queue.front() {
                    Some((stored_at, _, _)) if now.duration_since(*stored_at) >= window => queue.pop_front(),
                    _ => None,
                }
            };
            let Some((stored_at, story, key)) = expired else { return };
            if let Some(log) = self.existing_log(&story) {
                let mut state = lock(&log.state);
                // Only the entry this queue item recorded (a key can be stored again after it expired).
                if state.idempotency.get(&key).is_some_and(|(_, _, at)| *at == stored_at) {
                    state.idempotency.remove(&key);
                }
                drop(state);
                self.remove_if_unused(&story);
            }
        }
    }

    /// Drops a story entry that holds nothing: no events, no keys, no tails.
    fn remove_if_unused(&self, story: &StoryId) {
        let mut stories = lock(&self.inner.stories);
        let unused = stories.get(story).is_some_and(|log| {
            let state = lock(&log.state);
            state.events.is_empty()
                && state.idempotency.is_empty()
                && state.tails == 0
                && state.trimmed_through.is_none()
        });
        if unused {
            stories.remove(story);
        }
    }
}

/// Counts a tail on its story while alive, and removes the story entry afterwards if nothing else uses it.
#[derive(Debug)]
struct TailGuard {
    broker: MemoryBroker,
    story: StoryId,
}

impl Drop for TailGuard {
    fn drop(&mut self) {
        if let Some(log) = self.broker.existing_log(&self.story) {
            let mut state = lock(&log.state);
            state.tails = state.tails.saturating_sub(1);
        }
        self.broker.remove_if_unused(&self.story);
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

/// A poisoned lock means a panic happened while holding it; the log itself is still consistent because every
/// critical section below leaves it valid at each step, so keep serving rather than cascading the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LogState {
    /// Forgets the story if it was not appended to for `ttl`: events, trimming record and idempotency keys go
    /// together. The last id is kept, so ids stay increasing across the story's lives in this process.
    fn expire_if_idle(&mut self, now: Instant, ttl: Option<Duration>) {
        let (Some(ttl), Some(last)) = (ttl, self.last_append) else { return };
        if now.duration_since(last) >= ttl {
            self.events.clear();
            self.idempotency.clear();
            self.trimmed_through = None;
            self.last_append = None;
        }
    }

    /// Applies retention after appending `newest`: by age (relative to the newest id's time, as Redis does), then by
    /// count. Records the newest trimmed id so resumes can tell a gap.
    fn trim(&mut self, newest: EventId, retention: &LogRetention) {
        if let Some(max_age) = retention.max_age {
            let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
            let cutoff_ms = newest.ms.saturating_sub(max_age_ms);
            while self.events.front().is_some_and(|e| e.id.ms < cutoff_ms) {
                if let Some(trimmed) = self.events.pop_front() {
                    self.trimmed_through = Some(trimmed.id);
                }
            }
        }
        while self.events.len() > retention.max_events.get() {
            if let Some(trimmed) = self.events.pop_front() {
                self.trimmed_through = Some(trimmed.id);
            }
        }
    }

    fn read_after(&self, after: EventId, limit: usize) -> Vec<StoredEvent> {
        let start = self.events.partition_point(|e| e.id <= after);
        self.events.range(start..).take(limit).cloned().collect()
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn append(
        &self,
        story: &StoryId,
        event: NewEvent,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BrokerError> {
        let now = Instant::now();
        self.expire_idempotency_keys(now);
        self.expire_idle_stories(now);
        let retention = self.inner.retention.for_story(story);
        let ttl = self.inner.retention.story_ttl;
        let (log, appended) = self.with_log(story, |state| {
            state.expire_if_idle(now, ttl);
            // Check and append under one lock: a concurrent append with the same key waits here for this one.
            if let Some(idem) = idempotency
                && let Some((receipt, fingerprint, _)) = state.idempotency.get(idem.key.as_str())
            {
                if *fingerprint != idem.fingerprint {
                    return Err(BrokerError::IdempotencyKeyMismatch);
                }
                return Ok(Appended { receipt: receipt.clone(), duplicate: true });
            }
            let id = state.last_id.next_after(now_ms()).ok_or(BrokerError::IdSpaceExhausted)?;
            if ttl.is_some() && state.events.is_empty() {
                // A new story, or one forgotten after its TTL: whatever came before this id is unknown, so a
                // reader resuming from an older id is told of a gap (guarantee 8), as on Redis.
                state.trimmed_through = Some(id.just_before());
            }
            let stored = StoredEvent::from_new(id, story.clone(), event);
            let receipt = stored.receipt();
            state.last_id = id;
            state.events.push_back(stored);
            state.trim(id, &retention);
            state.last_append = Some(now);
            if ttl.is_some() && !state.queued_for_expiry {
                state.queued_for_expiry = true;
                lock(&self.inner.story_expiry).push_back((now, story.clone()));
            }
            if let Some(idem) = idempotency {
                let remembered = (receipt.clone(), idem.fingerprint.clone(), now);
                state.idempotency.insert(idem.key.as_str().to_owned(), remembered);
                lock(&self.inner.key_expiry).push_back((now, story.clone(), idem.key.as_str().to_owned()));
            }
            Ok(Appended { receipt, duplicate: false })
        });
        let appended = appended?;
        if appended.duplicate {
            return Ok(appended);
        }
        log.appended.notify_waiters();
        Ok(appended)
    }

    async fn read_after(&self, story: &StoryId, after: EventId, limit: PageLimit) -> Result<Page, BrokerError> {
        Ok(self
            .existing_log(story)
            .map(|log| {
                let state = self.state(&log, Instant::now());
                Page {
                    gap: Gap::after(after, state.trimmed_through, state.events.front().map(|e| e.id)),
                    events: state.read_after(after, limit.get()),
                }
            })
            .unwrap_or_default())
    }

    fn tail(&self, story: &StoryId, after: EventId) -> EventStream {
        let (log, ()) = self.with_log(story, |state| state.tails += 1);
        let guard = TailGuard { broker: self.clone(), story: story.clone() };
        let state = (log, after, VecDeque::new(), guard);
        futures::stream::unfold(state, |(log, mut cursor, mut buffer, guard)| async move {
            loop {
                if let Some(item) = buffer.pop_front() {
                    return Some((Ok(item), (log, cursor, buffer, guard)));
                }
                // Register for the wake-up before looking, so an append between the look and the wait is not
                // missed.
                let appended = log.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                {
                    // The gap check and the read see one state: nothing can be trimmed in between.
                    let state = guard.broker.state(&log, Instant::now());
                    let gap = Gap::after(cursor, state.trimmed_through, state.events.front().map(|e| e.id));
                    if let (Some(gap), Some(trimmed)) = (gap, state.trimmed_through) {
                        buffer.push_back(TailItem::Gap(gap));
                        cursor = trimmed;
                    }
                    let batch = state.read_after(cursor, TAIL_BATCH);
                    if let Some(last) = batch.last() {
                        cursor = last.id;
                    }
                    buffer.extend(batch.into_iter().map(TailItem::Event));
                }
                if buffer.is_empty() {
                    appended.await;
                }
            }
        })
        .boxed()
    }

    async fn bounds(&self, story: &StoryId) -> Result<LogBounds, BrokerError> {
        Ok(self
            .existing_log(story)
            .map(|log| {
                let state = self.state(&log, Instant::now());
                LogBounds {
                    oldest: state.events.front().map(|e| e.id),
                    newest: state.events.back().map(|e| e.id),
                    trimmed_through: state.trimmed_through,
                }
            })
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn revocations(&self) -> Option<Arc<dyn Revocations>> {
        Some(self.inner.revocations.clone())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use storyline_core::{EventData, EventType, IdempotencyKey, Metadata};

    use super::*;

    fn story(s: &str) -> StoryId {
        StoryId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn event() -> NewEvent {
        NewEvent {
            event_type: EventType::parse("chapter").unwrap_or_else(|e| panic!("{e}")),
            data: EventData::from_json_text("1").unwrap_or_else(|e| panic!("{e}")),
            author: "a".into(),
            ts: 1,
            meta: Metadata::new(),
        }
    }

    fn stories(broker: &MemoryBroker) -> usize {
        lock(&broker.inner.stories).len()
    }

    #[tokio::test]
    async fn streams_on_made_up_stories_leave_nothing_behind() {
        let broker = MemoryBroker::default();
        let mut tails: Vec<_> = (0..100).map(|n| broker.tail(&story(&format!("nobody-{n}")), EventId::ZERO)).collect();
        for tail in &mut tails {
            assert!(tokio::time::timeout(Duration::from_millis(1), tail.next()).await.is_err(), "nothing to yield");
        }
        assert_eq!(stories(&broker), 100, "each open tail has its story entry");
        drop(tails);
        assert_eq!(stories(&broker), 0, "closed tails on empty stories leave no entries");
        broker.append(&story("real"), event(), None).await.unwrap_or_else(|e| panic!("{e}"));
        drop(broker.tail(&story("real"), EventId::ZERO));
        assert_eq!(stories(&broker), 1, "a story with events stays");
    }

    #[tokio::test]
    async fn abandoned_stories_are_swept_away_after_their_ttl() {
        let ttl = Duration::from_millis(50);
        let broker = MemoryBroker::new(Retention { story_ttl: Some(ttl), ..Retention::default() });
        let key = IdempotencyKey::parse("k").unwrap_or_else(|e| panic!("{e}"));
        for n in 0..100 {
            let idem = Idempotency::for_event(key.clone(), &event());
            broker
                .append(&story(&format!("abandoned-{n}")), event(), Some(&idem))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(stories(&broker), 100);
        // Nobody looks at the abandoned stories again: only the sweep that runs with appends elsewhere can free them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stories(&broker) > 1 {
            assert!(Instant::now() < deadline, "{} abandoned stories were never swept", stories(&broker) - 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
            broker.append(&story("busy"), event(), None).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(broker.existing_log(&story("busy")).is_some(), "the story in use is kept");
        assert!(lock(&broker.inner.key_expiry).len() <= 100, "the key queue does not grow past the keys stored");
        assert!(lock(&broker.inner.story_expiry).len() <= 1, "one queue entry per story left");
    }

    #[tokio::test]
    async fn idempotency_keys_of_idle_stories_expire_too() {
        let window = Duration::from_millis(50);
        let broker = MemoryBroker::new(Retention { idempotency_window: window, ..Retention::default() });
        let key = IdempotencyKey::parse("k").unwrap_or_else(|e| panic!("{e}"));
        let idem = Idempotency::for_event(key, &event());
        broker.append(&story("idle"), event(), Some(&idem)).await.unwrap_or_else(|e| panic!("{e}"));
        let idle_keys = || {
            lock(&broker.existing_log(&story("idle")).map(|l| Arc::clone(&l)).unwrap_or_default().state)
                .idempotency
                .len()
        };
        assert_eq!(idle_keys(), 1);
        // Appends elsewhere sweep expired keys of every story; poll rather than assume timing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while idle_keys() > 0 {
            assert!(Instant::now() < deadline, "the idle story's key was never forgotten");
            tokio::time::sleep(Duration::from_millis(10)).await;
            broker.append(&story("busy"), event(), None).await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
