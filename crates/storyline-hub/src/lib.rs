//! The fan-out engine: one event in, many frames out, at the cost of one broker read and one encoding.
//!
//! - **One upstream read per story.** The first local subscriber of a story starts one broker tail for it (its
//!   [`Feed`]); every later subscriber of that story shares it; the last one leaving stops it. A story with no
//!   local subscriber costs nothing.
//! - **Encode once.** The upstream turns each event into its complete SSE frame (`id:`, `event:`, `data:`) once,
//!   as [`Bytes`]; subscribers hand out clones of that buffer (a reference-count increment), never re-serializing.
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
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

pub use bytes::Bytes;
pub use feed::Subscription;
use feed::{Feed, FeedShared};
pub use frame::{SseFrame, encode_event, encode_gap, take_frame};
use storyline_core::{Broker, EventId, PageLimit, StoryId};

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
    feeds: Mutex<HashMap<StoryId, Weak<Feed>>>,
    upstream_starts: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(broker: Arc<dyn Broker>, config: HubConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                config,
                feeds: Mutex::default(),
                upstream_starts: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes to `story` after `after` (must be called within a tokio runtime: the first subscriber of a
    /// story starts its upstream task).
    pub fn subscribe(&self, story: &StoryId, after: EventId) -> Subscription {
        let feed = {
            let mut feeds = lock(&self.inner.feeds);
            match feeds.get(story).and_then(Weak::upgrade) {
                Some(feed) => feed,
                None => {
                    let shared =
                        Arc::new(FeedShared::new(story.clone(), Arc::clone(&self.inner.broker), self.inner.config));
                    let upstream = tokio::spawn(feed::upstream(Arc::clone(&shared)));
                    self.inner.upstream_starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let feed = Arc::new(Feed::new(shared, upstream.abort_handle(), Arc::downgrade(&self.inner)));
                    feeds.insert(story.clone(), Arc::downgrade(&feed));
                    feed
                }
            }
        };
        Subscription::new(feed, after)
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
