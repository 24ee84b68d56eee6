//! The engine's promises, each a test that fails without it, on both brokers: one upstream read per story,
//! frames encoded once and shared, catch-up without loss for subscribers behind the window.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use storyline_broker_memory::MemoryBroker;
use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_core::{
    Appended, Broker, BrokerError, EventData, EventId, EventStream, EventType, Idempotency, LogBounds, Metadata,
    NewEvent, Page, PageLimit, Retention, StoryId,
};
use storyline_hub::{Bytes, EventMeters, Hub, HubConfig, Observer, ResumeOutcome, Subscription};
use storyline_testkit::RedisServer;

const WAIT: Duration = Duration::from_secs(10);

/// The real broker, with a count of the tails opened on it.
#[derive(Debug)]
struct CountingTails {
    inner: Arc<dyn Broker>,
    tails: AtomicUsize,
}

#[async_trait::async_trait]
impl Broker for CountingTails {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn append(&self, s: &StoryId, e: NewEvent, k: Option<&Idempotency>) -> Result<Appended, BrokerError> {
        self.inner.append(s, e, k).await
    }
    async fn read_after(&self, s: &StoryId, a: EventId, l: PageLimit) -> Result<Page, BrokerError> {
        self.inner.read_after(s, a, l).await
    }
    fn tail(&self, s: &StoryId, a: EventId) -> EventStream {
        self.tails.fetch_add(1, Ordering::SeqCst);
        self.inner.tail(s, a)
    }
    async fn bounds(&self, s: &StoryId) -> Result<LogBounds, BrokerError> {
        self.inner.bounds(s).await
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        self.inner.ping().await
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
}

async fn broker(kind: Kind, retention: Retention) -> (Arc<CountingTails>, Option<RedisServer>) {
    let (inner, server): (Arc<dyn Broker>, _) = match kind {
        Kind::Memory => (Arc::new(MemoryBroker::new(retention)), None),
        Kind::Redis => {
            let server = RedisServer::start();
            let broker =
                RedisBroker::connect(RedisConfig { retention, ..RedisConfig::new(server.url()) }).await.unwrap();
            (Arc::new(broker), Some(server))
        }
    };
    (Arc::new(CountingTails { inner, tails: AtomicUsize::new(0) }), server)
}

fn story(s: &str) -> StoryId {
    StoryId::parse(s).unwrap()
}

async fn append(broker: &dyn Broker, s: &StoryId, n: usize) -> EventId {
    let event = NewEvent {
        event_type: EventType::parse("chapter").unwrap(),
        data: EventData::from_json_text(&format!("{{\"n\":{n}}}")).unwrap(),
        author: "t".into(),
        ts: 1,
        meta: Metadata::new(),
    };
    broker.append(s, event, None).await.unwrap().receipt.id
}

async fn next(sub: &mut Subscription) -> Bytes {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a frame in time").expect("no broker error").bytes()
}

/// What the engine reported.
#[derive(Debug, Default)]
struct Recorded {
    exact: AtomicUsize,
    gap: AtomicUsize,
    replayed: AtomicUsize,
    max_lag: AtomicUsize,
}

impl Observer for Recorded {
    fn event_meters(&self, _: &StoryId, _: &EventType) -> EventMeters {
        EventMeters::noop()
    }
    fn resumed(&self, outcome: ResumeOutcome) {
        match outcome {
            ResumeOutcome::Exact => self.exact.fetch_add(1, Ordering::SeqCst),
            ResumeOutcome::Gap => self.gap.fetch_add(1, Ordering::SeqCst),
        };
    }
    fn replayed(&self, events: usize) {
        self.replayed.fetch_add(events, Ordering::SeqCst);
    }
    fn lag(&self, events: usize) {
        self.max_lag.fetch_max(events, Ordering::SeqCst);
    }
    fn fan_out_span(&self, _: &storyline_core::StoredEvent) -> tracing::Span {
        tracing::Span::none()
    }
}

impl Recorded {
    fn resumes(&self) -> (usize, usize) {
        (self.exact.load(Ordering::SeqCst), self.gap.load(Ordering::SeqCst))
    }
}

fn id_of(frame: &Bytes) -> Option<String> {
    let text = std::str::from_utf8(frame).unwrap();
    text.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned)
}

/// Waits (with a deadline) until `n` upstream tails are open: the feeds run on their own tasks.
async fn feeds_running(broker: &CountingTails, n: usize) {
    storyline_testkit::poll_until("the feeds' upstream tails are open", WAIT, || async {
        (broker.tails.load(Ordering::SeqCst) >= n).then_some(())
    })
    .await;
}

/// Waits until the story's feed runs, then consumes one event through it.
async fn started(hub: &Hub, sub: &mut Subscription, broker: &CountingTails, s: &StoryId) -> EventId {
    feeds_running(broker, 1).await;
    let id = append(broker, s, usize::MAX).await;
    assert_eq!(id_of(&next(sub).await), Some(id.to_string()));
    assert!(hub.stats().active_feeds >= 1);
    id
}

async fn one_upstream_tail_per_story_however_many_subscribers(kind: Kind) {
    let (broker, _redis) = broker(kind, Retention::default()).await;
    let hub = Hub::new(broker.clone(), HubConfig::default());
    let (a, b) = (story("a"), story("b"));
    let mut subs: Vec<_> = (0..30).map(|_| hub.subscribe(&a, EventId::ZERO)).collect();
    subs.extend((0..20).map(|_| hub.subscribe(&b, EventId::ZERO)));
    feeds_running(&broker, 2).await;
    let ida = append(&*broker, &a, 1).await;
    let idb = append(&*broker, &b, 2).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let want = if i < 30 { ida } else { idb };
        assert_eq!(id_of(&next(sub).await), Some(want.to_string()), "subscriber {i}");
    }
    assert_eq!(broker.tails.load(Ordering::SeqCst), 2, "{kind:?}: one upstream tail per story, not per subscriber");
    assert_eq!(hub.stats().active_feeds, 2);
    drop(subs);
    assert_eq!(hub.stats().active_feeds, 0, "the last subscriber leaving stops the story's feed");
    let mut again = hub.subscribe(&a, EventId::ZERO);
    feeds_running(&broker, 3).await;
    let id = append(&*broker, &a, 3).await;
    loop {
        if id_of(&next(&mut again).await) == Some(id.to_string()) {
            break;
        }
    }
    assert_eq!(hub.stats().upstream_starts, 3, "a story with no subscriber cost nothing until one came back");
}

async fn every_subscriber_gets_the_same_encoded_bytes(kind: Kind) {
    let (broker, _redis) = broker(kind, Retention::default()).await;
    let hub = Hub::new(broker.clone(), HubConfig::default());
    let s = story("shared");
    let mut first = hub.subscribe(&s, EventId::ZERO);
    started(&hub, &mut first, &broker, &s).await;
    let mut subs: Vec<_> = (0..10).map(|_| hub.subscribe(&s, first.cursor())).collect();
    subs.push(first);
    let id = append(&*broker, &s, 7).await;
    let frames: Vec<Bytes> = futures::future::join_all(subs.iter_mut().map(next)).await;
    let text = std::str::from_utf8(&frames[0]).unwrap();
    assert!(text.starts_with(&format!("id: {id}\nevent: chapter\ndata: {{\"id\":\"{id}\"")), "{text}");
    assert!(text.ends_with("}\n\n"), "{text}");
    for frame in &frames {
        assert_eq!(frame.as_ptr(), frames[0].as_ptr(), "{kind:?}: one encoding shared by every subscriber");
    }
}

async fn a_subscriber_behind_the_window_catches_up_from_the_log_without_loss(kind: Kind) {
    let (broker, _redis) = broker(kind, Retention::default()).await;
    let seen = Arc::new(Recorded::default());
    let hub = Hub::with_observer(broker.clone(), HubConfig { window: 8, ..HubConfig::default() }, seen.clone());
    let s = story("slow");
    let mut fast = hub.subscribe(&s, EventId::ZERO);
    started(&hub, &mut fast, &broker, &s).await;
    let mut slow = hub.resume(&s, fast.cursor());
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(append(&*broker, &s, n).await.to_string());
        // The fast reader keeps up the whole time; the slow one reads nothing yet.
        assert_eq!(id_of(&next(&mut fast).await).as_deref(), Some(ids[n].as_str()));
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        got.push(id_of(&next(&mut slow).await).expect("an event frame, not a gap"));
    }
    assert_eq!(got, ids, "{kind:?}: 200 events behind an 8-frame window, caught up in order, exactly once");
    let id = append(&*broker, &s, 999).await;
    assert_eq!(id_of(&next(&mut slow).await), Some(id.to_string()), "and back on the live window");
    // What the observer was told: one exact resume (the plain subscriptions are not resumes); at least the 192
    // events that had left the window were read from the log; the slow reader was at least that far behind.
    assert_eq!(seen.resumes(), (1, 0), "{kind:?}");
    let replayed = seen.replayed.load(Ordering::SeqCst);
    assert!((192..=200).contains(&replayed), "{kind:?}: {replayed} events replayed from the log");
    assert!(seen.max_lag.load(Ordering::SeqCst) >= 192, "{kind:?}: lag {seen:?}");
    // A reader resuming at the head is exact too, with nothing to replay.
    let mut current = hub.resume(&s, id);
    let last = append(&*broker, &s, 1000).await;
    assert_eq!(id_of(&next(&mut current).await), Some(last.to_string()));
    assert_eq!(seen.resumes(), (2, 0), "{kind:?}");
    assert_eq!(seen.replayed.load(Ordering::SeqCst), replayed, "{kind:?}: served from the window");
}

async fn catching_up_past_retention_reports_a_gap_never_a_silent_hole(kind: Kind) {
    let mut retention = Retention::default();
    retention.log.max_events = NonZeroUsize::new(5).unwrap();
    let (broker, _redis) = broker(kind, retention).await;
    let seen = Arc::new(Recorded::default());
    let hub = Hub::with_observer(broker.clone(), HubConfig { window: 8, ..HubConfig::default() }, seen.clone());
    let s = story("trimmed");
    let mut fast = hub.subscribe(&s, EventId::ZERO);
    let start = started(&hub, &mut fast, &broker, &s).await;
    let mut slow = hub.resume(&s, start);
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(append(&*broker, &s, n).await.to_string());
    }
    // Walk what arrives: every event is the next one in append order, unless a gap frame just before it says
    // exactly what was skipped (requested = the last delivered id, resumed_from = the next delivered id).
    let (mut last, mut expected, mut gaps) = (start.to_string(), 0, 0);
    while expected < ids.len() {
        let frame = next(&mut slow).await;
        let text = std::str::from_utf8(&frame).unwrap();
        match id_of(&frame) {
            Some(id) => {
                assert_eq!(id, ids[expected], "{kind:?}: event {expected} skipped without a gap");
                last = id;
                expected += 1;
            }
            None => {
                gaps += 1;
                assert!(text.starts_with("event: gap\n"), "{text}");
                assert!(
                    text.contains(&format!("\"requested\":\"{last}\"")),
                    "{kind:?}: gap from the last delivered: {text}"
                );
                expected = ids
                    .iter()
                    .position(|id| text.contains(&format!("\"resumed_from\":\"{id}\"")))
                    .expect("the gap resumes at an appended id");
            }
        }
    }
    assert!(gaps > 0, "{kind:?}: 100 events through a 5-event log: something was trimmed unseen");
    // The resume is reported once; exact or gap depends on whether the feed had read the event after `start`
    // before retention trimmed it (a gap found later is a gap frame, not a second resume).
    let (exact, gap) = seen.resumes();
    assert_eq!(exact + gap, 1, "{kind:?}: one resume, reported once");

    // A resume from a point retention has already removed, on a story with no feed yet: a gap, deterministically.
    let old = story("trimmed-before");
    let first = append(&*broker, &old, 0).await;
    for n in 1..20 {
        append(&*broker, &old, n).await;
    }
    let mut late = hub.resume(&old, first);
    let frame = next(&mut late).await;
    assert!(std::str::from_utf8(&frame).unwrap().starts_with("event: gap\n"), "{kind:?}: {frame:?}");
    assert_eq!(seen.resumes(), (exact, gap + 1), "{kind:?}: the resume met a gap");
}

macro_rules! both {
    ($($case:ident),*) => {
        mod memory { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Kind::Memory).await } )* }
        mod redis { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Kind::Redis).await } )* }
    };
}

both!(
    one_upstream_tail_per_story_however_many_subscribers,
    every_subscriber_gets_the_same_encoded_bytes,
    a_subscriber_behind_the_window_catches_up_from_the_log_without_loss,
    catching_up_past_retention_reports_a_gap_never_a_silent_hole
);
