//! Rate and concurrency limits, checked before any broker work.
//!
//! - Publishes per principal (`sub`), with a rate per tier, and per story (one hot story cannot take the broker for
//!   itself, whoever writes to it).
//! - New streams per client IP (scrapers, one client's reconnect loop), and streams open at once per principal.
//! - New streams per second for the whole instance (admission): when thousands of readers reconnect at once (an
//!   instance died, a deploy, a network blip), the instance admits them at a steady rate and tells the rest when
//!   to come back, spreading them over as many seconds as the backlog needs, instead of spending every core on
//!   stream setup while publishers wait.
//!
//! Rates use governor's GCRA (keyed, lock-free), with a burst of one second's worth. Keyed state is pruned of idle
//! keys every [`HOUSEKEEPING_PERIOD`], so memory follows the active keys, not every key ever seen.
//!
//! **Global and per-instance.** The publish limits (per sub, per story) hold across instances when the broker
//! offers a shared [`RateLimitStore`] (the Redis broker does: one GCRA script call per limit, same semantics):
//! its answer decides. The local limiter is still checked on every publish, so its state stays warm, and it
//! decides whenever the store cannot answer within [`GLOBAL_CHECK_TIMEOUT`] (Redis down or slow): the limits fail
//! open to the per-instance budget, never to no limit, and each fallback is counted in
//! `storyline_rate_limit_fallback_total{limit}`. Stream opens per IP, admissions and concurrent streams stay per
//! instance (they protect the instance itself).

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use storyline_core::{RateDecision, RateLimitStore, RateSubject, StoryId};

use crate::{
    auth::{Principal, Tier},
    error::{ApiError, Capacity},
};

/// How often idle keys are dropped from the rate limiters.
pub(crate) const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(60);

/// The longest a publish waits for the shared rate-limit store before the local limiter decides instead. One
/// Redis round trip takes well under a millisecond; a store this slow is treated as down.
pub(crate) const GLOBAL_CHECK_TIMEOUT: Duration = Duration::from_millis(250);

/// Events per second, per tier; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierRates {
    pub guest: u32,
    pub member: u32,
    pub agent: u32,
    pub admin: u32,
}

impl TierRates {
    fn of(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Guest => self.guest,
            Tier::Member => self.member,
            Tier::Agent => self.agent,
            Tier::Admin => self.admin,
        }
    }
}

/// The limits; each 0 means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Events a principal may publish per second, by its tier.
    pub publish_per_sub: TierRates,
    /// Events per second one story accepts, from all writers together.
    pub publish_per_story: u32,
    /// New streams per second from one client IP.
    pub stream_opens_per_ip: u32,
    /// New streams per second the instance admits from everyone together.
    pub stream_admissions_per_sec: u32,
    /// Streams one principal may hold open at once (anonymous guests: per client IP).
    pub streams_per_principal: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            publish_per_sub: TierRates { guest: 1, member: 10, agent: 100, admin: 1_000 },
            publish_per_story: 500,
            stream_opens_per_ip: 50,
            stream_admissions_per_sec: 1_000,
            streams_per_principal: 64,
        }
    }
}

impl LimitsConfig {
    /// No limit at all (tests and benchmarks that measure the service, not its limits).
    pub fn unlimited() -> Self {
        Self {
            publish_per_sub: TierRates { guest: 0, member: 0, agent: 0, admin: 0 },
            publish_per_story: 0,
            stream_opens_per_ip: 0,
            stream_admissions_per_sec: 0,
            streams_per_principal: 0,
        }
    }
}

/// Which limit refused a request (the `reason` of the rejection metric and audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PublishPerSub,
    PublishPerStory,
    StreamOpensPerIp,
    StreamsPerPrincipal,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PublishPerSub => "publish_rate_per_sub",
            Self::PublishPerStory => "publish_rate_per_story",
            Self::StreamOpensPerIp => "stream_opens_per_ip",
            Self::StreamsPerPrincipal => "streams_per_principal",
        }
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_second).map(|rate| RateLimiter::keyed(Quota::per_second(rate)))
}

/// The live limiters of one instance.
#[derive(Debug)]
pub(crate) struct Limits {
    config: LimitsConfig,
    /// One limiter per tier (guest, member, agent, admin), keyed by `sub`.
    per_sub: [Option<DefaultKeyedRateLimiter<String>>; 4],
    per_story: Option<DefaultKeyedRateLimiter<StoryId>>,
    opens_per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    admission: Option<Admission>,
    /// Streams open per principal; an entry exists only while its count is above zero.
    open_by_principal: Mutex<HashMap<Arc<str>, u32>>,
    /// The store shared by every instance, when the broker offers one: it decides the publish limits.
    global: Option<Arc<dyn RateLimitStore>>,
}

/// Rejected: which limit, and when to retry.
fn rejected(limit: Limit, quota: u32, wait: Duration) -> ApiError {
    let retry_after_secs = u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
    ApiError::RateLimited { limit, quota, retry_after_secs }
}

impl Limits {
    pub(crate) fn new(config: LimitsConfig) -> Self {
        let rates = config.publish_per_sub;
        Self {
            per_sub: [rates.guest, rates.member, rates.agent, rates.admin].map(limiter),
            per_story: limiter(config.publish_per_story),
            opens_per_ip: limiter(config.stream_opens_per_ip),
            admission: NonZeroU32::new(config.stream_admissions_per_sec).map(Admission::new),
            open_by_principal: Mutex::new(HashMap::new()),
            global: None,
            config,
        }
    }

    /// Lets `store` (shared by every instance) decide the publish limits; `None` keeps them per instance.
    pub(crate) fn with_global(mut self, store: Option<Arc<dyn RateLimitStore>>) -> Self {
        self.global = store;
        self
    }

    /// May `principal` publish to `story` now?
    pub(crate) async fn check_publish(&self, principal: &Principal, story: &StoryId) -> Result<(), ApiError> {
        let tier = principal.tier;
        let index = match tier {
            Tier::Guest => 0,
            Tier::Member => 1,
            Tier::Agent => 2,
            Tier::Admin => 3,
        };
        if let Some(limiter) = &self.per_sub[index] {
            let local = limiter.check_key(&principal.sub);
            let subject = RateSubject::Publisher { class: tier.as_str(), sub: &principal.sub };
            self.decide(Limit::PublishPerSub, self.config.publish_per_sub.of(tier), subject, local).await?;
        }
        if let Some(limiter) = &self.per_story {
            let local = limiter.check_key(story);
            self.decide(Limit::PublishPerStory, self.config.publish_per_story, RateSubject::Story(story), local)
                .await?;
        }
        Ok(())
    }

    /// The shared store's decision if it gives one in time, else the local limiter's (`local`, already taken).
    async fn decide(
        &self,
        limit: Limit,
        rate: u32,
        subject: RateSubject<'_>,
        local: Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>>,
    ) -> Result<(), ApiError> {
        if let (Some(store), Some(per_second)) = (&self.global, NonZeroU32::new(rate)) {
            match tokio::time::timeout(GLOBAL_CHECK_TIMEOUT, store.check(subject, per_second)).await {
                Ok(Ok(RateDecision::Allowed)) => return Ok(()),
                Ok(Ok(RateDecision::Limited { retry_after })) => return Err(rejected(limit, rate, retry_after)),
                Ok(Err(e)) => {
                    tracing::debug!(limit = limit.as_str(), error = %e, "rate-limit store failed; local limit")
                }
                Err(_) => tracing::debug!(limit = limit.as_str(), "rate-limit store too slow; local limit"),
            }
            crate::meters::rate_limit_fallback(limit);
        }
        local.map_err(|not_until| rejected(limit, rate, not_until.wait_time_from(DefaultClock::default().now())))
    }

    /// May `ip` open a new stream now?
    pub(crate) fn check_stream_open(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.opens_per_ip {
            Some(limiter) => limiter.check_key(&ip).map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                rejected(Limit::StreamOpensPerIp, self.config.stream_opens_per_ip, wait)
            }),
            None => Ok(()),
        }
    }

    /// Does the instance admit another new stream this second? Past the admission rate: 503 `at-capacity` with a
    /// `Retry-After` spread over the backlog (see [`Admission`]).
    pub(crate) fn admit_stream(&self) -> Result<(), ApiError> {
        match &self.admission {
            Some(admission) => admission
                .admit()
                .map_err(|retry_after_secs| ApiError::AtCapacity { cap: Capacity::Admissions, retry_after_secs }),
            None => Ok(()),
        }
    }

    /// Takes one of the principal's concurrent stream places; give it back with [`Limits::release_stream`].
    /// `None` when there is no such limit.
    pub(crate) fn acquire_stream(&self, principal: &Principal, ip: IpAddr) -> Result<Option<Arc<str>>, ApiError> {
        let max = self.config.streams_per_principal;
        if max == 0 {
            return Ok(None);
        }
        let key: Arc<str> =
            if principal.anonymous { format!("ip:{ip}").into() } else { format!("sub:{}", principal.sub).into() };
        let mut open =
            self.open_by_principal.lock().map_err(|_| ApiError::Internal("stream counts poisoned".into()))?;
        let count = open.entry(Arc::clone(&key)).or_insert(0);
        if *count >= max {
            // Streams end when their clients go or their tokens expire; a second is a fair first wait.
            return Err(rejected(Limit::StreamsPerPrincipal, max, Duration::ZERO));
        }
        *count += 1;
        Ok(Some(key))
    }

    pub(crate) fn release_stream(&self, key: &Arc<str>) {
        if let Ok(mut open) = self.open_by_principal.lock()
            && let Some(count) = open.get_mut(key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(key);
            }
        }
    }

    /// Drops keys that have been idle long enough to be back at a full burst.
    pub(crate) fn housekeeping(&self) {
        fn prune<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.per_sub.iter().flatten().for_each(prune);
        self.per_story.iter().for_each(prune);
        self.opens_per_ip.iter().for_each(prune);
    }
}

/// The instance-wide admission of new streams: a GCRA rate (burst: one second's worth), and, for the refused,
/// a `Retry-After` drawn at random from 1 up to the number of seconds the refusals of the current second would
/// take to admit. The first refusals of a burst are told to come back in a second; once a storm's backlog is
/// several seconds deep, its readers are spread over that many seconds instead of all coming back together.
#[derive(Debug)]
struct Admission {
    limiter: DefaultDirectRateLimiter,
    rate: u32,
    started: Instant,
    /// The second (since `started`) that `refused` counts.
    second: AtomicU64,
    refused: AtomicU32,
}

/// The longest `Retry-After` the admission hands out, seconds.
const MAX_ADMISSION_WAIT_SECS: u32 = 60;

impl Admission {
    fn new(rate: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            rate: rate.get(),
            started: Instant::now(),
            second: AtomicU64::new(0),
            refused: AtomicU32::new(0),
        }
    }

    /// `Ok` to admit, or the seconds to tell the refused client to wait.
    fn admit(&self) -> Result<(), u32> {
        if self.limiter.check().is_ok() {
            return Ok(());
        }
        let now = self.started.elapsed().as_secs();
        if self.second.swap(now, Ordering::AcqRel) != now {
            self.refused.store(0, Ordering::Release);
        }
        let refused = self.refused.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let backlog_secs = (refused / self.rate).min(MAX_ADMISSION_WAIT_SECS - 1);
        Err(1 + fastrand::u32(0..=backlog_secs))
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::auth::Scopes;

    fn principal(sub: &str, tier: Tier) -> Principal {
        Principal {
            sub: sub.into(),
            tier,
            scopes: Scopes::parse("write:*"),
            expires_at: u64::MAX,
            jti: None,
            anonymous: false,
        }
    }

    fn story(s: &str) -> StoryId {
        StoryId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn status(result: Result<(), ApiError>) -> u16 {
        result.err().map_or(200, |e| actix_web::ResponseError::status_code(&e).as_u16())
    }

    #[test]
    fn publish_rates_are_per_sub_and_per_tier() {
        let limits = Limits::new(LimitsConfig {
            publish_per_sub: TierRates { guest: 1, member: 2, agent: 5, admin: 0 },
            ..LimitsConfig::unlimited()
        });
        let ann = principal("ann", Tier::Member);
        let bob = principal("bob", Tier::Member);
        let bot = principal("bot", Tier::Agent);
        let s = story("s");
        let anns: Vec<u16> = (0..3).map(|_| status(block_on(limits.check_publish(&ann, &s)))).collect();
        assert_eq!(anns, [200, 200, 429], "member: a burst of 2");
        assert_eq!(status(block_on(limits.check_publish(&bob, &s))), 200, "another sub has its own budget");
        let bots: Vec<u16> = (0..6).map(|_| status(block_on(limits.check_publish(&bot, &s)))).collect();
        assert_eq!(bots, [200, 200, 200, 200, 200, 429], "agent: a burst of 5");
        let admin = principal("root", Tier::Admin);
        assert!((0..100).all(|_| block_on(limits.check_publish(&admin, &s)).is_ok()), "0 means unlimited");
    }

    #[test]
    fn a_hot_story_is_limited_whoever_writes() {
        let limits = Limits::new(LimitsConfig { publish_per_story: 3, ..LimitsConfig::unlimited() });
        let results: Vec<u16> = (0..4)
            .map(|i| status(block_on(limits.check_publish(&principal(&format!("w{i}"), Tier::Agent), &story("hot")))))
            .collect();
        assert_eq!(results, [200, 200, 200, 429]);
        assert_eq!(status(block_on(limits.check_publish(&principal("w9", Tier::Agent), &story("cold")))), 200);
    }

    #[test]
    fn rejections_say_when_to_retry() {
        let limits = Limits::new(LimitsConfig { stream_opens_per_ip: 1, ..LimitsConfig::unlimited() });
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(limits.check_stream_open(ip).is_ok());
        match limits.check_stream_open(ip) {
            Err(ApiError::RateLimited { limit: Limit::StreamOpensPerIp, quota: 1, retry_after_secs }) => {
                assert!((1..=2).contains(&retry_after_secs), "{retry_after_secs}");
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.check_stream_open([10, 0, 0, 2].into()).is_ok(), "per IP");
    }

    #[test]
    fn the_instance_admits_new_streams_at_its_rate_and_spreads_the_refused_over_the_backlog() {
        let limits = Limits::new(LimitsConfig { stream_admissions_per_sec: 10, ..LimitsConfig::unlimited() });
        let admitted = (0..10).filter(|_| limits.admit_stream().is_ok()).count();
        assert_eq!(admitted, 10, "a burst of one second's worth");
        let waits: Vec<u32> = (0..50)
            .map(|_| match limits.admit_stream() {
                Err(ApiError::AtCapacity { cap: Capacity::Admissions, retry_after_secs }) => retry_after_secs,
                other => panic!("refused with 503 at-capacity, got {other:?}"),
            })
            .collect();
        assert!(waits[..9].iter().all(|w| *w == 1), "the first refusals come back in a second: {waits:?}");
        assert!(waits.iter().all(|w| (1..=6).contains(w)), "never longer than the backlog: {waits:?}");
        assert!(waits[40..].iter().any(|w| *w > 1), "a deep backlog is spread: {waits:?}");
        assert_eq!(status(Limits::new(LimitsConfig::unlimited()).admit_stream()), 200, "0 means unlimited");
    }

    #[test]
    fn concurrent_streams_are_counted_per_principal_and_given_back() {
        let limits = Limits::new(LimitsConfig { streams_per_principal: 2, ..LimitsConfig::unlimited() });
        let ann = principal("ann", Tier::Member);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let first = limits.acquire_stream(&ann, ip).ok().flatten();
        let second = limits.acquire_stream(&ann, ip).ok().flatten();
        assert!(first.is_some() && second.is_some());
        assert!(limits.acquire_stream(&ann, ip).is_err(), "third refused");
        assert!(limits.acquire_stream(&principal("bob", Tier::Member), ip).is_ok(), "per principal");
        if let Some(key) = &first {
            limits.release_stream(key);
        }
        assert!(limits.acquire_stream(&ann, ip).is_ok(), "a released place is free again");
    }

    /// A shared store that answers from a script: `Some(decision)`, or `None` for "unreachable".
    #[derive(Debug)]
    struct FakeStore(Mutex<Vec<Option<RateDecision>>>);

    #[async_trait::async_trait]
    impl RateLimitStore for FakeStore {
        async fn check(&self, _: RateSubject<'_>, _: NonZeroU32) -> Result<RateDecision, storyline_core::BrokerError> {
            let next = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop().flatten();
            next.ok_or_else(|| storyline_core::BrokerError::Unavailable("store down".into()))
        }
    }

    #[tokio::test]
    async fn a_shared_store_decides_the_publish_limits_and_the_local_limiter_decides_when_it_cannot() {
        let limited = RateDecision::Limited { retry_after: Duration::from_millis(300) };
        // Answers are popped from the end: allowed, limited, then down for good.
        let store = FakeStore(Mutex::new(vec![None, None, None, Some(limited), Some(RateDecision::Allowed)]));
        let limits = Limits::new(LimitsConfig {
            publish_per_sub: TierRates { guest: 1, member: 2, agent: 5, admin: 0 },
            ..LimitsConfig::unlimited()
        })
        .with_global(Some(Arc::new(store)));
        let ann = principal("ann", Tier::Member);
        let s = story("s");
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(status(limits.check_publish(&ann, &s).await));
        }
        // 1: the store allows. 2: the store refuses (the local limiter would have allowed: its burst is 2).
        // 3-5: the store is down; the local limiter, warm with the 2 publishes it saw, refuses: it fails open to
        // the per-instance budget, not to no limit.
        assert_eq!(got, [200, 429, 429, 429, 429], "the store decides while it answers, then the local limiter");
    }
}
