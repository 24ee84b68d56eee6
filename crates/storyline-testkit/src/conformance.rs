//! The broker conformance suite: one set of test bodies that every [`Broker`] adapter runs.
//!
//! Each `pub async fn` below checks one guarantee from the module docs of `storyline_core::broker`. A case takes a
//! [`BrokerFactory`] and asks it for exactly one broker, with the [`Retention`] the case needs (a small
//! `max_events` for trimming, a short idempotency window for expiry); the factory must hand out a broker over an
//! empty store, so cases share nothing.
//!
//! An adapter runs every case with [`broker_conformance_tests!`](crate::broker_conformance_tests), which expands
//! to one test function per case. When adding a case, add its name to the list in that macro too.
//!
//! Waiting is always bounded and never a bare sleep: stream items are awaited with [`ITEM_TIMEOUT`], conditions
//! with [`poll_until`]. "Exactly once" is checked with a sentinel: after the expected events, a freshly appended
//! event must be the very next item a tail yields.

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, future::BoxFuture};
use storyline_core::{
    Appended, Broker, BrokerError, EventData, EventId, EventStream, EventType, Idempotency, IdempotencyKey, LogBounds,
    LogRetention, MAX_PAGE_LIMIT, Metadata, NewEvent, PageLimit, Receipt, Retention, Revocation, RevocationTarget,
    Revocations, StoredEvent, StoryId, TailItem,
};

use crate::{DEFAULT_DEADLINE, poll_until};

/// How long a case waits for the next item of a tail before failing.
pub const ITEM_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a fresh broker over an empty store.
///
/// Implemented for every `Fn(Retention) -> impl Future<Output = Arc<dyn Broker>>`, so a closure is a factory:
///
/// ```ignore
/// let factory = |retention: Retention| async move {
///     Arc::new(MemoryBroker::new(retention)) as Arc<dyn Broker>
/// };
/// conformance::ping_succeeds(&factory).await;
/// ```
pub trait BrokerFactory {
    /// A broker with the given retention that has never stored anything.
    fn make(&self, retention: Retention) -> BoxFuture<'static, Arc<dyn Broker>>;
}

impl<F, Fut> BrokerFactory for F
where
    F: Fn(Retention) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>> + Send + 'static,
{
    fn make(&self, retention: Retention) -> BoxFuture<'static, Arc<dyn Broker>> {
        Box::pin(self(retention))
    }
}

/// Expands to one test function per conformance case, each calling the case with the factory `$factory`.
///
/// `$factory` is evaluated afresh inside every test, so anything it owns (a `RedisServer` guard captured by a
/// `move` closure, say) lives exactly as long as that test. The attribute is the test attribute to put on each
/// function, e.g. `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.
///
/// ```ignore
/// storyline_testkit::broker_conformance_tests! {
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     factory = |retention: Retention| async move {
///         Arc::new(MemoryBroker::new(retention)) as Arc<dyn Broker>
///     }
/// }
/// ```
#[macro_export]
macro_rules! broker_conformance_tests {
    (#[$test:meta] factory = $factory:expr $(,)?) => {
        $crate::broker_conformance_tests! {
            @cases #[$test] ($factory)
            append_assigns_strictly_increasing_ids,
            read_after_zero_returns_every_field_oldest_first,
            read_after_an_id_is_exclusive,
            read_after_honours_the_limit,
            read_after_on_an_unknown_story_is_empty,
            stories_are_independent,
            idempotent_retry_returns_the_first_receipt_and_stores_nothing,
            idempotency_keys_are_scoped_to_a_story,
            a_key_reused_for_a_different_event_is_refused_and_stores_nothing,
            concurrent_appends_with_one_key_store_one_event,
            concurrent_appends_with_one_key_and_different_events_store_one_and_refuse_the_others,
            idempotency_key_is_forgotten_after_the_window,
            a_story_untouched_for_its_ttl_is_forgotten_with_its_keys,
            a_reader_of_an_expired_story_gets_a_gap_never_a_silent_hole,
            bounds_of_a_fresh_story_are_empty_and_track_the_oldest_event,
            retention_keeps_the_newest_events_and_reports_what_was_trimmed,
            retention_by_age_drops_old_events_when_the_story_is_next_appended_to,
            retention_follows_the_story_namespace_by_count_and_by_age,
            tail_yields_backlog_then_live_events_in_order_exactly_once,
            a_tail_resuming_before_the_retained_history_yields_a_gap_first,
            a_tail_that_falls_behind_retention_yields_a_gap_never_a_silent_hole,
            tail_from_zero_starts_at_the_oldest_retained_event,
            tail_on_an_empty_story_yields_later_appends,
            tail_keeps_up_with_appends_made_as_each_event_arrives,
            concurrent_publishers_and_tails_see_every_event_once_in_order,
            tail_started_during_appends_has_no_gap_or_duplicate_at_the_seam,
            dropping_a_tail_does_not_disturb_other_tails,
            tails_on_two_stories_each_see_only_their_own,
            ping_succeeds,
            revocations_are_stored_counted_and_replaced,
            revocations_apply_until_their_until_only,
        }
    };
    (@cases #[$test:meta] ($factory:expr) $($case:ident),+ $(,)?) => {
        $(
            #[$test]
            async fn $case() {
                let factory = $factory;
                Box::pin($crate::conformance::$case(&factory)).await;
            }
        )+
    };
}

// --- fixtures ---

fn story(name: &str) -> StoryId {
    StoryId::parse(name).unwrap_or_else(|e| panic!("fixture story id {name:?}: {e}"))
}

fn idempotency_key(key: &str) -> IdempotencyKey {
    IdempotencyKey::parse(key).unwrap_or_else(|e| panic!("fixture idempotency key {key:?}: {e}"))
}

fn event_type(name: &str) -> EventType {
    EventType::parse(name).unwrap_or_else(|e| panic!("fixture event type {name:?}: {e}"))
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("system clock before 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit in u64")
}

fn retention(max_events: usize, idempotency_window: Duration) -> Retention {
    Retention {
        log: LogRetention { max_events: NonZeroUsize::new(max_events).expect("max_events > 0"), max_age: None },
        idempotency_window,
        ..Retention::default()
    }
}

/// A `chapter` event numbered `n`: data `{"n":<n>}`, author `author-<n>`, a `traceparent` in its metadata.
fn event(n: u64) -> NewEvent {
    event_of_type(n, "chapter")
}

fn event_of_type(n: u64, ty: &str) -> NewEvent {
    let mut meta = Metadata::new();
    meta.insert("traceparent", format!("00-{n:032x}-{n:016x}-01"));
    NewEvent {
        event_type: event_type(ty),
        data: EventData::from_json_text(&format!(r#"{{"n":{n}}}"#)).expect("fixture data is JSON"),
        author: format!("author-{n}"),
        ts: now_ms(),
        meta,
    }
}

/// The sentinel that ends a collecting tail (see [`collect_until_end`]).
fn end_event() -> NewEvent {
    event_of_type(u64::MAX, "end")
}

// --- helpers ---

async fn append(case: &str, broker: &dyn Broker, story: &StoryId, event: NewEvent) -> Receipt {
    let appended =
        broker.append(story, event, None).await.unwrap_or_else(|e| panic!("{case}: append to {story} failed: {e}"));
    assert!(!appended.duplicate, "{case}: an append without a key was answered as a duplicate");
    appended.receipt
}

async fn append_with_key(
    case: &str,
    broker: &dyn Broker,
    story: &StoryId,
    event: NewEvent,
    key: &IdempotencyKey,
) -> Appended {
    try_append_with_key(broker, story, event, key)
        .await
        .unwrap_or_else(|e| panic!("{case}: append to {story} with {key:?} failed: {e}"))
}

/// An append with `key`, fingerprinted from the event as the HTTP surface does.
async fn try_append_with_key(
    broker: &dyn Broker,
    story: &StoryId,
    event: NewEvent,
    key: &IdempotencyKey,
) -> Result<Appended, BrokerError> {
    let idempotency = Idempotency::for_event(key.clone(), &event);
    broker.append(story, event, Some(&idempotency)).await
}

/// The same request again, as a client's retry sends it: same type and data; what the server adds (accept time,
/// author, trace context) differs.
fn retry_of(sent: &NewEvent) -> NewEvent {
    let mut retry = sent.clone();
    retry.ts = sent.ts + 1_000;
    retry.author = format!("{}-again", sent.author);
    retry.meta.insert("traceparent", "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01");
    retry
}

async fn append_numbered(
    case: &str,
    broker: &dyn Broker,
    story: &StoryId,
    numbers: std::ops::Range<u64>,
) -> Vec<EventId> {
    let mut ids = Vec::new();
    for n in numbers {
        ids.push(append(case, broker, story, event(n)).await.id);
    }
    ids
}

async fn read(case: &str, broker: &dyn Broker, story: &StoryId, after: EventId, limit: usize) -> Vec<StoredEvent> {
    let limit = PageLimit::new(limit).expect("fixture page limit is 1..=1000");
    broker
        .read_after(story, after, limit)
        .await
        .unwrap_or_else(|e| panic!("{case}: read_after({after}) on {story} failed: {e}"))
        .events
}

/// The whole retained log of a story, paging with the largest page.
async fn read_all(case: &str, broker: &dyn Broker, story: &StoryId) -> Vec<StoredEvent> {
    let mut all: Vec<StoredEvent> = Vec::new();
    loop {
        let after = all.last().map_or(EventId::ZERO, |e| e.id);
        let page = read(case, broker, story, after, MAX_PAGE_LIMIT).await;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

async fn bounds(case: &str, broker: &dyn Broker, story: &StoryId) -> LogBounds {
    broker.bounds(story).await.unwrap_or_else(|e| panic!("{case}: bounds of {story} failed: {e}"))
}

fn ids_of(events: &[StoredEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn assert_strictly_increasing(case: &str, ids: &[EventId], what: &str) {
    for pair in ids.windows(2) {
        assert!(pair[0] < pair[1], "{case}: {what} not strictly increasing: {} then {}", pair[0], pair[1]);
    }
}

/// Asserts that `got` is the event `sent`, stored in `story` under `id`, every field included.
fn assert_event(case: &str, got: &StoredEvent, id: EventId, story: &StoryId, sent: &NewEvent) {
    assert_eq!(got.id, id, "{case}: id");
    assert_eq!(&got.story, story, "{case}: story of {id}");
    assert_eq!(got.event_type, sent.event_type, "{case}: type of {id}");
    assert_eq!(got.data, sent.data, "{case}: data of {id}");
    assert_eq!(got.author, sent.author, "{case}: author of {id}");
    assert_eq!(got.ts, sent.ts, "{case}: ts of {id}");
    assert_eq!(got.meta, sent.meta, "{case}: metadata of {id}");
    assert!(got.meta.get("traceparent").is_some(), "{case}: the traceparent metadata of {id} did not come back");
}

/// The next item of a tail, failing the case on an error, on the end of the stream, or after [`ITEM_TIMEOUT`].
async fn next_event(case: &str, tail: &mut EventStream, waiting_for: &str) -> StoredEvent {
    match next_item(case, tail, waiting_for).await {
        TailItem::Event(event) => event,
        TailItem::Gap(gap) => panic!("{case}: unexpected {gap:?} while waiting for {waiting_for}"),
    }
}

/// The next item of a tail (event or gap), failing the case on an error, the end, or after [`ITEM_TIMEOUT`].
async fn next_item(case: &str, tail: &mut EventStream, waiting_for: &str) -> TailItem {
    match tokio::time::timeout(ITEM_TIMEOUT, tail.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("{case}: tail failed while waiting for {waiting_for}: {e}"),
        Ok(None) => panic!("{case}: tail ended while waiting for {waiting_for}"),
        Err(_) => {
            panic!("{case}: no tail item within {ITEM_TIMEOUT:?} while waiting for {waiting_for}")
        }
    }
}

/// The ids of the next `n` items of a tail.
async fn next_ids(case: &str, tail: &mut EventStream, n: usize, waiting_for: &str) -> Vec<EventId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(next_event(case, tail, &format!("{waiting_for} (item {i})")).await.id);
    }
    ids
}

/// Appends a sentinel and asserts it is the very next item: proof that nothing was yielded twice before it.
async fn assert_next_is_fresh_append(case: &str, broker: &dyn Broker, story: &StoryId, tail: &mut EventStream) {
    let sentinel = append(case, broker, story, end_event()).await;
    let got = next_event(case, tail, "the sentinel").await;
    assert_eq!(
        got.id, sentinel.id,
        "{case}: the tail yielded {} where the freshly appended sentinel {} was due (a duplicate or a stray event)",
        got.id, sentinel.id
    );
}

/// Everything a tail yields before the `end` sentinel.
async fn collect_until_end(case: String, mut tail: EventStream) -> Vec<StoredEvent> {
    let mut got = Vec::new();
    loop {
        let event = next_event(&case, &mut tail, "the end sentinel").await;
        if event.event_type.as_str() == "end" {
            return got;
        }
        got.push(event);
    }
}

/// The `n` an event of [`event`] carries in its data.
fn number_of(case: &str, event: &StoredEvent) -> u64 {
    let value: serde_json::Value = serde_json::from_str(event.data.as_str())
        .unwrap_or_else(|e| panic!("{case}: data of {} is not JSON: {e}", event.id));
    value["n"].as_u64().unwrap_or_else(|| panic!("{case}: data of {} has no n: {}", event.id, event.data.as_str()))
}

// --- ids ---

/// Guarantee 1: ids are `<ms>-<seq>` the Redis way, strictly increasing per story; the receipt echoes the event.
pub async fn append_assigns_strictly_increasing_ids(factory: &dyn BrokerFactory) {
    const CASE: &str = "append_assigns_strictly_increasing_ids";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("ids");
    let before_ms = now_ms();

    // Act
    let mut receipts = Vec::new();
    for n in 0..50 {
        let sent = event(n);
        let receipt = append(CASE, &*broker, &story, sent.clone()).await;
        receipts.push((sent, receipt));
    }
    let after_ms = now_ms();

    // Assert
    for (sent, receipt) in &receipts {
        assert_eq!(receipt.story, story, "{CASE}: receipt story");
        assert_eq!(receipt.event_type, sent.event_type, "{CASE}: receipt type");
        assert_eq!(receipt.ts, sent.ts, "{CASE}: receipt ts");
        let text = receipt.id.to_string();
        assert_eq!(EventId::parse(&text), Ok(receipt.id), "{CASE}: {text} is not a <ms>-<seq> id");
        // The ms part is the append time (the broker's clock; allow for a little skew).
        assert!(
            receipt.id.ms + 5_000 >= before_ms && receipt.id.ms <= after_ms + 5_000,
            "{CASE}: id {} is not an append time between {before_ms} and {after_ms} ms",
            receipt.id
        );
    }
    let ids: Vec<EventId> = receipts.iter().map(|(_, r)| r.id).collect();
    assert_strictly_increasing(CASE, &ids, "receipt ids");
    for pair in ids.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.ms == prev.ms {
            assert_eq!(next.seq, prev.seq + 1, "{CASE}: seq counts appends within one ms: {prev} then {next}");
        } else {
            assert_eq!(next.seq, 0, "{CASE}: seq restarts at 0 in a new ms: {prev} then {next}");
        }
    }
    assert_eq!(
        ids_of(&read_all(CASE, &*broker, &story).await),
        ids,
        "{CASE}: the log holds exactly the acknowledged ids"
    );
}

// --- reads ---

/// Guarantees 2 and 4: `read_after(ZERO)` returns every event oldest first, every field (metadata included) intact.
pub async fn read_after_zero_returns_every_field_oldest_first(factory: &dyn BrokerFactory) {
    const CASE: &str = "read_after_zero_returns_every_field_oldest_first";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("public:reading");
    let mut sent = vec![event(1), event_of_type(2, "aside"), event(3)];
    sent[1].meta.insert("tracestate", "vendor=value");
    sent[2].data =
        EventData::from_json_text(r#"{"text":"two\nlines","list":[1,2,{"x":null}]}"#).expect("fixture data is JSON");
    let mut ids = Vec::new();
    for ev in &sent {
        ids.push(append(CASE, &*broker, &story, ev.clone()).await.id);
    }

    // Act
    let got = read(CASE, &*broker, &story, EventId::ZERO, 100).await;

    // Assert
    assert_eq!(ids_of(&got), ids, "{CASE}: read_after(0) returns every event oldest first");
    for ((got, id), sent) in got.iter().zip(&ids).zip(&sent) {
        assert_event(CASE, got, *id, &story, sent);
    }
    assert_eq!(got[1].meta.get("tracestate"), Some("vendor=value"), "{CASE}: every metadata key comes back");
}

/// Guarantee 4: `read_after(id)` starts strictly after `id`.
pub async fn read_after_an_id_is_exclusive(factory: &dyn BrokerFactory) {
    const CASE: &str = "read_after_an_id_is_exclusive";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("exclusive");
    let ids = append_numbered(CASE, &*broker, &story, 0..5).await;

    // Act
    let after_third = read(CASE, &*broker, &story, ids[2], 100).await;
    let after_first = read(CASE, &*broker, &story, ids[0], 100).await;
    let after_last = read(CASE, &*broker, &story, ids[4], 100).await;

    // Assert
    assert_eq!(ids_of(&after_third), ids[3..], "{CASE}: read_after(third) starts at the fourth");
    assert_eq!(ids_of(&after_first), ids[1..], "{CASE}: read_after(first) starts at the second");
    assert!(after_last.is_empty(), "{CASE}: read_after(newest) is empty, got {:?}", ids_of(&after_last));
}

/// `read_after` returns at most `limit` events, and paging by the last id walks the whole log once.
pub async fn read_after_honours_the_limit(factory: &dyn BrokerFactory) {
    const CASE: &str = "read_after_honours_the_limit";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("limit");
    let ids = append_numbered(CASE, &*broker, &story, 0..5).await;

    // Act
    let mut pages = Vec::new();
    let mut after = EventId::ZERO;
    loop {
        let page = ids_of(&read(CASE, &*broker, &story, after, 2).await);
        let Some(last) = page.last() else { break };
        after = *last;
        pages.push(page);
        assert!(pages.len() <= 5, "{CASE}: paging does not terminate");
    }
    let one = read(CASE, &*broker, &story, EventId::ZERO, 1).await;

    // Assert
    assert_eq!(pages, vec![ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..5].to_vec()], "{CASE}: pages of 2");
    assert_eq!(ids_of(&one), ids[..1], "{CASE}: a limit of 1 returns the oldest event only");
}

/// Reading a story nobody wrote to is not an error: it is empty.
pub async fn read_after_on_an_unknown_story_is_empty(factory: &dyn BrokerFactory) {
    const CASE: &str = "read_after_on_an_unknown_story_is_empty";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    append(CASE, &*broker, &story("known"), event(1)).await;

    // Act
    let from_zero = read(CASE, &*broker, &story("unknown"), EventId::ZERO, 100).await;
    let from_id = read(CASE, &*broker, &story("unknown"), EventId::new(1, 0), 100).await;

    // Assert
    assert!(from_zero.is_empty(), "{CASE}: read_after(0) on an unknown story returned {:?}", ids_of(&from_zero));
    assert!(from_id.is_empty(), "{CASE}: read_after(1-0) on an unknown story returned {:?}", ids_of(&from_id));
}

/// Stories are separate logs: events of one never appear in another.
pub async fn stories_are_independent(factory: &dyn BrokerFactory) {
    const CASE: &str = "stories_are_independent";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let (a, b) = (story("public:a"), story("public:b"));

    // Act
    let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
    for n in 0..6 {
        ids_a.push(append(CASE, &*broker, &a, event(n)).await.id);
        if n % 2 == 0 {
            ids_b.push(append(CASE, &*broker, &b, event(100 + n)).await.id);
        }
    }
    let (got_a, got_b) = (read_all(CASE, &*broker, &a).await, read_all(CASE, &*broker, &b).await);

    // Assert
    assert_eq!(ids_of(&got_a), ids_a, "{CASE}: story a holds exactly its own events");
    assert_eq!(ids_of(&got_b), ids_b, "{CASE}: story b holds exactly its own events");
    assert!(got_a.iter().all(|e| e.story == a && number_of(CASE, e) < 100), "{CASE}: story a holds b's events");
    assert!(got_b.iter().all(|e| e.story == b && number_of(CASE, e) >= 100), "{CASE}: story b holds a's events");
}

// --- idempotency ---

/// Guarantee 3: a retry with the same key answers with the first receipt, marked duplicate, and stores nothing.
pub async fn idempotent_retry_returns_the_first_receipt_and_stores_nothing(factory: &dyn BrokerFactory) {
    const CASE: &str = "idempotent_retry_returns_the_first_receipt_and_stores_nothing";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("idem");
    let key = idempotency_key("retry-1");
    let first_sent = event(1);
    let first = append_with_key(CASE, &*broker, &story, first_sent.clone(), &key).await;
    // The retry repeats the request; what the server adds (time, author, trace context) differs.
    let retry_sent = retry_of(&first_sent);

    // Act
    let retry = append_with_key(CASE, &*broker, &story, retry_sent.clone(), &key).await;
    let again = append_with_key(CASE, &*broker, &story, retry_sent, &key).await;

    // Assert
    assert!(!first.duplicate, "{CASE}: the first append with a key is not a duplicate");
    assert!(retry.duplicate, "{CASE}: the retry is answered as a duplicate");
    assert!(again.duplicate, "{CASE}: a second retry is answered as a duplicate");
    assert_eq!(retry.receipt, first.receipt, "{CASE}: the retry gets the first receipt (id, story, type, ts)");
    assert_eq!(again.receipt, first.receipt, "{CASE}: the second retry gets the first receipt");
    let log = read_all(CASE, &*broker, &story).await;
    assert_eq!(ids_of(&log), vec![first.receipt.id], "{CASE}: only the first append is stored");
    assert_event(CASE, &log[0], first.receipt.id, &story, &first_sent);
}

/// Guarantee 3: the key is scoped to a story; the same key on another story is another event.
pub async fn idempotency_keys_are_scoped_to_a_story(factory: &dyn BrokerFactory) {
    const CASE: &str = "idempotency_keys_are_scoped_to_a_story";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let (a, b) = (story("scoped-a"), story("scoped-b"));
    let key = idempotency_key("shared-key");
    let on_a = append_with_key(CASE, &*broker, &a, event(1), &key).await;

    // Act
    let on_b = append_with_key(CASE, &*broker, &b, event(2), &key).await;
    let retry_b = append_with_key(CASE, &*broker, &b, event(2), &key).await;

    // Assert
    assert!(!on_a.duplicate, "{CASE}: first use of the key on a");
    assert!(!on_b.duplicate, "{CASE}: the same key on another story is a new event");
    assert_eq!(on_b.receipt.story, b, "{CASE}: the receipt for b names b");
    assert!(retry_b.duplicate, "{CASE}: a retry on b is a duplicate");
    assert_eq!(retry_b.receipt, on_b.receipt, "{CASE}: a retry on b answers with b's receipt, not a's");
    assert_eq!(ids_of(&read_all(CASE, &*broker, &a).await), vec![on_a.receipt.id], "{CASE}: a holds one event");
    assert_eq!(ids_of(&read_all(CASE, &*broker, &b).await), vec![on_b.receipt.id], "{CASE}: b holds one event");
}

/// Guarantee 3: the key reused for another event (other data, or another type) is refused, stores nothing, and
/// leaves the first receipt in place for real retries.
pub async fn a_key_reused_for_a_different_event_is_refused_and_stores_nothing(factory: &dyn BrokerFactory) {
    const CASE: &str = "a_key_reused_for_a_different_event_is_refused_and_stores_nothing";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("idem-reused");
    let key = idempotency_key("reused");
    let first_sent = event(1);
    let first = append_with_key(CASE, &*broker, &story, first_sent.clone(), &key).await;

    // Act
    let other_data = try_append_with_key(&*broker, &story, event(2), &key).await;
    let other_type = try_append_with_key(&*broker, &story, event_of_type(1, "retitled"), &key).await;
    let retry = append_with_key(CASE, &*broker, &story, retry_of(&first_sent), &key).await;

    // Assert
    assert_eq!(other_data, Err(BrokerError::IdempotencyKeyMismatch), "{CASE}: same key, other data");
    assert_eq!(other_type, Err(BrokerError::IdempotencyKeyMismatch), "{CASE}: same key, other type");
    assert!(retry.duplicate, "{CASE}: a real retry after the refusals is still a duplicate");
    assert_eq!(retry.receipt, first.receipt, "{CASE}: ... answered with the first receipt");
    let log = read_all(CASE, &*broker, &story).await;
    assert_eq!(ids_of(&log), vec![first.receipt.id], "{CASE}: the refused appends stored nothing");
    assert_event(CASE, &log[0], first.receipt.id, &story, &first_sent);
}

/// Spawns one append per event, all with `key`, at once (on a multi-threaded runtime they really run in
/// parallel), and returns each answer with the event it sent.
async fn race_appends(
    case: &str,
    broker: &Arc<dyn Broker>,
    story: &StoryId,
    key: &IdempotencyKey,
    sent: Vec<NewEvent>,
) -> Vec<(NewEvent, Result<Appended, BrokerError>)> {
    let tasks = sent.into_iter().map(|ev| {
        let (broker, story, key) = (Arc::clone(broker), story.clone(), key.clone());
        tokio::spawn(async move {
            let answer = try_append_with_key(&*broker, &story, ev.clone(), &key).await;
            (ev, answer)
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|joined| joined.unwrap_or_else(|e| panic!("{case}: append task: {e}")))
        .collect()
}

/// Guarantee 3: check and append are one atomic step; concurrent appends of one event with one key store it once
/// and answer every other with its receipt.
pub async fn concurrent_appends_with_one_key_store_one_event(factory: &dyn BrokerFactory) {
    const CASE: &str = "concurrent_appends_with_one_key_store_one_event";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("idem-race");
    let key = idempotency_key("race");
    let sent: Vec<NewEvent> = (0..20).map(|_| event(7)).collect();

    // Act
    let answers = race_appends(CASE, &broker, &story, &key, sent).await;

    // Assert
    let answers: Vec<Appended> = answers
        .into_iter()
        .map(|(_, answer)| answer.unwrap_or_else(|e| panic!("{CASE}: an append of the same event failed: {e}")))
        .collect();
    let fresh: Vec<&Appended> = answers.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(fresh.len(), 1, "{CASE}: exactly one of 20 concurrent appends stores, got {answers:?}");
    let receipt = &fresh[0].receipt;
    assert!(answers.iter().all(|a| a.receipt == *receipt), "{CASE}: all answers carry one receipt: {answers:?}");
    let log = read_all(CASE, &*broker, &story).await;
    assert_eq!(ids_of(&log), vec![receipt.id], "{CASE}: exactly one event stored");
    assert_eq!(number_of(CASE, &log[0]), 7, "{CASE}: the event sent is the one stored");
}

/// Guarantee 3, serialised per key: concurrent appends with one key, some of one event and some of others, store
/// exactly one; every other is answered as if it came after it: the same event as a duplicate with its receipt,
/// another event as a mismatch. Never an error of any other kind, never a second event.
pub async fn concurrent_appends_with_one_key_and_different_events_store_one_and_refuse_the_others(
    factory: &dyn BrokerFactory,
) {
    const CASE: &str = "concurrent_appends_with_one_key_and_different_events_store_one_and_refuse_the_others";
    // Arrange: 10 copies of event 0 and one each of events 1..=10, interleaved.
    let broker = factory.make(Retention::default()).await;
    let story = story("idem-race-mixed");
    let key = idempotency_key("race-mixed");
    let sent: Vec<NewEvent> = (1..=10).flat_map(|n| [event(0), event(n)]).collect();

    // Act
    let answers = race_appends(CASE, &broker, &story, &key, sent).await;

    // Assert
    let fresh: Vec<&Appended> = answers.iter().filter_map(|(_, a)| a.as_ref().ok()).filter(|a| !a.duplicate).collect();
    assert_eq!(fresh.len(), 1, "{CASE}: exactly one of 20 concurrent appends stores, got {answers:?}");
    let receipt = fresh[0].receipt.clone();
    let log = read_all(CASE, &*broker, &story).await;
    assert_eq!(ids_of(&log), vec![receipt.id], "{CASE}: exactly one event stored");
    let winner = number_of(CASE, &log[0]);
    for (ev, answer) in &answers {
        let n = serde_json::from_str::<serde_json::Value>(ev.data.as_str()).ok().and_then(|v| v["n"].as_u64());
        match answer {
            Ok(a) => {
                assert_eq!(n, Some(winner), "{CASE}: only the stored event's copies are answered 200: {a:?}");
                assert_eq!(a.receipt, receipt, "{CASE}: a copy of the stored event gets its receipt");
            }
            Err(BrokerError::IdempotencyKeyMismatch) => {
                assert_ne!(n, Some(winner), "{CASE}: a copy of the stored event was refused as a mismatch");
            }
            Err(e) => panic!("{CASE}: an append failed with {e} (expected a receipt or a mismatch)"),
        }
    }
}

/// Guarantee 3: the key is remembered for the idempotency window and forgotten after it.
pub async fn idempotency_key_is_forgotten_after_the_window(factory: &dyn BrokerFactory) {
    const CASE: &str = "idempotency_key_is_forgotten_after_the_window";
    const WINDOW: Duration = Duration::from_millis(300);
    // Arrange
    let broker = factory.make(retention(10_000, WINDOW)).await;
    let story = story("idem-expiry");
    let key = idempotency_key("expiring");
    let started = Instant::now();
    let first = append_with_key(CASE, &*broker, &story, event(1), &key).await;
    assert!(!first.duplicate, "{CASE}: the first append with a key is not a duplicate");

    // Act: the same request again and again (another one would be refused while the key is remembered).
    let retry = append_with_key(CASE, &*broker, &story, event(1), &key).await;
    let retried_within_window = started.elapsed() < WINDOW;
    let after_window = poll_until(
        &format!("{CASE}: an append with the key to be accepted as new once the window passed"),
        DEFAULT_DEADLINE,
        || async {
            let answer = append_with_key(CASE, &*broker, &story, event(1), &key).await;
            (!answer.duplicate).then_some(answer)
        },
    )
    .await;
    let forgotten_after = started.elapsed();

    // Assert
    if retried_within_window {
        assert!(retry.duplicate, "{CASE}: a retry within the window is a duplicate");
        assert_eq!(retry.receipt, first.receipt, "{CASE}: a retry within the window gets the first receipt");
    }
    assert!(
        forgotten_after >= WINDOW,
        "{CASE}: the key was forgotten after {forgotten_after:?}, before the {WINDOW:?} window ended"
    );
    assert!(after_window.receipt.id > first.receipt.id, "{CASE}: the append after the window is a new event");
    assert_eq!(
        ids_of(&read_all(CASE, &*broker, &story).await),
        vec![first.receipt.id, after_window.receipt.id],
        "{CASE}: the duplicates stored nothing; the first append and the one after the window did"
    );
}

// --- story expiry ---

/// A retention with the story TTL set (idempotency window far longer, so only the TTL can forget a key).
fn retention_with_ttl(ttl: Duration) -> Retention {
    Retention { story_ttl: Some(ttl), ..retention(10_000, Duration::from_secs(3_600)) }
}

/// Polls until `story` holds nothing at all (its bounds are empty), returning how long that took from `since`.
async fn wait_until_forgotten(case: &str, broker: &dyn Broker, story: &StoryId, since: Instant) -> Duration {
    poll_until(&format!("{case}: {story} to be forgotten after its TTL"), DEFAULT_DEADLINE, || async {
        (bounds(case, broker, story).await == LogBounds::default()).then(|| since.elapsed())
    })
    .await
}

/// Guarantee 8: a story not appended to for its TTL is forgotten, events and idempotency keys together (the key is
/// remembered for an hour, yet goes with the story), and the next append starts it afresh.
pub async fn a_story_untouched_for_its_ttl_is_forgotten_with_its_keys(factory: &dyn BrokerFactory) {
    const CASE: &str = "a_story_untouched_for_its_ttl_is_forgotten_with_its_keys";
    const TTL: Duration = Duration::from_millis(300);
    // Arrange
    let broker = factory.make(retention_with_ttl(TTL)).await;
    let (story, kept) = (story("expiring"), story("expiring-kept"));
    let key = idempotency_key("expiring-key");
    let started = Instant::now();
    let first = append_with_key(CASE, &*broker, &story, event(1), &key).await;
    let last_of_kept = append(CASE, &*broker, &kept, event(1)).await;

    // Act: `kept` is appended to within every TTL; `story` is left alone.
    let forgotten_after = poll_until(&format!("{CASE}: the idle story to be forgotten"), DEFAULT_DEADLINE, || async {
        let kept_id = append(CASE, &*broker, &kept, event(2)).await.id;
        (bounds(CASE, &*broker, &story).await == LogBounds::default()).then(|| (started.elapsed(), kept_id))
    })
    .await;
    let reused = append_with_key(CASE, &*broker, &story, event(2), &key).await;

    // Assert
    assert!(!first.duplicate, "{CASE}: the first append is new");
    assert!(forgotten_after.0 >= TTL, "{CASE}: forgotten after {:?}, before its {TTL:?} TTL", forgotten_after.0);
    assert!(!reused.duplicate, "{CASE}: the key went with the story: another event with it is new, not refused");
    assert_eq!(ids_of(&read_all(CASE, &*broker, &story).await), vec![reused.receipt.id], "{CASE}: a fresh log");
    let kept_log = read_all(CASE, &*broker, &kept).await;
    assert_eq!(kept_log.first().map(|e| e.id), Some(last_of_kept.id), "{CASE}: a story appended to is kept whole");
    assert_eq!(kept_log.last().map(|e| e.id), Some(forgotten_after.1), "{CASE}: ... to its newest event");
}

/// Guarantee 8, never a silent hole: a reader resuming with an id of a story that expired and started afresh gets
/// a gap first, on a read, on a new tail and on a tail that was live through the expiry; a reader from `0` does not.
pub async fn a_reader_of_an_expired_story_gets_a_gap_never_a_silent_hole(factory: &dyn BrokerFactory) {
    const CASE: &str = "a_reader_of_an_expired_story_gets_a_gap_never_a_silent_hole";
    const TTL: Duration = Duration::from_millis(300);
    // Arrange: a live tail that has the story's old events, then the story expires and gets a new one.
    let broker = factory.make(retention_with_ttl(TTL)).await;
    let story = story("reborn");
    let mut live = broker.tail(&story, EventId::ZERO);
    let old = append_numbered(CASE, &*broker, &story, 0..3).await;
    assert_eq!(next_ids(CASE, &mut live, 3, "the old events").await, old, "{CASE}: the live tail read them");
    let idle_since = Instant::now();
    wait_until_forgotten(CASE, &*broker, &story, idle_since).await;
    // A reader from 0 that is live when the story starts afresh: it knew nothing of the old life, so no gap.
    let mut from_zero = broker.tail(&story, EventId::ZERO);
    let new = append(CASE, &*broker, &story, event(10)).await.id;

    // Act
    let page = broker
        .read_after(&story, old[0], PageLimit::new(10).expect("10 is a page limit"))
        .await
        .unwrap_or_else(|e| panic!("{CASE}: read_after: {e}"));
    let mut resumed = broker.tail(&story, old[0]);

    // Assert
    assert!(new > old[2], "{CASE}: ids are taken from the clock, so the new life's exceed the old one's");
    let gap = page.gap.unwrap_or_else(|| panic!("{CASE}: a read after {} has no gap", old[0]));
    assert_eq!((gap.requested, gap.resumed_from), (old[0], new), "{CASE}: the read's gap");
    assert_eq!(ids_of(&page.events), vec![new], "{CASE}: then the new event");
    match next_item(CASE, &mut resumed, "a gap on the resumed tail").await {
        TailItem::Gap(gap) => assert_eq!(gap.requested, old[0], "{CASE}: the resumed tail's gap starts at its id"),
        TailItem::Event(e) => panic!("{CASE}: the resumed tail yielded {} without a gap (a silent hole)", e.id),
    }
    assert_eq!(next_event(CASE, &mut resumed, "the new event").await.id, new, "{CASE}: resumed tail");
    match next_item(CASE, &mut live, "a gap on the tail that was live through the expiry").await {
        TailItem::Gap(gap) => assert_eq!(gap.resumed_from, new, "{CASE}: the live tail's gap ends at the new event"),
        TailItem::Event(e) => panic!("{CASE}: the live tail yielded {} without a gap (a silent hole)", e.id),
    }
    assert_eq!(next_event(CASE, &mut live, "the new event").await.id, new, "{CASE}: live tail");
    assert_eq!(next_event(CASE, &mut from_zero, "the new event").await.id, new, "{CASE}: from 0: no gap");
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut from_zero).await;
}

// --- retention and bounds ---

/// Guarantee 6: a story never written has empty bounds; without trimming, `oldest` is the first event.
pub async fn bounds_of_a_fresh_story_are_empty_and_track_the_oldest_event(factory: &dyn BrokerFactory) {
    const CASE: &str = "bounds_of_a_fresh_story_are_empty_and_track_the_oldest_event";
    // Arrange
    let broker = factory.make(retention(10, Duration::from_secs(60))).await;
    let story = story("bounds");

    // Act
    let fresh = bounds(CASE, &*broker, &story).await;
    let ids = append_numbered(CASE, &*broker, &story, 0..3).await;
    let after_appends = bounds(CASE, &*broker, &story).await;

    // Assert
    assert_eq!(fresh, LogBounds::default(), "{CASE}: a fresh story has no bounds");
    assert_eq!(
        after_appends,
        LogBounds { oldest: Some(ids[0]), newest: Some(ids[2]), trimmed_through: None },
        "{CASE}: nothing trimmed yet; oldest is the first event, newest the last"
    );
    assert_eq!(after_appends.gap_for(ids[0]), None, "{CASE}: no gap when nothing was trimmed");
}

/// Guarantee 6: the log keeps the newest `max_events` (plus a little slack, never fewer) and `bounds` reports
/// exactly what was trimmed, so `gap_for` can tell a lost resume point from a good one.
pub async fn retention_keeps_the_newest_events_and_reports_what_was_trimmed(factory: &dyn BrokerFactory) {
    const CASE: &str = "retention_keeps_the_newest_events_and_reports_what_was_trimmed";
    const MAX: usize = 10;
    // How far past MAX a log may grow before it is trimmed back: max(MAX / 100, 1), the Redis adapter's batch.
    const SLACK: usize = 1;
    // Arrange
    let broker = factory.make(retention(MAX, Duration::from_secs(60))).await;
    let story = story("retention");

    // Act
    let ids = append_numbered(CASE, &*broker, &story, 0..200).await;
    let kept = read_all(CASE, &*broker, &story).await;
    let bounds = bounds(CASE, &*broker, &story).await;
    let after_trimmed_id = read(CASE, &*broker, &story, ids[0], 100).await;

    // Assert
    assert!(
        (MAX..=MAX + SLACK).contains(&kept.len()),
        "{CASE}: kept {} events, want {MAX}..={}",
        kept.len(),
        MAX + SLACK
    );
    let first_kept = ids.len() - kept.len();
    assert_eq!(ids_of(&kept), ids[first_kept..], "{CASE}: the newest events are the ones kept");
    let (oldest, newest_trimmed) = (ids[first_kept], ids[first_kept - 1]);
    assert_eq!(bounds.oldest, Some(oldest), "{CASE}: bounds.oldest is the first retained id");
    assert_eq!(bounds.newest, Some(ids[199]), "{CASE}: bounds.newest is the last appended id");
    assert_eq!(bounds.trimmed_through, Some(newest_trimmed), "{CASE}: bounds.trimmed_through is the newest trimmed id");
    assert_eq!(bounds.gap_for(ids[0]), Some(oldest), "{CASE}: resuming after the first event is a gap");
    assert_eq!(
        bounds.gap_for(ids[first_kept - 2]),
        Some(oldest),
        "{CASE}: resuming just before trimmed_through is a gap"
    );
    assert_eq!(bounds.gap_for(newest_trimmed), None, "{CASE}: resuming at trimmed_through is exact");
    assert_eq!(bounds.gap_for(oldest), None, "{CASE}: resuming at the oldest retained is exact");
    assert_eq!(
        ids_of(&after_trimmed_id),
        ids[first_kept..],
        "{CASE}: reading after a trimmed id returns what is retained"
    );
    let next = append(CASE, &*broker, &story, event(200)).await;
    assert!(next.id > ids[199], "{CASE}: ids keep increasing after trimming (never reused)");
}

/// Guarantee 6, by age: events older than `max_age` (by their id's time) go when the story is next appended to;
/// the newest event stays; `trimmed_through` names the newest one removed.
pub async fn retention_by_age_drops_old_events_when_the_story_is_next_appended_to(factory: &dyn BrokerFactory) {
    const CASE: &str = "retention_by_age_drops_old_events_when_the_story_is_next_appended_to";
    const MAX_AGE: Duration = Duration::from_millis(300);
    // Arrange
    let mut retention = retention(1_000, Duration::from_secs(60));
    retention.log.max_age = Some(MAX_AGE);
    let broker = factory.make(retention).await;
    let story = story("aged");
    let old = append_numbered(CASE, &*broker, &story, 0..3).await;

    // Act: keep appending until the old events have aged out (each append applies the age rule).
    let last_old = old.last().copied();
    let mut n = 3;
    let kept = poll_until(&format!("{CASE}: old events age out"), DEFAULT_DEADLINE, || {
        n += 1;
        let (broker, story) = (Arc::clone(&broker), story.clone());
        async move {
            append(CASE, &*broker, &story, event(n)).await;
            let kept = read_all(CASE, &*broker, &story).await;
            (kept.first().map(|e| e.id) > last_old).then_some(kept)
        }
    })
    .await;

    // Assert
    let bounds = bounds(CASE, &*broker, &story).await;
    assert!(!kept.is_empty(), "{CASE}: the newest event is never removed for its age");
    let newest_ms = kept.last().map_or(0, |e| e.id.ms);
    let max_age_ms = u64::try_from(MAX_AGE.as_millis()).unwrap_or(u64::MAX);
    assert!(
        kept.iter().all(|e| e.id.ms + max_age_ms >= newest_ms),
        "{CASE}: every kept event is within max_age of the newest: {:?}",
        ids_of(&kept)
    );
    let trimmed = bounds.trimmed_through.unwrap_or_else(|| panic!("{CASE}: trimmed_through is set"));
    assert!(trimmed >= old[2] && trimmed < kept[0].id, "{CASE}: trimmed_through {trimmed} is the newest removed id");
    assert_eq!(bounds.oldest, Some(kept[0].id), "{CASE}: bounds.oldest is the first retained id");
    assert_eq!(bounds.gap_for(old[0]), Some(kept[0].id), "{CASE}: resuming from an aged-out event is a gap");
}

/// Guarantee 6, per namespace: a story keeps what its namespace (the id before the first `:`, or the whole id)
/// is configured to keep, by count and by age; other stories keep the defaults. A resume from before a
/// namespace's retained history is a gap, in the tail and in a page read.
pub async fn retention_follows_the_story_namespace_by_count_and_by_age(factory: &dyn BrokerFactory) {
    const CASE: &str = "retention_follows_the_story_namespace_by_count_and_by_age";
    const BRIEF: usize = 5;
    const SLACK: usize = 1;
    const MAX_AGE: Duration = Duration::from_millis(300);
    // Arrange: defaults keep 1,000 events of any age; `brief` keeps 5, `fleeting` keeps 1,000 for 300 ms.
    let count = |n: usize| NonZeroUsize::new(n).expect("n > 0");
    let retention = retention(1_000, Duration::from_secs(60))
        .with_namespace("brief", LogRetention { max_events: count(BRIEF), max_age: None })
        .with_namespace("fleeting", LogRetention { max_events: count(1_000), max_age: Some(MAX_AGE) });
    let broker = factory.make(retention).await;
    let (brief, brief_bare, other) = (story("brief:chapter-1"), story("brief"), story("other:chapter-1"));
    let fleeting = story("fleeting:chat");

    // Act
    let brief_ids = append_numbered(CASE, &*broker, &brief, 0..40).await;
    append_numbered(CASE, &*broker, &brief_bare, 0..40).await;
    let other_ids = append_numbered(CASE, &*broker, &other, 0..40).await;
    let old = append_numbered(CASE, &*broker, &fleeting, 0..3).await;
    let last_old = old.last().copied();
    let mut n = 3;
    poll_until(&format!("{CASE}: the fleeting namespace ages out"), DEFAULT_DEADLINE, || {
        n += 1;
        let (broker, story) = (Arc::clone(&broker), fleeting.clone());
        async move {
            append(CASE, &*broker, &story, event(n)).await;
            let kept = read_all(CASE, &*broker, &story).await;
            (kept.first().map(|e| e.id) > last_old).then_some(())
        }
    })
    .await;

    // Assert
    let kept = ids_of(&read_all(CASE, &*broker, &brief).await);
    assert!((BRIEF..=BRIEF + SLACK).contains(&kept.len()), "{CASE}: brief:* keeps {BRIEF}, kept {}", kept.len());
    assert_eq!(kept, brief_ids[brief_ids.len() - kept.len()..], "{CASE}: the newest are kept");
    let bare = read_all(CASE, &*broker, &brief_bare).await.len();
    assert!((BRIEF..=BRIEF + SLACK).contains(&bare), "{CASE}: an id with no `:` is its own namespace, kept {bare}");
    assert_eq!(ids_of(&read_all(CASE, &*broker, &other).await), other_ids, "{CASE}: other namespaces keep the default");
    let mut tail = broker.tail(&brief, brief_ids[0]);
    match next_item(CASE, &mut tail, "the gap").await {
        TailItem::Gap(gap) => assert_eq!((gap.requested, gap.resumed_from), (brief_ids[0], kept[0]), "{CASE}"),
        TailItem::Event(e) => panic!("{CASE}: got event {} where a gap was due", e.id),
    }
    assert_eq!(next_ids(CASE, &mut tail, kept.len(), "the retained events").await, kept, "{CASE}");
    let fleeting_bounds = bounds(CASE, &*broker, &fleeting).await;
    assert!(fleeting_bounds.gap_for(old[0]).is_some(), "{CASE}: resuming from an aged-out event is a gap");
}

// --- tails ---

/// Guarantee 5: a tail yields the backlog after its id, then live events, in order, each exactly once.
pub async fn tail_yields_backlog_then_live_events_in_order_exactly_once(factory: &dyn BrokerFactory) {
    const CASE: &str = "tail_yields_backlog_then_live_events_in_order_exactly_once";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("tail");
    let backlog: Vec<NewEvent> = (0..4).map(event).collect();
    let mut ids = Vec::new();
    for ev in &backlog {
        ids.push(append(CASE, &*broker, &story, ev.clone()).await.id);
    }

    // Act + Assert: the backlog after the second event, with every field
    let mut tail = broker.tail(&story, ids[1]);
    for i in 2..4 {
        let got = next_event(CASE, &mut tail, &format!("backlog event {i}")).await;
        assert_event(CASE, &got, ids[i], &story, &backlog[i]);
    }
    // Act + Assert: live events, each appended while the tail waits
    for n in 4..8 {
        let sent = event(n);
        let id = append(CASE, &*broker, &story, sent.clone()).await.id;
        let got = next_event(CASE, &mut tail, &format!("live event {n}")).await;
        assert_event(CASE, &got, id, &story, &sent);
    }
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut tail).await;
}

/// Guarantee 5 with 6: `tail(ZERO)` starts at the oldest retained event.
pub async fn tail_from_zero_starts_at_the_oldest_retained_event(factory: &dyn BrokerFactory) {
    const CASE: &str = "tail_from_zero_starts_at_the_oldest_retained_event";
    // Arrange
    let broker = factory.make(retention(10, Duration::from_secs(60))).await;
    let story = story("tail-zero");
    append_numbered(CASE, &*broker, &story, 0..25).await;
    let retained = ids_of(&read_all(CASE, &*broker, &story).await);

    // Act
    let mut tail = broker.tail(&story, EventId::ZERO);
    let got = next_ids(CASE, &mut tail, retained.len(), "the retained backlog").await;

    // Assert
    assert_eq!(got, retained, "{CASE}: tail(0) yields exactly the retained events, oldest first");
    assert_eq!(
        bounds(CASE, &*broker, &story).await.oldest,
        retained.first().copied(),
        "{CASE}: the first item is bounds.oldest"
    );
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut tail).await;
}

/// Guarantee 5: a tail on a story without events waits for, and yields, events appended later.
pub async fn tail_on_an_empty_story_yields_later_appends(factory: &dyn BrokerFactory) {
    const CASE: &str = "tail_on_an_empty_story_yields_later_appends";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("tail-empty");
    let mut tail = broker.tail(&story, EventId::ZERO);
    // Poll once so the tail is set up and waiting before anything is appended. Nothing may arrive.
    let early = tokio::time::timeout(Duration::from_millis(100), tail.next()).await;
    assert!(early.is_err(), "{CASE}: a tail on an empty story yielded {early:?} before any append");

    // Act + Assert
    for n in 0..3 {
        let sent = event(n);
        let id = append(CASE, &*broker, &story, sent.clone()).await.id;
        let got = next_event(CASE, &mut tail, &format!("event {n}")).await;
        assert_event(CASE, &got, id, &story, &sent);
    }
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut tail).await;
}

/// Guarantee 5: a tail asked to resume from a trimmed position says so (a gap naming the position and the oldest
/// retained id), then yields the retained events.
pub async fn a_tail_resuming_before_the_retained_history_yields_a_gap_first(factory: &dyn BrokerFactory) {
    const CASE: &str = "a_tail_resuming_before_the_retained_history_yields_a_gap_first";
    // Arrange
    let broker = factory.make(retention(5, Duration::from_secs(60))).await;
    let story = story("resume-gap");
    let ids = append_numbered(CASE, &*broker, &story, 0..40).await;
    let kept = ids_of(&read_all(CASE, &*broker, &story).await);

    // Act
    let mut tail = broker.tail(&story, ids[0]);

    // Assert
    match next_item(CASE, &mut tail, "the gap").await {
        TailItem::Gap(gap) => {
            assert_eq!((gap.requested, gap.resumed_from), (ids[0], kept[0]), "{CASE}: the gap names both ids");
        }
        TailItem::Event(e) => panic!("{CASE}: got event {} where a gap was due", e.id),
    }
    assert_eq!(next_ids(CASE, &mut tail, kept.len(), "the retained events").await, kept, "{CASE}");
    let page = broker
        .read_after(&story, ids[0], PageLimit::new(100).expect("1..=1000"))
        .await
        .unwrap_or_else(|e| panic!("{CASE}: read_after failed: {e}"));
    assert_eq!(
        page.gap.map(|g| (g.requested, g.resumed_from)),
        Some((ids[0], kept[0])),
        "{CASE}: a page read from a trimmed position reports the same gap"
    );
    assert_eq!(ids_of(&page.events), kept, "{CASE}: and the retained events");
    let mut exact = broker.tail(&story, kept[0]);
    assert_eq!(next_event(CASE, &mut exact, "no gap inside the retained range").await.id, kept[1], "{CASE}");
}

/// Guarantee 5, never a silent hole: a reader that stops reading while retention trims past its position gets a
/// gap when it reads again, and then every retained event in order. (Redis: more appends than the live channel
/// buffers, so the tail must catch up from the log.)
pub async fn a_tail_that_falls_behind_retention_yields_a_gap_never_a_silent_hole(factory: &dyn BrokerFactory) {
    const CASE: &str = "a_tail_that_falls_behind_retention_yields_a_gap_never_a_silent_hole";
    // Arrange: a tail that has delivered the first event and then stops being read.
    let broker = factory.make(retention(5, Duration::from_secs(60))).await;
    let story = story("stalled");
    let mut tail = broker.tail(&story, EventId::ZERO);
    let first = append(CASE, &*broker, &story, event(0)).await.id;
    assert_eq!(next_event(CASE, &mut tail, "the first event").await.id, first, "{CASE}");

    // Act: far more appends than the log retains (and than any live buffer holds) while the tail is not read.
    let ids = append_numbered(CASE, &*broker, &story, 1..1_500).await;

    // Assert: walking the tail, every event is the next one in append order unless a gap says what was skipped.
    let mut expected = 0; // index into ids of the next event due
    while expected < ids.len() {
        match next_item(CASE, &mut tail, &format!("event {expected} or a gap")).await {
            TailItem::Event(e) => {
                assert_eq!(e.id, ids[expected], "{CASE}: event out of order or skipped without a gap");
                expected += 1;
            }
            TailItem::Gap(gap) => {
                let at = if expected == 0 { first } else { ids[expected - 1] };
                assert_eq!(gap.requested, at, "{CASE}: the gap starts at the last delivered event");
                expected = ids
                    .iter()
                    .position(|id| *id == gap.resumed_from)
                    .unwrap_or_else(|| panic!("{CASE}: gap resumes from unknown id {}", gap.resumed_from));
            }
        }
    }
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut tail).await;
}

/// Guarantee 5, lock-step: a tail driven on another task while each event is appended the moment the previous
/// one arrived. The append races the tail going back to waiting, where a lost wake-up would stall the tail.
pub async fn tail_keeps_up_with_appends_made_as_each_event_arrives(factory: &dyn BrokerFactory) {
    const CASE: &str = "tail_keeps_up_with_appends_made_as_each_event_arrives";
    const ROUNDS: u64 = 300;
    // Arrange: the tail runs on its own task and forwards what it yields.
    let broker = factory.make(Retention::default()).await;
    let story = story("lockstep");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tail = broker.tail(&story, EventId::ZERO);
    let forwarder = tokio::spawn(async move {
        while let Some(item) = tail.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });

    // Act + Assert
    for n in 0..ROUNDS {
        let id = append(CASE, &*broker, &story, event(n)).await.id;
        let got = match tokio::time::timeout(ITEM_TIMEOUT, rx.recv()).await {
            Ok(Some(Ok(TailItem::Event(event)))) => event,
            Ok(Some(Ok(TailItem::Gap(gap)))) => panic!("{CASE}: unexpected {gap:?} in round {n}"),
            Ok(Some(Err(e))) => panic!("{CASE}: tail failed in round {n}: {e}"),
            Ok(None) => panic!("{CASE}: tail ended in round {n}"),
            Err(_) => panic!("{CASE}: event {id} (round {n}) not delivered within {ITEM_TIMEOUT:?}"),
        };
        assert_eq!(got.id, id, "{CASE}: round {n}");
    }
    forwarder.abort();
}

/// Guarantees 4 and 5 under load: 4 publishers × 50 events, 3 tails started before publishing; each tail sees all
/// 200 exactly once, in strictly increasing id order.
pub async fn concurrent_publishers_and_tails_see_every_event_once_in_order(factory: &dyn BrokerFactory) {
    const CASE: &str = "concurrent_publishers_and_tails_see_every_event_once_in_order";
    const PUBLISHERS: u64 = 4;
    const PER_PUBLISHER: u64 = 50;
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("busy");
    let tails: Vec<_> = (0..3)
        .map(|i| tokio::spawn(collect_until_end(format!("{CASE} (tail {i})"), broker.tail(&story, EventId::ZERO))))
        .collect();

    // Act
    let publishers = (0..PUBLISHERS).map(|p| {
        let (broker, story) = (Arc::clone(&broker), story.clone());
        tokio::spawn(async move {
            let mut published = Vec::new();
            for i in 0..PER_PUBLISHER {
                let n = p * 1_000 + i;
                published.push((append(CASE, &*broker, &story, event(n)).await.id, n));
            }
            published
        })
    });
    let per_publisher: Vec<Vec<(EventId, u64)>> = futures::future::join_all(publishers)
        .await
        .into_iter()
        .map(|joined| joined.unwrap_or_else(|e| panic!("{CASE}: publisher task: {e}")))
        .collect();
    append(CASE, &*broker, &story, end_event()).await;
    let seen: Vec<Vec<StoredEvent>> = futures::future::join_all(tails)
        .await
        .into_iter()
        .map(|joined| joined.unwrap_or_else(|e| panic!("{CASE}: tail task: {e}")))
        .collect();

    // Assert
    for (p, published) in per_publisher.iter().enumerate() {
        let ids: Vec<EventId> = published.iter().map(|(id, _)| *id).collect();
        assert_strictly_increasing(CASE, &ids, &format!("ids acknowledged to publisher {p}"));
    }
    let number_by_id: HashMap<EventId, u64> = per_publisher.iter().flatten().copied().collect();
    let mut all: Vec<EventId> = number_by_id.keys().copied().collect();
    all.sort();
    assert_eq!(all.len(), 200, "{CASE}: 200 distinct ids acknowledged");
    for (i, events) in seen.iter().enumerate() {
        let ids = ids_of(events);
        assert_strictly_increasing(CASE, &ids, &format!("ids seen by tail {i}"));
        assert_eq!(ids, all, "{CASE}: tail {i} sees every acknowledged event exactly once");
        for event in events {
            assert_eq!(
                Some(number_of(CASE, event)),
                number_by_id.get(&event.id).copied(),
                "{CASE}: tail {i} got the wrong data for {}",
                event.id
            );
        }
    }
    let log: Vec<EventId> = ids_of(&read_all(CASE, &*broker, &story).await)
        .into_iter()
        .filter(|id| number_by_id.contains_key(id))
        .collect();
    assert_eq!(log, all, "{CASE}: the log holds every acknowledged event in the same order");
}

/// Guarantee 5 at the seam: tails started after some id while appends keep running see exactly the log after
/// that id, no gap, no duplicate.
pub async fn tail_started_during_appends_has_no_gap_or_duplicate_at_the_seam(factory: &dyn BrokerFactory) {
    const CASE: &str = "tail_started_during_appends_has_no_gap_or_duplicate_at_the_seam";
    const TAILS: usize = 8;
    const BURST: u64 = 5;
    // Arrange: a publisher appending in bursts until told to stop, then appending the end sentinel.
    let broker = factory.make(Retention::default()).await;
    let story = story("seam");
    let acknowledged = Arc::new(Mutex::new(Vec::<EventId>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (broker, story) = (Arc::clone(&broker), story.clone());
        let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
        async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..BURST {
                    let id = append(CASE, &*broker, &story, event(n)).await.id;
                    acknowledged.lock().expect("ids lock").push(id);
                    n += 1;
                }
                // Pacing, not waiting for anything: keeps appends flowing across the tails' start-up.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            append(CASE, &*broker, &story, end_event()).await.id
        }
    });
    let count = || acknowledged.lock().expect("ids lock").len();

    // Act: start tails at several points while the publisher runs, some right at the newest id, some behind it.
    let mut tails = Vec::new();
    for t in 0..TAILS {
        let resume = poll_until(&format!("{CASE}: {} events appended", (t + 1) * 10), DEFAULT_DEADLINE, || async {
            let ids = acknowledged.lock().expect("ids lock");
            (ids.len() >= (t + 1) * 10).then(|| ids[ids.len() - 1 - (t % 3) * 4])
        })
        .await;
        let tail = broker.tail(&story, resume);
        tails.push((resume, tokio::spawn(collect_until_end(format!("{CASE} (tail {t} after {resume})"), tail))));
    }
    let started_all_at = count();
    poll_until(&format!("{CASE}: appends continue after the last tail started"), DEFAULT_DEADLINE, || async {
        (count() >= started_all_at + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let end = publisher.await.unwrap_or_else(|e| panic!("{CASE}: publisher task: {e}"));
    let log = read_all(CASE, &*broker, &story).await;

    // Assert
    assert_eq!(log.last().map(|e| e.id), Some(end), "{CASE}: the sentinel is the newest event");
    let acknowledged = acknowledged.lock().expect("ids lock").clone();
    assert_eq!(ids_of(&log[..log.len() - 1]), acknowledged, "{CASE}: the log holds every acknowledged append");
    for (resume, tail) in tails {
        let got = ids_of(&tail.await.unwrap_or_else(|e| panic!("{CASE}: tail task: {e}")));
        let want: Vec<EventId> = acknowledged.iter().copied().filter(|id| *id > resume).collect();
        let first_difference = got.iter().zip(&want).position(|(g, w)| g != w);
        assert!(
            got == want,
            "{CASE}: the tail after {resume} yielded {} events, the log holds {} after it; first difference at \
             index {first_difference:?}",
            got.len(),
            want.len()
        );
    }
}

/// Dropping one tail, even with items it never read, leaves the other tails of the story intact; new tails work.
pub async fn dropping_a_tail_does_not_disturb_other_tails(factory: &dyn BrokerFactory) {
    const CASE: &str = "dropping_a_tail_does_not_disturb_other_tails";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let story = story("drop");
    let mut first = broker.tail(&story, EventId::ZERO);
    let mut dropped = broker.tail(&story, EventId::ZERO);
    let mut third = broker.tail(&story, EventId::ZERO);
    let ids = append_numbered(CASE, &*broker, &story, 0..3).await;
    assert_eq!(next_ids(CASE, &mut first, 3, "first batch on tail 1").await, ids, "{CASE}: tail 1, first batch");
    assert_eq!(next_ids(CASE, &mut dropped, 1, "first item on tail 2").await, ids[..1], "{CASE}: tail 2");
    assert_eq!(next_ids(CASE, &mut third, 3, "first batch on tail 3").await, ids, "{CASE}: tail 3, first batch");

    // Act: drop tail 2 mid-stream, two items unread
    drop(dropped);
    let more = append_numbered(CASE, &*broker, &story, 3..6).await;

    // Assert
    assert_eq!(next_ids(CASE, &mut first, 3, "second batch on tail 1").await, more, "{CASE}: tail 1 after the drop");
    assert_eq!(next_ids(CASE, &mut third, 3, "second batch on tail 3").await, more, "{CASE}: tail 3 after the drop");
    let mut late = broker.tail(&story, more[2]);
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut late).await;
    let last = read_all(CASE, &*broker, &story).await.last().map(|e| e.id);
    assert_eq!(next_event(CASE, &mut first, "the sentinel on tail 1").await.id, last.expect("log"), "{CASE}");
    assert_eq!(next_event(CASE, &mut third, "the sentinel on tail 3").await.id, last.expect("log"), "{CASE}");

    // Act + Assert: with every tail gone, a new tail still sees new events
    drop((first, third, late));
    let resume = last.expect("log");
    let mut after_all_dropped = broker.tail(&story, resume);
    assert_next_is_fresh_append(CASE, &*broker, &story, &mut after_all_dropped).await;
}

/// Tails on two stories at once each see only their own story's events.
pub async fn tails_on_two_stories_each_see_only_their_own(factory: &dyn BrokerFactory) {
    const CASE: &str = "tails_on_two_stories_each_see_only_their_own";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let (a, b) = (story("pair:a"), story("pair:b"));
    let mut tail_a = broker.tail(&a, EventId::ZERO);
    let mut tail_b = broker.tail(&b, EventId::ZERO);

    // Act
    let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
    for n in 0..4 {
        ids_a.push(append(CASE, &*broker, &a, event(n)).await.id);
        ids_b.push(append(CASE, &*broker, &b, event(100 + n)).await.id);
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for i in 0..4 {
        got_a.push(next_event(CASE, &mut tail_a, &format!("event {i} of a")).await);
        got_b.push(next_event(CASE, &mut tail_b, &format!("event {i} of b")).await);
    }

    // Assert
    assert_eq!(ids_of(&got_a), ids_a, "{CASE}: tail on a sees a's events");
    assert_eq!(ids_of(&got_b), ids_b, "{CASE}: tail on b sees b's events");
    assert!(got_a.iter().all(|e| e.story == a && number_of(CASE, e) < 100), "{CASE}: tail on a saw b's events");
    assert!(got_b.iter().all(|e| e.story == b && number_of(CASE, e) >= 100), "{CASE}: tail on b saw a's events");
    // b gets a new event first; a's next item must still be a's own sentinel.
    append(CASE, &*broker, &b, event(200)).await;
    assert_next_is_fresh_append(CASE, &*broker, &a, &mut tail_a).await;
    let b_next = next_event(CASE, &mut tail_b, "b's new event").await;
    assert_eq!((b_next.story.clone(), number_of(CASE, &b_next)), (b, 200), "{CASE}: tail on b");
}

// --- health ---

/// `ping` succeeds on a reachable broker.
pub async fn ping_succeeds(factory: &dyn BrokerFactory) {
    const CASE: &str = "ping_succeeds";
    // Arrange
    let broker = factory.make(Retention::default()).await;

    // Act
    let answer = broker.ping().await;

    // Assert
    assert_eq!(answer, Ok(()), "{CASE}: ping on a reachable {} broker", broker.kind());
}

// --- revocations (storyline_core::Revocations) ---

fn revocations_of(case: &str, broker: &dyn Broker) -> Arc<dyn Revocations> {
    broker.revocations().unwrap_or_else(|| panic!("{case}: the {} broker keeps a revocation list", broker.kind()))
}

fn target(jti: Option<&str>, sub: Option<&str>) -> RevocationTarget {
    match (jti, sub) {
        (Some(jti), _) => RevocationTarget::jti(jti),
        (None, Some(sub)) => RevocationTarget::sub(sub),
        (None, None) => panic!("fixture target names nothing"),
    }
    .unwrap_or_else(|e| panic!("fixture target: {e}"))
}

/// A revoke is visible in every later snapshot, each revoke moves the version, the snapshot carries the version it
/// was read at, and revoking a target again replaces its entry.
pub async fn revocations_are_stored_counted_and_replaced(factory: &dyn BrokerFactory) {
    const CASE: &str = "revocations_are_stored_counted_and_replaced";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let store = revocations_of(CASE, &*broker);
    let now = 1_800_000_000;
    let empty = store.snapshot(now).await.unwrap_or_else(|e| panic!("{CASE}: snapshot: {e}"));
    assert!(empty.entries(now).is_empty(), "{CASE}: a fresh store revokes nothing");
    let start = store.version().await.unwrap_or_else(|e| panic!("{CASE}: version: {e}"));

    // Act
    let token = Revocation { target: target(Some("t-1"), None), until: now + 60 };
    let subject = Revocation { target: target(None, Some("user:mallory")), until: now + 600 };
    let mut versions = Vec::new();
    for entry in [token.clone(), subject.clone()] {
        versions.push(store.revoke(entry, now).await.unwrap_or_else(|e| panic!("{CASE}: revoke: {e}")));
    }
    let snapshot = store.snapshot(now).await.unwrap_or_else(|e| panic!("{CASE}: snapshot: {e}"));
    let shortened = Revocation { until: now + 30, ..subject.clone() };
    let replaced_at = store.revoke(shortened.clone(), now).await.unwrap_or_else(|e| panic!("{CASE}: revoke: {e}"));
    let replaced = store.snapshot(now).await.unwrap_or_else(|e| panic!("{CASE}: snapshot: {e}"));

    // Assert
    assert!(
        start < versions[0] && versions[0] < versions[1],
        "{CASE}: each revoke moves the version: {start} {versions:?}"
    );
    assert_eq!(snapshot.version, versions[1], "{CASE}: the snapshot carries the version it was read at");
    assert_eq!(store.version().await, Ok(replaced_at), "{CASE}: version() reads the same counter");
    assert_eq!(snapshot.entries(now), vec![token.clone(), subject], "{CASE}: both entries, jti first");
    assert!(snapshot.is_revoked("anyone", Some("t-1"), now), "{CASE}: by jti");
    assert!(snapshot.is_revoked("user:mallory", None, now), "{CASE}: by sub");
    assert!(!snapshot.is_revoked("ann", Some("t-2"), now), "{CASE}: nothing else");
    assert_eq!(replaced.entries(now), vec![token, shortened], "{CASE}: revoking a target again replaces its entry");
}

/// An entry is in force while `now < until`: a snapshot at or past its `until` leaves it out.
pub async fn revocations_apply_until_their_until_only(factory: &dyn BrokerFactory) {
    const CASE: &str = "revocations_apply_until_their_until_only";
    // Arrange
    let broker = factory.make(Retention::default()).await;
    let store = revocations_of(CASE, &*broker);
    let now = 1_800_000_000;
    let brief = Revocation { target: target(None, Some("brief")), until: now + 10 };
    let long = Revocation { target: target(Some("long"), None), until: now + 1000 };
    for entry in [brief.clone(), long.clone()] {
        store.revoke(entry, now).await.unwrap_or_else(|e| panic!("{CASE}: revoke: {e}"));
    }

    // Act
    let before = store.snapshot(now + 9).await.unwrap_or_else(|e| panic!("{CASE}: snapshot: {e}"));
    let at = store.snapshot(now + 10).await.unwrap_or_else(|e| panic!("{CASE}: snapshot: {e}"));
    // A revoke made later drops what expired by then; the version still moves.
    let version = store.version().await.unwrap_or_else(|e| panic!("{CASE}: version: {e}"));
    let again = Revocation { target: target(None, Some("late")), until: now + 2000 };
    let later = store.revoke(again.clone(), now + 1000).await.unwrap_or_else(|e| panic!("{CASE}: revoke: {e}"));
    let after = store.snapshot(now + 1000).await.unwrap_or_else(|e| panic!("{CASE}: snapshot: {e}"));

    // Assert
    assert_eq!(before.entries(now + 9), vec![long.clone(), brief], "{CASE}: both in force before");
    assert_eq!(at.entries(now + 10), vec![long], "{CASE}: the brief one expired at its until");
    assert!(!at.is_revoked("brief", None, now + 10), "{CASE}: and no longer applies");
    assert!(later > version, "{CASE}: the version moved");
    assert_eq!(after.entries(now + 1000), vec![again], "{CASE}: only what is in force then");
}
