//! One live reader per broker instance: a dedicated connection that reads every story with a local tail and fans
//! the entries out to per-story broadcast channels.
//!
//! How it reads depends on the deployment:
//! - **A single Redis server** (or a primary behind Sentinel): one multi-key `XREAD BLOCK` over every story in
//!   the read set. The connection carries nothing else, so blocking stalls no other command, and an idle instance
//!   costs one command per block timeout.
//! - **Redis Cluster**: a multi-key command must keep all its keys in one hash slot (else `CROSSSLOT`), and a
//!   blocking read holds its connection, so one blocking read per slot would need a connection per watched slot.
//!   Instead the read set is grouped by hash slot (a story's keys all hash by the story id, see [`keys`]) and
//!   each group gets one *non-blocking* `XREAD`, issued concurrently on the reader (one connection per primary,
//!   which pipelines them: one round trip per node). Each group is polled on its own schedule: again at once
//!   when its page came back full, else after [`RedisConfig::cluster_poll_interval`](crate::RedisConfig) or when
//!   a story joins. A group whose read fails backs off alone, so a primary that is down or hangs delays only the
//!   stories in its own slots, never those on the other primaries.
//!
//!   The trade-off: delivery latency gains up to one poll interval (half on average) over the blocking read, and
//!   an idle instance costs one cheap `XREAD` per watched slot per interval (about 20 per second per watched
//!   story at the 50 ms default; Redis answers an `XREAD` with nothing new in microseconds). Connections stay
//!   bounded: the reader holds one per primary, whatever the number of stories. A story whose page came back
//!   full is read again at once, so a burst drains at full speed. Measured on a local three-master cluster
//!   (`tests/cluster.rs`), POST answered on one instance to the frame on a reader of another: median 27 ms, max
//!   51 ms; the blocking read on a single server delivers within a millisecond.
//!
//! Invariants:
//! - A story is in the read set exactly while at least one tail holds a [`Registration`] for it; a story with no
//!   local tail costs nothing.
//! - Each story has a cursor: the newest id the tailer has published on its channel. The cursor only moves
//!   forward, and it moves (and the entry is sent) under the same lock a new tail takes to subscribe. So a tail
//!   that subscribed when the cursor was `C` receives every entry after `C` on its channel, and every entry up to
//!   `C` was already in Redis when it subscribed, where its `XRANGE` catch-up finds it. Deduplicating by id at
//!   the seam then gives every event exactly once.
//! - The cursor is never `$`: a story enters the read set at its concrete newest id, so nothing appended between
//!   two `XREAD`s is skipped.
//! - No command spans two hash slots: the blocking read runs only against a single server, and a cluster read
//!   names the stories of one slot.
//! - When the read set gains a story, a blocked `XREAD` is interrupted (`CLIENT UNBLOCK ... TIMEOUT`, sent by fred
//!   on a side connection), and a cluster poll loop waiting out its interval is woken, so the new story is read at
//!   once rather than after the block timeout or poll interval.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use fred::{
    prelude::*,
    types::{ClientUnblockFlag, config::Options, scripts::Script},
};
use futures::{Stream, StreamExt};
use storyline_core::{BrokerError, EventId, Gap, StoredEvent, StoryId, TailItem};
use tokio::sync::{Notify, broadcast};

use crate::{codec, keys};

/// Entries buffered per story for tails that are momentarily behind. A tail that falls further behind catches up
/// from Redis with XRANGE (gap-aware), so this bounds memory, not correctness: at most this many events per
/// watched story (256 x the 64 KiB body limit = 16 MiB worst case), shared by all of its tails.
const CHANNEL_CAPACITY: usize = 256;
/// Entries read per story per XREAD.
const READ_COUNT: u64 = 512;
/// Entries read per XRANGE page while a tail catches up.
const CATCH_UP_PAGE: usize = 512;
/// Group reads in flight at once (on a cluster: slot groups; fred pipelines them per node, so this bounds the
/// commands in flight and the replies buffered at once, not round trips).
const CONCURRENT_SLOT_READS: usize = 64;

/// How the read loop waits for new entries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadMode {
    /// One multi-key `XREAD BLOCK` (a single server), blocking this long at most.
    Block(Duration),
    /// Non-blocking `XREAD`s grouped by hash slot (Redis Cluster), polled at this interval while idle.
    PollBySlot(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Tailer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    reader: Client,
    stories: Mutex<HashMap<StoryId, StoryFeed>>,
    /// Bumped whenever a story joins the read set.
    wanted_generation: AtomicU64,
    /// The generation the read loop's current XREAD was built from.
    reading_generation: AtomicU64,
    /// The gap-aware page read used for catch-up.
    read: Script,
    /// The log bounds, for where a new story's cursor starts.
    bounds: Script,
    /// Wakes the read loop when it idles with an empty read set or between cluster polls, and when the broker
    /// is dropped.
    joined: Arc<Notify>,
    /// Whether the read loop blocks in `XREAD`, so a joining story must interrupt it.
    blocks: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.joined.notify_one();
    }
}

/// What the read loop publishes on a story's channel.
#[derive(Debug, Clone)]
enum Live {
    Event(Arc<StoredEvent>),
    /// The read loop itself fell behind retention: entries after `requested` were trimmed before it read them.
    Gap(Gap),
}

#[derive(Debug)]
struct StoryFeed {
    cursor: EventId,
    tx: broadcast::Sender<Live>,
    tails: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a story in the read set while alive.
#[derive(Debug)]
struct Registration {
    shared: Arc<Shared>,
    story: StoryId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut stories = lock(&self.shared.stories);
        if let Some(feed) = stories.get_mut(&self.story) {
            feed.tails -= 1;
            if feed.tails == 0 {
                stories.remove(&self.story);
            }
        }
    }
}

impl Tailer {
    pub(crate) fn start(reader: Client, mode: ReadMode) -> Self {
        let shared = Arc::new(Shared {
            reader,
            read: Script::from_lua(crate::READ_LUA),
            bounds: Script::from_lua(crate::BOUNDS_LUA),
            stories: Mutex::default(),
            wanted_generation: AtomicU64::new(0),
            reading_generation: AtomicU64::new(0),
            joined: Arc::new(Notify::new()),
            blocks: matches!(mode, ReadMode::Block(_)),
        });
        tokio::spawn(read_loop(Arc::downgrade(&shared), mode));
        Self { shared }
    }

    /// Joins `story` to the read set (at its current newest id if it is new) and subscribes to its channel.
    async fn register(
        &self,
        client: &Client,
        story: &StoryId,
    ) -> Result<(Registration, broadcast::Receiver<Live>), BrokerError> {
        if let Some(found) = self.subscribe_existing(story) {
            return Ok(found);
        }
        // Start after everything that exists or existed: an emptied story with a trimmed past must not look like
        // a hole later.
        let bounds = crate::log_bounds(client, &self.shared.bounds, story).await?;
        let head = bounds.last_known();
        let (registration, rx, joined) = {
            let mut stories = lock(&self.shared.stories);
            let mut joined = false;
            let feed = stories.entry(story.clone()).or_insert_with(|| {
                joined = true;
                StoryFeed { cursor: head, tx: broadcast::channel(CHANNEL_CAPACITY).0, tails: 0 }
            });
            feed.tails += 1;
            let rx = feed.tx.subscribe();
            (Registration { shared: Arc::clone(&self.shared), story: story.clone() }, rx, joined)
        };
        if joined {
            let generation = self.shared.wanted_generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.joined.notify_one();
            if self.shared.blocks {
                tokio::spawn(interrupt_until_seen(Arc::clone(&self.shared), generation));
            }
        }
        Ok((registration, rx))
    }

    fn subscribe_existing(&self, story: &StoryId) -> Option<(Registration, broadcast::Receiver<Live>)> {
        let mut stories = lock(&self.shared.stories);
        let feed = stories.get_mut(story)?;
        feed.tails += 1;
        Some((Registration { shared: Arc::clone(&self.shared), story: story.clone() }, feed.tx.subscribe()))
    }

    /// Every event after `after`: the backlog through `client`, then live entries from the read loop.
    pub(crate) fn tail(
        &self,
        client: Client,
        story: StoryId,
        after: EventId,
    ) -> impl Stream<Item = Result<TailItem, BrokerError>> + Send + 'static {
        let tailer = self.clone();
        async_stream_like(move |yielder| async move {
            let (_registration, mut rx) = match tailer.register(&client, &story).await {
                Ok(r) => r,
                Err(e) => return yielder.send(Err(e)).await,
            };
            let mut last = after;
            // Catch up from the log: everything after `last` up to the current head.
            if let Err(e) = catch_up(&client, &tailer.shared.read, &story, &mut last, &yielder).await {
                return yielder.send(Err(e)).await;
            }
            loop {
                match rx.recv().await {
                    Ok(Live::Gap(gap)) => {
                        // `ZERO` means "from the oldest retained": no gap before it, as in `Gap::after` (a story's
                        // first append under a TTL records its unknown past as trimmed; a reader that knew nothing
                        // of it lost nothing).
                        if gap.resumed_from > last && !last.is_zero() {
                            let gap = Gap { requested: last, resumed_from: gap.resumed_from };
                            if !yielder.send(Ok(TailItem::Gap(gap))).await {
                                return true;
                            }
                        }
                    }
                    Ok(Live::Event(event)) => {
                        if event.id > last {
                            last = event.id;
                            if !yielder.send(Ok(TailItem::Event(StoredEvent::clone(&event)))).await {
                                return true;
                            }
                        }
                    }
                    // Fell behind the channel: the missed entries are in Redis.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = catch_up(&client, &tailer.shared.read, &story, &mut last, &yielder).await {
                            return yielder.send(Err(e)).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return yielder.send(Err(BrokerError::Unavailable("tailer stopped".into()))).await;
                    }
                }
            }
        })
    }
}

/// Pages through the log after `*last` until it is exhausted, yielding each event, and a gap first if retention
/// removed events right after `*last`.
async fn catch_up(
    client: &Client,
    script: &Script,
    story: &StoryId,
    last: &mut EventId,
    yielder: &Yielder,
) -> Result<(), BrokerError> {
    loop {
        let (gap, page) = crate::read_page_checked(client, script, story, *last, CATCH_UP_PAGE).await?;
        if let Some(gap) = gap
            && !yielder.send(Ok(TailItem::Gap(gap))).await
        {
            return Ok(());
        }
        let done = page.len() < CATCH_UP_PAGE;
        for event in page {
            *last = event.id;
            if !yielder.send(Ok(TailItem::Event(event))).await {
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// Interrupts the blocked XREAD until the read loop has picked up `generation`. Unblocking can race with the loop
/// sending its next XREAD (then there is nothing to unblock yet), so retry briefly; the block timeout is the
/// backstop.
async fn interrupt_until_seen(shared: Arc<Shared>, generation: u64) {
    for _ in 0..200 {
        if shared.reading_generation.load(Ordering::SeqCst) >= generation {
            return;
        }
        let _ = shared.reader.unblock_self(Some(ClientUnblockFlag::Timeout)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The read loop. On a single server each round is one blocking `XREAD` over the whole read set; on a cluster
/// the slot groups are polled independently ([`poll_loop`]).
/// A read that failed keeps its cursors, so the next round reads the same entries; the loop backs off first.
async fn read_loop(shared: std::sync::Weak<Shared>, mode: ReadMode) {
    if let ReadMode::PollBySlot(interval) = mode {
        return poll_loop(shared, interval).await;
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(shared) = shared.upgrade() else { return };
        let wake = Arc::clone(&shared.joined);
        let joined = wake.notified();
        tokio::pin!(joined);
        joined.as_mut().enable();
        let generation = shared.wanted_generation.load(Ordering::SeqCst);
        let groups = read_groups(&lock(&shared.stories), mode);
        shared.reading_generation.store(generation, Ordering::SeqCst);
        if groups.is_empty() {
            drop(shared);
            joined.await;
            continue;
        }
        let reads: Vec<_> = futures::stream::iter(groups)
            .map(|(_, keys, ids)| read_group(&shared.reader, keys, ids, mode))
            .buffer_unordered(CONCURRENT_SLOT_READS)
            .collect()
            .await;
        let (mut batches, mut trimmed, mut failure) = (Vec::new(), Vec::new(), None);
        for read in reads {
            match read {
                Ok((group_batches, group_trimmed)) => {
                    batches.extend(group_batches);
                    trimmed.extend(group_trimmed);
                }
                Err(e) => failure = Some(e),
            }
        }
        publish(&shared, batches, &trimmed);
        drop(shared);
        if let Some(e) = failure {
            tracing::warn!(error = %e, "redis tail read failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            continue;
        }
        backoff = FIRST_BACKOFF;
    }
}

/// The first pause after a failed read; it doubles per failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

/// When a cluster slot group is read next, and how long it waits after its next failure.
#[derive(Debug, Clone, Copy)]
struct SlotSchedule {
    due: tokio::time::Instant,
    backoff: Duration,
}

impl SlotSchedule {
    fn failing(&self) -> bool {
        self.backoff > FIRST_BACKOFF
    }
}

/// The cluster read loop. Every slot group has its own schedule: it is read (one non-blocking `XREAD`) when it
/// is due, again at once if its page came back full, else after `interval`; after a failure it alone backs off.
/// Reads run concurrently and are handled as each completes, so a primary that is down or hangs (every read of
/// its slots waits out the command timeout) delays and backs off only its own slot groups: stories on the other
/// primaries keep their poll interval. A story joining the read set makes every healthy group due at once (as a
/// round did before), so it is read without waiting out the interval.
async fn poll_loop(shared: std::sync::Weak<Shared>, interval: Duration) {
    let mode = ReadMode::PollBySlot(interval);
    let mut schedules: HashMap<u16, SlotSchedule> = HashMap::new();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    // Far enough to mean "nothing due"; a join, a completed read or the broker's drop wakes the loop earlier.
    const IDLE: Duration = Duration::from_secs(3600);
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let wake = Arc::clone(&strong.joined);
        let joined = wake.notified();
        tokio::pin!(joined);
        joined.as_mut().enable();
        let generation = strong.wanted_generation.load(Ordering::SeqCst);
        let groups = read_groups(&lock(&strong.stories), mode);
        strong.reading_generation.store(generation, Ordering::SeqCst);
        let now = tokio::time::Instant::now();
        let watched: std::collections::HashSet<u16> = groups.iter().map(|(slot, _, _)| *slot).collect();
        schedules.retain(|slot, _| watched.contains(slot));
        for (slot, keys, ids) in groups {
            let schedule = schedules.entry(slot).or_insert(SlotSchedule { due: now, backoff: FIRST_BACKOFF });
            // A slot with a read in flight has `due` pushed out of reach until the read completes.
            if schedule.due <= now && in_flight.len() < CONCURRENT_SLOT_READS {
                schedule.due = now + IDLE;
                let reader = strong.reader.clone();
                in_flight.push(async move { (slot, read_group(&reader, keys, ids, mode).await) });
            }
        }
        drop(strong);
        // With every read slot taken, a due group waits for a read to complete, not for a time (which has passed).
        let next_due = if in_flight.len() < CONCURRENT_SLOT_READS {
            schedules.values().map(|s| s.due).min().unwrap_or(now + IDLE)
        } else {
            now + IDLE
        };
        tokio::select! {
            Some((slot, read)) = in_flight.next() => {
                let now = tokio::time::Instant::now();
                let result = match read {
                    Ok((batches, trimmed)) => {
                        let Some(strong) = shared.upgrade() else { return };
                        let full = batches
                            .iter()
                            .any(|(_, events)| u64::try_from(events.len()).unwrap_or(u64::MAX) >= READ_COUNT);
                        publish(&strong, batches, &trimmed);
                        Ok(full)
                    }
                    Err(e) => Err(e),
                };
                if let Some(schedule) = schedules.get_mut(&slot) {
                    match result {
                        Ok(full) => {
                            schedule.backoff = FIRST_BACKOFF;
                            schedule.due = if full { now } else { now + interval };
                        }
                        Err(e) => {
                            // Once per outage of the group, not once per retry.
                            if schedule.failing() {
                                tracing::debug!(error = %e, slot, "redis tail read failed again for one slot group");
                            } else {
                                tracing::warn!(error = %e, slot, "redis tail read failed for a slot group; retrying");
                            }
                            schedule.due = now + schedule.backoff;
                            schedule.backoff = next_backoff(schedule.backoff);
                        }
                    }
                }
            }
            () = &mut joined => {
                let now = tokio::time::Instant::now();
                for schedule in schedules.values_mut() {
                    if !schedule.failing() && schedule.due <= now + interval {
                        schedule.due = now;
                    }
                }
            }
            () = tokio::time::sleep_until(next_due) => {}
        }
    }
}

/// The read set as `(slot, keys, cursors)` groups, one `XREAD` each: a single group when blocking on one server;
/// on a cluster one per hash slot, as a multi-key command must stay in one slot.
fn read_groups(stories: &HashMap<StoryId, StoryFeed>, mode: ReadMode) -> Vec<(u16, Vec<String>, Vec<String>)> {
    let mut groups: HashMap<u16, (Vec<String>, Vec<String>)> = HashMap::new();
    for (story, feed) in stories {
        let key = keys::log(story);
        let slot = match mode {
            ReadMode::Block(_) => 0,
            ReadMode::PollBySlot(_) => fred::util::redis_keyslot(key.as_bytes()),
        };
        let group = groups.entry(slot).or_default();
        group.0.push(key);
        group.1.push(feed.cursor.to_string());
    }
    groups.into_iter().map(|(slot, (keys, ids))| (slot, keys, ids)).collect()
}

/// One group's new entries, with the trimming state read after them (same slot, same node): entries are published
/// only with it, so if that read fails the cursors stay put and the next round returns the same entries. Blocking,
/// the `XREAD` waits up to the block time; interrupted by a joining story (`CLIENT UNBLOCK`), it yields nothing.
async fn read_group(
    reader: &Client,
    keys: Vec<String>,
    ids: Vec<String>,
    mode: ReadMode,
) -> Result<(Vec<(StoryId, Vec<StoredEvent>)>, Vec<Option<EventId>>), BrokerError> {
    let reply: Result<Value, _> = match mode {
        ReadMode::Block(block) => {
            let options = Options { timeout: Some(block + Duration::from_secs(10)), ..Default::default() };
            let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
            reader.with_options(&options).xread(Some(READ_COUNT), Some(block_ms), keys, ids).await
        }
        ReadMode::PollBySlot(_) => reader.xread(Some(READ_COUNT), None, keys, ids).await,
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) if e.kind() == &fred::error::ErrorKind::Canceled => Value::Null,
        Err(e) => return Err(crate::unavailable(e)),
    };
    let batches = decode_reply(reply);
    let trimmed = trimmed_through(reader, &batches).await?;
    Ok((batches, trimmed))
}

/// Decodes an XREAD reply (`[[key, [[id, fields], ...]], ...]`, or nil on timeout) into per-story batches.
fn decode_reply(reply: Value) -> Vec<(StoryId, Vec<StoredEvent>)> {
    if reply.is_null() {
        return Vec::new();
    }
    reply
        .into_array()
        .into_iter()
        .filter_map(|stream| {
            let mut parts = stream.into_array().into_iter();
            let (Some(key), Some(entries)) = (parts.next(), parts.next()) else { return None };
            let story = key.as_str().and_then(|k| keys::story_of_log(&k))?;
            let events = codec::decode_entries(&story, entries);
            Some((story, events))
        })
        .collect()
}

/// The newest trimmed id of each story in `batches`, read after the entries (one pipelined round trip).
async fn trimmed_through(
    reader: &Client,
    batches: &[(StoryId, Vec<StoredEvent>)],
) -> Result<Vec<Option<EventId>>, BrokerError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = reader.pipeline();
    for (story, _) in batches {
        let _: () = pipeline.hget(keys::meta(story), "trimmed_through").await.map_err(crate::unavailable)?;
    }
    let replies: Vec<Value> = pipeline.all().await.map_err(crate::unavailable)?;
    replies
        .iter()
        .map(|v| match v.as_str() {
            Some(s) if !s.is_empty() => EventId::parse(&s).map(Some).map_err(|e| BrokerError::Corrupt(e.to_string())),
            _ => Ok(None),
        })
        .collect()
}

/// Publishes decoded batches to the story channels, advancing each story's cursor.
///
/// If retention trimmed entries after a story's cursor before this read (the read loop fell behind the log), a gap
/// goes out first. `trimmed_through` is read after the XREAD, so when it is at or past the first new entry the
/// trim may also have happened after the read; the gap is then reported conservatively (a reader may be told of a
/// gap that held no events, never left with a silent one).
fn publish(shared: &Shared, batches: Vec<(StoryId, Vec<StoredEvent>)>, trimmed: &[Option<EventId>]) {
    let mut stories = lock(&shared.stories);
    for ((story, events), trimmed) in batches.into_iter().zip(trimmed) {
        let Some(feed) = stories.get_mut(&story) else { continue };
        let before = feed.cursor;
        let mut first_new = true;
        for event in events {
            if event.id <= feed.cursor {
                continue;
            }
            if first_new && trimmed.is_some_and(|t| t > before) {
                let _ = feed.tx.send(Live::Gap(Gap { requested: before, resumed_from: event.id }));
            }
            first_new = false;
            feed.cursor = event.id;
            let _ = feed.tx.send(Live::Event(Arc::new(event)));
        }
    }
}

// --- a minimal generator: a stream fed by a producer task through a small channel; the task is aborted when the
// consumer drops the stream ---

/// Sends items from a producer future to the stream returned by [`async_stream_like`].
#[derive(Debug)]
pub(crate) struct Yielder(tokio::sync::mpsc::Sender<Result<TailItem, BrokerError>>);

impl Yielder {
    /// Returns `false` when the consumer has gone away.
    async fn send(&self, item: Result<TailItem, BrokerError>) -> bool {
        self.0.send(item).await.is_ok()
    }
}

fn async_stream_like<F, Fut>(producer: F) -> impl Stream<Item = Result<TailItem, BrokerError>> + Send + 'static
where
    F: FnOnce(Yielder) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(producer(Yielder(tx)));
    let abort = AbortOnDrop(task.abort_handle());
    futures::stream::unfold(
        (rx, abort),
        |(mut rx, abort)| async move { rx.recv().await.map(|item| (item, (rx, abort))) },
    )
}

/// Stops the producer task when the consumer drops the stream.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
