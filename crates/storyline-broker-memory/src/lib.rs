//! The embedded, in-memory broker: storyline's zero-setup default.
//!
//! Each story is a bounded log (a `VecDeque` of at most `Retention::max_events` events) behind a short-lived
//! mutex, with a [`tokio::sync::Notify`] that wakes tails when an event is appended. Ids are assigned exactly as
//! Redis Streams assigns them (`<ms>-<seq>`, never going backwards), so clients cannot tell the brokers apart.
//!
//! What it is not: durable or shared. Events live as long as the process; two instances do not see each other's
//! stories. Use the Redis broker for that.
//!
//! Memory: every story keeps at most `max_events` events (fewer with `max_age`) plus the idempotency keys of the last
//! `idempotency_window`. The number of stories is not bounded here (a story costs a few hundred bytes before
//! its first event).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use storyline_core::{
    Appended, Broker, BrokerError, EventId, EventStream, Gap, IdempotencyKey, LogBounds, NewEvent, PageLimit, Receipt,
    Retention, StoredEvent, StoryId, TailItem,
};
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
    idempotency: HashMap<String, Receipt>,
    /// Keys in the order they were stored; since the window is constant this is also expiry order.
    idempotency_order: VecDeque<(Instant, String)>,
}

impl MemoryBroker {
    pub fn new(retention: Retention) -> Self {
        Self { inner: Arc::new(Inner { retention, stories: Mutex::default() }) }
    }

    fn log(&self, story: &StoryId) -> Arc<StoryLog> {
        let mut stories = lock(&self.inner.stories);
        Arc::clone(stories.entry(story.clone()).or_default())
    }

    fn existing_log(&self, story: &StoryId) -> Option<Arc<StoryLog>> {
        lock(&self.inner.stories).get(story).cloned()
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
    fn expire_idempotency_keys(&mut self, now: Instant, window: std::time::Duration) {
        while let Some((stored_at, _)) = self.idempotency_order.front() {
            if now.duration_since(*stored_at) < window {
                break;
            }
            if let Some((_, key)) = self.idempotency_order.pop_front() {
                self.idempotency.remove(&key);
            }
        }
    }

    /// Applies retention after appending `newest`: by age (relative to the newest id's time, as Redis does), then by
    /// count. Records the newest trimmed id so resumes can tell a gap.
    fn trim(&mut self, newest: EventId, retention: &Retention) {
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
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Appended, BrokerError> {
        let log = self.log(story);
        let retention = self.inner.retention;
        let appended = {
            let mut state = lock(&log.state);
            let now = Instant::now();
            state.expire_idempotency_keys(now, retention.idempotency_window);
            if let Some(key) = idempotency_key
                && let Some(receipt) = state.idempotency.get(key.as_str())
            {
                return Ok(Appended { receipt: receipt.clone(), duplicate: true });
            }
            let id = state.last_id.next_after(now_ms()).ok_or(BrokerError::IdSpaceExhausted)?;
            let stored = StoredEvent::from_new(id, story.clone(), event);
            let receipt = stored.receipt();
            state.last_id = id;
            state.events.push_back(stored);
            state.trim(id, &retention);
            if let Some(key) = idempotency_key {
                state.idempotency.insert(key.as_str().to_owned(), receipt.clone());
                state.idempotency_order.push_back((now, key.as_str().to_owned()));
            }
            Appended { receipt, duplicate: false }
        };
        log.appended.notify_waiters();
        Ok(appended)
    }

    async fn read_after(
        &self,
        story: &StoryId,
        after: EventId,
        limit: PageLimit,
    ) -> Result<Vec<StoredEvent>, BrokerError> {
        Ok(self.existing_log(story).map(|log| lock(&log.state).read_after(after, limit.get())).unwrap_or_default())
    }

    fn tail(&self, story: &StoryId, after: EventId) -> EventStream {
        let log = self.log(story);
        futures::stream::unfold((log, after, VecDeque::new()), |(log, mut cursor, mut buffer)| async move {
            loop {
                if let Some(item) = buffer.pop_front() {
                    return Some((Ok(item), (log, cursor, buffer)));
                }
                // Register for the wake-up before looking, so an append between the look and the wait is not
                // missed.
                let appended = log.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                {
                    // The gap check and the read see one state: nothing can be trimmed in between.
                    let state = lock(&log.state);
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
                let state = lock(&log.state);
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
}
