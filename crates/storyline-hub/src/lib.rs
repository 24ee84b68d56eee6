//! The fan-out engine: one event in, many frames out, at the cost of one broker read and one encoding.
//!
//! - **One upstream read per story.** The first local subscriber of a story starts one broker tail for it (its
//!   [`Feed`]); every later subscriber of that story shares it; the last one leaving stops it. A story with no
//!   local subscriber costs nothing.
//! - **Encode once.** The upstream turns each event into its complete SSE frame (`id:`, `event:`, `data:`) once,
//!   as [`Bytes`]; subscribers hand out clones of that buffer (a reference-count increment), never re-serializing.
//!   A stream that writes an `id:` line of its own (the many-story stream's cursor) shares the rest of the frame
//!   ([`EventFrame::fields`], a slice of the same buffer).
//! - **Bounded memory.** A feed keeps a window of the last `window` frames. A subscriber is only a cursor into
//!   it. One that falls behind the window (a slow socket, a long replay) does not hold frames or block anyone:
//!   it catches up from gap-aware broker pages after its cursor, then rejoins the window, with no gap and no
//!   duplicate; if retention removed events it has not seen, it gets a `gap` frame, never a silent hole.
//!
//! Cost model of the hot path, per event: one broker read (shared), one JSON + frame encoding, one write-lock
//! push, one `notify_waiters`; then per subscriber one read-lock and one `Bytes` clone per frame.
//!
//! This crate knows no HTTP framework and no broker adapter: it runs over any [`Broker`].

mod feed;
mod frame;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

pub use bytes::Bytes;
pub use feed::Subscription;
use feed::{Feed, FeedShared};
pub use frame::{
    GapData, SseFrame, StoryGapData, encode_event, encode_gap, encode_story_gap, position_after_gap, take_frame,
};
use storyline_core::{Broker, EventId, EventType, Gap, PageLimit, StoredEvent, StoryId};

/// An event as the engine hands it to subscribers: its SSE frame, encoded once and shared by every subscriber
/// of this instance, with what delivery needs to measure itself (its accept time and meters).
#[derive(Debug)]
pub struct EventFrame {
    pub id: EventId,
    /// The complete frame (`id:`, `event:`, `data:`).
    pub bytes: Bytes,
    /// Where the `event:` line starts in `bytes` (after the `id:` line).
    fields_at: usize,
    /// When ingress accepted it, milliseconds since the Unix epoch (the envelope's `ts`).
    pub accepted_ms: u64,
    /// Looked up once per event, recorded per delivery.
    pub meters: EventMeters,
    /// The traced fan-out of a live event (none for events read back from the log for one subscriber).
    fan_out: Option<FanOut>,
}

impl EventFrame {
    pub fn new(event: &StoredEvent, meters: EventMeters) -> Self {
        let (bytes, fields_at) = frame::encode_event_frame(event);
        Self { id: event.id, bytes, fields_at, accepted_ms: event.ts, meters, fan_out: None }
    }

    /// The frame without its `id:` line (`event:`, `data:`, the blank line), sharing the encoded buffer (a
    /// reference-count increment, no copy): for a stream that writes an `id:` line of its own before it.
    pub fn fields(&self) -> Bytes {
        self.bytes.slice(self.fields_at..)
    }

    /// Traces this frame's fan-out to `subscribers` subscribers in `span`.
    fn with_fan_out(mut self, span: tracing::Span, subscribers: usize) -> Self {
        self.fan_out = Some(FanOut::new(span, subscribers));
        self
    }

    /// Records that the frame was handed to one subscriber's connection: counted on the event's fan-out span,
    /// which ends once every subscriber the story had when the event arrived has written it.
    pub fn written(&self) {
        if let Some(fan_out) = &self.fan_out {
            fan_out.written();
        }
    }
}

/// One live event's fan-out on this instance, traced as one span however many subscribers it has: from the
/// upstream reading the event to the last of the story's subscribers at that moment writing it, with the
/// subscriber count, the writes and the slowest write (time from the read to a subscriber's write) on it. If a
/// subscriber never writes it (it left, or fell behind and caught up from the log), the span ends when the frame
/// leaves the window, with fewer writes than subscribers.
#[derive(Debug)]
struct FanOut {
    span: Mutex<Option<tracing::Span>>,
    read_at: std::time::Instant,
    subscribers: usize,
    writes: std::sync::atomic::AtomicUsize,
    slowest_us: std::sync::atomic::AtomicU64,
}

impl FanOut {
    fn new(span: tracing::Span, subscribers: usize) -> Self {
        let fan_out = Self {
            span: Mutex::new(Some(span)),
            read_at: std::time::Instant::now(),
            subscribers,
            writes: std::sync::atomic::AtomicUsize::new(0),
            slowest_us: std::sync::atomic::AtomicU64::new(0),
        };
        if subscribers == 0 {
            fan_out.finish();
        }
        fan_out
    }

    fn written(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let us = u64::try_from(self.read_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.slowest_us.fetch_max(us, Relaxed);
        if self.writes.fetch_add(1, Relaxed) + 1 == self.subscribers {
            self.finish();
        }
    }

    /// Records the totals and ends the span (once).
    fn finish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(span) = lock(&self.span).take() else { return };
        // As i64: OpenTelemetry's integer attributes are signed (an unsigned value would be exported as a string).
        span.record("storyline.subscribers", i64::try_from(self.subscribers).unwrap_or(i64::MAX));
        span.record("storyline.delivered", i64::try_from(self.writes.load(Relaxed)).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)] // microseconds of one write, far below 2^52
        span.record("storyline.slowest_write_ms", self.slowest_us.load(Relaxed) as f64 / 1000.0);
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The meters a delivery of one event records (handles into the `metrics` recorder, resolved once per event so
/// that each of its thousands of deliveries is an atomic add, not a registry lookup).
#[derive(Debug, Clone)]
pub struct EventMeters {
    pub delivered: metrics::Counter,
    pub latency: metrics::Histogram,
}

impl EventMeters {
    /// Meters that record nothing.
    pub fn noop() -> Self {
        Self { delivered: metrics::Counter::noop(), latency: metrics::Histogram::noop() }
    }
}

/// What a subscriber receives next.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<EventFrame>),
    /// Events due to this subscriber were trimmed before it read them: delivery resumes from
    /// `resumed_from`. For this subscriber only; the stream encodes the notice (see [`encode_gap`]).
    Gap(Gap),
}

impl Delivery {
    /// The bytes a single-story stream writes: the event's shared frame, or a `gap` frame.
    pub fn bytes(&self) -> Bytes {
        match self {
            Self::Event(frame) => frame.bytes.clone(),
            Self::Gap(gap) => encode_gap(*gap),
        }
    }
}

/// How a resumed subscription met the story: exactly after the reader's last event, or past events that
/// retention removed (the reader got a `gap` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    Exact,
    Gap,
}

/// What the engine reports as it runs, for metrics. Every method is called on a hot path: keep them cheap.
pub trait Observer: Send + Sync + fmt::Debug {
    /// The meters of an event of `event_type` in `story`; called once per event per instance (and once per
    /// event read from the log for a subscriber catching up).
    fn event_meters(&self, story: &StoryId, event_type: &EventType) -> EventMeters;
    /// A subscription from [`Hub::resume`] met the story.
    fn resumed(&self, outcome: ResumeOutcome);
    /// Events read from the log for a subscriber behind the live window (an old resume point, a slow reader).
    fn replayed(&self, events: usize);
    /// A subscriber, as it read, had this many events of its story yet to receive (for one catching up from the
    /// log: a lower bound).
    fn lag(&self, events: usize);
    /// The span of a live event's fan-out on this instance (one per event, whatever the subscriber count), in
    /// the trace the event was published under. `Span::none()` to trace nothing.
    fn fan_out_span(&self, event: &StoredEvent) -> tracing::Span;
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn event_meters(&self, _: &StoryId, _: &EventType) -> EventMeters {
        EventMeters::noop()
    }
    fn resumed(&self, _: ResumeOutcome) {}
    fn replayed(&self, _: usize) {}
    fn lag(&self, _: usize) {}
    fn fan_out_span(&self, _: &StoredEvent) -> tracing::Span {
        tracing::Span::none()
    }
}

/// Tuning of the engine.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Frames kept per story for subscribers that are momentarily behind.
    pub window: usize,
    /// Bytes of frames kept per story, whichever limit is hit first: the memory budget of an active story.
    pub window_bytes: usize,
    /// Events read per broker page while a subscriber catches up.
    pub catch_up_page: PageLimit,
    /// Frames a subscriber takes from the window per lock.
    pub batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            window: 1024,
            window_bytes: 4 * 1024 * 1024,
            catch_up_page: PageLimit::new(256).unwrap_or_default(),
            batch: 64,
        }
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Stories with at least one local subscriber.
    pub active_feeds: usize,
    /// Upstream broker tails started since the hub was built.
    pub upstream_starts: u64,
}

/// The engine. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    broker: Arc<dyn Broker>,
    config: HubConfig,
    observer: Arc<dyn Observer>,
    feeds: Mutex<HashMap<StoryId, Weak<Feed>>>,
    upstream_starts: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(broker: Arc<dyn Broker>, config: HubConfig) -> Self {
        Self::with_observer(broker, config, Arc::new(NoObserver))
    }

    /// An engine that reports deliveries, resumes, replays and lag to `observer`.
    pub fn with_observer(broker: Arc<dyn Broker>, config: HubConfig, observer: Arc<dyn Observer>) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                config,
                observer,
                feeds: Mutex::default(),
                upstream_starts: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes to `story` after `after` (must be called within a tokio runtime: the first subscriber of a
    /// story starts its upstream task).
    pub fn subscribe(&self, story: &StoryId, after: EventId) -> Subscription {
        self.open(story, after, false)
    }

    /// Subscribes a reader that resumes after `last_seen`, the last event it received; the observer learns
    /// whether the resume was exact or met a gap.
    pub fn resume(&self, story: &StoryId, last_seen: EventId) -> Subscription {
        self.open(story, last_seen, true)
    }

    fn open(&self, story: &StoryId, after: EventId, resuming: bool) -> Subscription {
        let feed = {
            let mut feeds = lock(&self.inner.feeds);
            match feeds.get(story).and_then(Weak::upgrade) {
                Some(feed) => feed,
                None => {
                    let shared = Arc::new(FeedShared::new(
                        story.clone(),
                        Arc::clone(&self.inner.broker),
                        self.inner.config,
                        Arc::clone(&self.inner.observer),
                    ));
                    self.inner.upstream_starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let feed = Arc::new_cyclic(|feed| {
                        let upstream = tokio::spawn(feed::upstream(Arc::clone(&shared), feed.clone()));
                        Feed::new(shared, upstream.abort_handle(), Arc::downgrade(&self.inner))
                    });
                    feeds.insert(story.clone(), Arc::downgrade(&feed));
                    feed
                }
            }
        };
        Subscription::new(feed, after, resuming)
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            active_feeds: lock(&self.inner.feeds).values().filter(|f| f.strong_count() > 0).count(),
            upstream_starts: self.inner.upstream_starts.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Inner {
    /// Forgets a story's feed once nothing holds it.
    fn release(&self, story: &StoryId) {
        let mut feeds = lock(&self.feeds);
        if feeds.get(story).is_some_and(|f| f.strong_count() == 0) {
            feeds.remove(story);
        }
    }
}
