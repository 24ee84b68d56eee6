//! One story's feed: the upstream task that reads the broker once for all local subscribers, the window of
//! encoded frames it fills, and the subscribers' cursors into it.

use std::{
    collections::VecDeque,
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak},
    time::Duration,
};

use futures::StreamExt;
use storyline_core::{Broker, BrokerError, EventId, Gap, StoredEvent, StoryId, TailItem};
use tokio::{sync::Notify, task::AbortHandle};

use crate::{Delivery, EventFrame, HubConfig, Inner, Observer, ResumeOutcome};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Where the upstream of a story with nothing known (`ZERO`) asks its tail from: the smallest id after `ZERO`. A
/// tail at `ZERO` ("from the oldest retained") reports no gap, but a story that expired and started afresh (a
/// story TTL) records its forgotten past as trimmed, and readers of the window who resume from an id of that past
/// must hear of it: from here the tail reports it as a gap entry. No event has an id at or below it (the clock's
/// millisecond is part of every id), so the window still holds every event after `ZERO`.
const JUST_AFTER_ZERO: EventId = EventId::new(0, 1);

/// What a window holds: an encoded event frame, or a note that the upstream itself lost events to retention.
#[derive(Debug, Clone)]
enum Entry {
    Frame(Arc<EventFrame>),
    Gap(Gap),
}

impl Entry {
    /// Position in the story: a frame at its id; a gap at the id it resumes from (and before that frame).
    fn position(&self) -> EventId {
        match self {
            Self::Frame(frame) => frame.id,
            Self::Gap(gap) => gap.resumed_from,
        }
    }
}

/// Invariant: once `base` is set, every event of the story with an id greater than `base` and at most `head` is
/// in `entries` (or a gap entry says it was trimmed before the upstream read it).
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<Entry>,
    /// `None` until the upstream knows where it starts.
    base: Option<EventId>,
    /// Sum of the frames' lengths.
    bytes: usize,
}

impl Entry {
    fn len(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.bytes.len(),
            Self::Gap(_) => 0,
        }
    }
}

#[derive(Debug)]
pub(crate) struct FeedShared {
    story: StoryId,
    broker: Arc<dyn Broker>,
    config: HubConfig,
    observer: Arc<dyn Observer>,
    window: RwLock<Window>,
    changed: Notify,
}

impl FeedShared {
    pub(crate) fn new(story: StoryId, broker: Arc<dyn Broker>, config: HubConfig, observer: Arc<dyn Observer>) -> Self {
        Self { story, broker, config, observer, window: RwLock::default(), changed: Notify::new() }
    }

    /// Encodes an event once, with the meters every delivery of it records.
    fn encode(&self, event: &StoredEvent) -> EventFrame {
        EventFrame::new(event, self.observer.event_meters(&self.story, &event.event_type))
    }

    /// Encodes a live event once for the story's `subscribers`, and starts tracing its fan-out.
    fn encode_live(&self, event: &StoredEvent, subscribers: usize) -> Arc<EventFrame> {
        let frame = self.encode(event);
        let span = self.observer.fan_out_span(event);
        // Nothing to trace (no exporter): no per-delivery bookkeeping either.
        if span.is_none() {
            return Arc::new(frame);
        }
        Arc::new(frame.with_fan_out(span, subscribers))
    }

    fn read(&self) -> RwLockReadGuard<'_, Window> {
        self.window.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Window> {
        self.window.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, entry: Entry) {
        {
            let mut window = self.write();
            window.bytes += entry.len();
            window.entries.push_back(entry);
            // Keep at least the newest entry, so live subscribers are always served from the window.
            while window.entries.len() > 1
                && (window.entries.len() > self.config.window.max(1) || window.bytes > self.config.window_bytes)
            {
                if let Some(evicted) = window.entries.pop_front() {
                    window.bytes -= evicted.len();
                    window.base = Some(evicted.position());
                }
            }
        }
        self.changed.notify_waiters();
    }
}

/// A story's feed, alive while a subscriber holds it; dropping the last one stops the upstream.
#[derive(Debug)]
pub(crate) struct Feed {
    shared: Arc<FeedShared>,
    upstream: AbortHandle,
    hub: Weak<Inner>,
}

impl Feed {
    pub(crate) fn new(shared: Arc<FeedShared>, upstream: AbortHandle, hub: Weak<Inner>) -> Self {
        Self { shared, upstream, hub }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.upstream.abort();
        if let Some(hub) = self.hub.upgrade() {
            hub.release(&self.shared.story);
        }
    }
}

/// Reads the story once for every local subscriber: from its newest event on, encoding each event once. `feed`
/// is held by the story's subscriptions (one strong reference each), so it counts them.
pub(crate) async fn upstream(shared: Arc<FeedShared>, feed: Weak<Feed>) {
    let story = shared.story.clone();
    let broker = Arc::clone(&shared.broker);
    let mut backoff = BACKOFF_MIN;
    // Start after everything that exists or existed: subscribers behind that catch up from the log.
    let mut cursor = loop {
        match broker.bounds(&story).await {
            Ok(bounds) => break bounds.last_known(),
            Err(e) => {
                tracing::debug!(story = %story, error = %e, "feed cannot start yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    shared.write().base = Some(cursor);
    shared.changed.notify_waiters();
    loop {
        let mut tail = broker.tail(&story, cursor.max(JUST_AFTER_ZERO));
        while let Some(item) = tail.next().await {
            match item {
                Ok(TailItem::Event(event)) => {
                    backoff = BACKOFF_MIN;
                    cursor = event.id;
                    shared.push(Entry::Frame(shared.encode_live(&event, feed.strong_count())));
                }
                Ok(TailItem::Gap(gap)) => shared.push(Entry::Gap(gap)),
                Err(e) => {
                    tracing::warn!(story = %story, error = %e, "feed upstream failed; retrying");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One subscriber: a cursor into its story's feed. Everything else (broker, tuning) is the feed's.
#[derive(Debug)]
pub struct Subscription {
    feed: Arc<Feed>,
    reader: Reader,
}

/// A subscriber's own state, apart from the feed it reads, so it can be updated while the feed is borrowed.
#[derive(Debug)]
struct Reader {
    cursor: EventId,
    pending: VecDeque<Delivery>,
    /// The subscription resumes a reader's earlier position, and whether that was exact is not yet known.
    resuming: bool,
}

enum Fill {
    /// Frames were queued.
    Filled,
    /// The window has nothing after the cursor: wait for the upstream.
    Wait,
    /// The cursor is behind the window (or the window has not started): read the log.
    CatchUp,
}

impl Subscription {
    pub(crate) fn new(feed: Arc<Feed>, after: EventId, resuming: bool) -> Self {
        Self { feed, reader: Reader { cursor: after, pending: VecDeque::new(), resuming } }
    }

    /// The id of the last event handed out (or the starting point).
    pub fn cursor(&self) -> EventId {
        self.reader.cursor
    }

    /// The next SSE frame: an event (encoded once, shared) or a gap notice.
    ///
    /// Cancel-safe: dropping the future loses nothing (the cursor only moves once frames are queued, and queued
    /// frames are handed out synchronously).
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let feed = &*self.feed.shared;
        let reader = &mut self.reader;
        loop {
            if let Some(frame) = reader.pending.pop_front() {
                return Ok(frame);
            }
            let changed = feed.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match reader.fill_from_window(feed) {
                Fill::Filled => {}
                Fill::Wait => changed.await,
                Fill::CatchUp => {
                    if !reader.catch_up(feed).await? {
                        changed.await;
                    }
                }
            }
        }
    }
}

impl Reader {
    fn fill_from_window(&mut self, feed: &FeedShared) -> Fill {
        let window = feed.read();
        let Some(base) = window.base else { return Fill::CatchUp };
        if self.cursor < base {
            return Fill::CatchUp;
        }
        let start = window.entries.partition_point(|e| e.position() <= self.cursor);
        let behind = window.entries.len() - start;
        feed.observer.lag(behind);
        if behind == 0 {
            self.resumed(feed, ResumeOutcome::Exact);
            return Fill::Wait;
        }
        for entry in window.entries.range(start..).take(feed.config.batch.max(1)) {
            match entry {
                Entry::Frame(frame) => {
                    self.resumed(feed, ResumeOutcome::Exact);
                    self.pending.push_back(Delivery::Event(Arc::clone(frame)));
                    self.cursor = frame.id;
                }
                // A reader at `ZERO` asked for whatever is retained: no gap for it (as `Gap::after` has it). Its
                // cursor stays, so the events after the gap (all after `ZERO`) come next.
                Entry::Gap(_) if self.cursor.is_zero() => {}
                Entry::Gap(gap) => {
                    self.resumed(feed, ResumeOutcome::Gap);
                    self.pending
                        .push_back(Delivery::Gap(Gap { requested: self.cursor, resumed_from: gap.resumed_from }));
                }
            }
        }
        // Only a skipped gap: nothing to hand out until the upstream brings the events after it.
        if self.pending.is_empty() { Fill::Wait } else { Fill::Filled }
    }

    /// Reports how a resume turned out, once: the first time the reader's position meets the story.
    fn resumed(&mut self, feed: &FeedShared, outcome: ResumeOutcome) {
        if std::mem::take(&mut self.resuming) {
            feed.observer.resumed(outcome);
        }
    }

    /// Reads one page of the log after the cursor. Returns whether anything was queued.
    async fn catch_up(&mut self, feed: &FeedShared) -> Result<bool, BrokerError> {
        let page = feed.broker.read_after(&feed.story, self.cursor, feed.config.catch_up_page).await?;
        if let Some(gap) = page.gap {
            self.resumed(feed, ResumeOutcome::Gap);
            self.pending.push_back(Delivery::Gap(gap));
        }
        if page.events.is_empty() {
            // Nothing after the cursor in the log. If the window is already past the cursor, what it saw
            // between is gone from the log (a reset store): say so and join the window.
            let gap = {
                let window = feed.read();
                window.base.filter(|b| *b > self.cursor).map(|base| {
                    let resumed_from = window.entries.front().map_or(base, Entry::position);
                    (Gap { requested: self.cursor, resumed_from }, base)
                })
            };
            if let Some((gap, base)) = gap {
                self.resumed(feed, ResumeOutcome::Gap);
                self.pending.push_back(Delivery::Gap(gap));
                self.cursor = base;
            }
            return Ok(!self.pending.is_empty());
        }
        self.resumed(feed, ResumeOutcome::Exact);
        // A lower bound of how far behind this reader is: this page, and the whole window after it.
        feed.observer.lag(page.events.len() + feed.read().entries.len());
        feed.observer.replayed(page.events.len());
        for event in page.events {
            self.cursor = event.id;
            self.pending.push_back(Delivery::Event(Arc::new(feed.encode(&event))));
        }
        Ok(true)
    }
}
