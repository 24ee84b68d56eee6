//! The Redis Streams broker, on `fred`.
//!
//! - **Append**: one Lua script ([`scripts/append.lua`]) does the idempotency check, `XADD`, the idempotency
//!   record and retention trimming atomically, over a small pool of multiplexed connections (no per-request
//!   connection setup).
//! - **Read**: `XRANGE` from the pool.
//! - **Tail**: one [`tailer`] per broker instance owns a dedicated connection and reads every story that has a
//!   local tail with a single multi-key `XREAD BLOCK` (on Redis Cluster: one non-blocking `XREAD` per hash slot,
//!   polled), fanning entries out to per-story channels. A tail first pages through the backlog with `XRANGE`,
//!   then switches to its story's channel, deduplicating by id at the seam.
//! - **Deployments**: a single server, a primary found through Sentinel, or a Redis Cluster, chosen by the URL
//!   scheme (see [`RedisConfig::url`]). On a cluster every key of a story hashes to one slot, so each script runs
//!   on one node; fred routes each command to the slot's node and follows redirections.
//! - **Failure**: every command has a timeout (`command_timeout`), so a request fails with
//!   [`BrokerError::Unavailable`] instead of hanging while Redis is away; the client reconnects with backoff and
//!   open tails continue from where they were once it is back.
//! - **Scripts**: loaded into Redis at connect and again after every reconnect ([`scripts`]), so no request
//!   waits on (or fails for) a `NOSCRIPT` after a restart.
//! - **Rate limits**: a [`RateLimitStore`](storyline_core::RateLimitStore) shared by every instance on this Redis,
//!   one GCRA script call per limit ([`limits`]).
//!
//! Keys are laid out in [`keys`]; the stored form of an event in [`codec`]. Redis 6.2 or newer is required (checked at connect).

mod codec;
mod keys;
mod limits;
mod revocations;
mod scripts;
mod tailer;
mod unreachable;

use std::{sync::Arc, time::Duration};

use fred::{prelude::*, types::scripts::Script};
use futures::StreamExt;
use storyline_core::{
    Appended, Broker, BrokerError, EventId, EventStream, EventType, Gap, Idempotency, LogBounds, NewEvent, Page,
    PageLimit, Receipt, Retention, StoredEvent, StoryId,
};

const APPEND_LUA: &str = include_str!("../scripts/append.lua");
pub(crate) const BOUNDS_LUA: &str = include_str!("../scripts/bounds.lua");
pub(crate) const READ_LUA: &str = include_str!("../scripts/read.lua");

/// How to reach Redis and how to use it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is; the scheme picks the deployment (fred's URL forms):
    /// - a single server: `redis://[user:password@]host:port[/db]`;
    /// - Redis Cluster: `redis-cluster://[user:password@]host:port?node=host2:port2&node=host3:port3`, where each
    ///   address is a seed node (any one is enough; the client discovers the rest with `CLUSTER SLOTS`);
    /// - Sentinel: `redis-sentinel://[user:password@]host:26379[/db]?sentinelServiceName=mymaster&node=host2:26379`,
    ///   where the addresses are *sentinels* and the client follows the primary they name (`sentinelServiceName`
    ///   is required). Accepted and parsed; not covered by the test suite.
    ///
    /// (`rediss://`, TLS, is not enabled in this build.)
    pub url: String,
    pub retention: Retention,
    /// Upper bound on any single command, including time spent waiting for a reconnect.
    pub command_timeout: Duration,
    /// Multiplexed connections used for appends and reads.
    pub pool_size: usize,
    /// How long the tailer's `XREAD` blocks before it re-checks which stories to read.
    pub block: Duration,
    /// Redis Cluster only: how long the tailer waits between rounds of non-blocking reads that found nothing new.
    /// The latency/cost dial (the tailer module's docs weigh it): up to this much delay per live event, and one
    /// `XREAD` per watched hash slot per interval while idle.
    pub cluster_poll_interval: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            retention: Retention::default(),
            command_timeout: Duration::from_secs(2),
            pool_size: 4,
            block: Duration::from_secs(5),
            cluster_poll_interval: Duration::from_millis(50),
        }
    }
}

/// The Redis Streams broker. Cloning shares connections and the tailer.
#[derive(Debug, Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    retention: Retention,
    append: Script,
    bounds: Script,
    read: Script,
    tailer: tailer::Tailer,
    /// Servers the pool lost and has not got back (named when nothing is connected).
    unreachable: unreachable::Unreachable,
}

/// Redis replies that mean "not now" rather than "never".
const TRANSIENT_REPLIES: &[&str] = &["LOADING", "BUSY", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"];
/// fred's own errors (of kind `Unknown`) that mean the command found no connection, so it was never sent: seen as
/// a 500 on the first append after Redis went away, when it is an outage like any other.
const TRANSIENT_CLIENT_ERRORS: &[&str] = &["Failed to route command", IN_FLIGHT_WRITE_FAILED];
/// fred's error (kind `Unknown`) for a command whose write failed with no attempt left: its connection died while
/// it was being written or answered (seen when Redis cut every client), so Redis may have run it.
const IN_FLIGHT_WRITE_FAILED: &str = "Too many failed write attempts";

/// Maps a fred error: connection trouble and transient server states are `Unavailable` (clients get 503 and
/// retry); any other error reply is `Rejected` (500), because retrying a script error or a wrong-type key forever
/// while readiness stays green helps nobody.
pub(crate) fn unavailable(e: fred::error::Error) -> BrokerError {
    use fred::error::ErrorKind as K;
    let transient_kind = matches!(
        e.kind(),
        K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Cluster | K::Routing | K::Sentinel | K::Auth
    );
    let details = e.details();
    if transient_kind || TRANSIENT_REPLIES.iter().chain(TRANSIENT_CLIENT_ERRORS).any(|p| details.starts_with(p)) {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Rejected(e.to_string())
    }
}

/// Maps a fred error of a write that was handed to the connection: if the connection broke or the answer did not
/// come in time, Redis may have executed it, so the outcome is `Unconfirmed`, not `Unavailable`. Error replies
/// (`LOADING`, `BUSY`, `OOM`...) and failures before sending (backpressure, auth) still mean nothing was written.
pub(crate) fn unconfirmed(e: fred::error::Error) -> BrokerError {
    use fred::error::ErrorKind as K;
    if matches!(e.kind(), K::IO | K::Timeout | K::Canceled | K::Cluster | K::Routing)
        || e.details().starts_with(IN_FLIGHT_WRITE_FAILED)
    {
        BrokerError::Unconfirmed(e.to_string())
    } else {
        unavailable(e)
    }
}

fn builder(config: &RedisConfig) -> Result<Builder, BrokerError> {
    let mut redis =
        Config::from_url(&config.url).map_err(|e| BrokerError::Unavailable(format!("bad Redis URL: {e}")))?;
    // Keep retrying the first connection too: an instance that starts while Redis is away comes up not-ready and
    // becomes ready when Redis is back, instead of exiting (which an orchestrator turns into a restart loop).
    redis.fail_fast = false;
    let mut builder = Builder::from_config(redis);
    let timeout = config.command_timeout;
    builder
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // Never re-send a command whose connection closed while it was in flight (fred's default is to try
            // three times): Redis may have run it before the connection died, and an append without an
            // idempotency key run twice is an event stored twice. The caller gets `Unconfirmed` instead and the
            // client retries with its key. Commands queued while disconnected were never written and still wait
            // for the reconnect.
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        // Retry forever with capped exponential backoff: storyline must outlive Redis restarts.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    Ok(builder)
}

/// Logs a client's connection losses and reconnections (target `storyline::broker`), so an outage and its end
/// are in the logs with the server and the error. The listener tasks end with the client.
fn log_connection_events(client: &Client, role: &'static str) {
    let _lost = client.on_error(move |(error, server)| async move {
        let server = server.map(|s| s.to_string()).unwrap_or_default();
        tracing::warn!(target: "storyline::broker", role, server, error = %error, "Redis connection lost; reconnecting");
        Ok(())
    });
    let _back = client.on_reconnect(move |server| async move {
        tracing::info!(target: "storyline::broker", role, server = %server, "Redis connection re-established");
        Ok(())
    });
}

impl RedisBroker {
    /// Starts the connections and the tailer, waiting up to `command_timeout` for Redis to answer. If it does not,
    /// the broker is returned anyway and keeps reconnecting in the background: operations fail with
    /// [`BrokerError::Unavailable`] (and readiness with them) until Redis is reachable. Only a malformed URL is an
    /// error here.
    pub async fn connect(config: RedisConfig) -> Result<Self, BrokerError> {
        let builder = builder(&config)?;
        let pool = builder.build_pool(config.pool_size.max(1)).map_err(unavailable)?;
        // The tailer's connection blocks in XREAD (on a cluster: carries its polls, one connection per primary); it
        // must never carry other traffic.
        let reader = builder.build().map_err(unavailable)?;
        let mode = if reader.is_clustered() {
            tailer::ReadMode::PollBySlot(config.cluster_poll_interval)
        } else {
            tailer::ReadMode::Block(config.block)
        };
        let tailer = tailer::Tailer::start(reader.clone(), mode);
        let inner = Arc::new(Inner {
            pool,
            retention: config.retention,
            append: Script::from_lua(APPEND_LUA),
            bounds: Script::from_lua(BOUNDS_LUA),
            read: Script::from_lua(READ_LUA),
            tailer,
            unreachable: unreachable::Unreachable::default(),
        });
        let pool = &inner.pool;
        for (index, client) in pool.clients().iter().enumerate() {
            log_connection_events(client, "pool");
            inner.unreachable.watch(client, index);
            // Registered before connecting: the first connection is announced too, and every later one.
            scripts::reload_on_reconnect(client, index, Arc::downgrade(&inner));
        }
        log_connection_events(&reader, "tailer");
        let _pool_task = pool.connect();
        let _reader_task = reader.connect();
        let connected = async {
            pool.wait_for_connect().await?;
            reader.wait_for_connect().await
        };
        match tokio::time::timeout(config.command_timeout, connected).await {
            Ok(Ok(())) => {
                check_version(pool).await?;
                // The reconnect listeners load them too, but in the background: the broker is handed out only
                // once every connection's server has them.
                for client in pool.clients() {
                    if let Err(e) = scripts::load_all(client).await {
                        tracing::warn!(error = %e, "loading the Lua scripts failed; they load on first use instead");
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "Redis connection failed; retrying in the background"),
            Err(_) => tracing::warn!(
                timeout = ?config.command_timeout,
                "Redis is not reachable yet; starting not-ready and retrying in the background"
            ),
        }
        Ok(Self { inner })
    }

    /// A pooled connection for a request, or `Unavailable` at once if it is known to be down: a client waiting on
    /// a POST should get its 503 + Retry-After now, not after the command timeout. (A connection lost after this
    /// check still fails within `command_timeout`.)
    /// After a restart the pool's connections come back one by one, so any connected member will do.
    fn request_client(&self) -> Result<&Client, BrokerError> {
        let next = self.inner.pool.next();
        if next.is_connected() {
            return Ok(next);
        }
        self.inner.pool.clients().iter().find(|c| c.is_connected()).ok_or_else(|| {
            BrokerError::Unavailable(format!(
                "not connected to Redis (reconnecting){}",
                self.inner.unreachable.describe()
            ))
        })
    }
}

/// Trim slack: how far past `max_events` a log may grow before it is trimmed back. About 1% (at least 1, at most
/// 1,000) keeps the trimming cost amortised to a fraction of an entry per append.
fn trim_slack(max_events: std::num::NonZeroUsize) -> usize {
    (max_events.get() / 100).clamp(1, 1_000)
}

/// An idempotency record, `<id> <type> <ts> <fingerprint>`, as a receipt. Records written before fingerprints
/// existed have no fourth part (the script treats them as matching any request).
fn parse_duplicate_receipt(story: &StoryId, prior: &str) -> Result<Receipt, BrokerError> {
    let mut parts = prior.split(' ');
    let (Some(id), Some(ty), Some(ts), _fingerprint, None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BrokerError::Corrupt(format!("idempotency record {prior:?}")));
    };
    Ok(Receipt {
        id: EventId::parse(id).map_err(|e| BrokerError::Corrupt(e.to_string()))?,
        story: story.clone(),
        event_type: EventType::parse(ty).map_err(|e| BrokerError::Corrupt(e.to_string()))?,
        ts: ts.parse().map_err(|_| BrokerError::Corrupt(format!("idempotency record {prior:?}")))?,
    })
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn append(
        &self,
        story: &StoryId,
        event: NewEvent,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BrokerError> {
        let mut keys = vec![keys::log(story), keys::meta(story)];
        if let Some(idem) = idempotency {
            keys.push(keys::idempotency(story, &idem.key));
        }
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let key_ttl_ms = millis(self.inner.retention.idempotency_ttl()).max(1);
        // 0 = no TTL; a configured TTL is at least 1 ms (0 would mean "none" to the script).
        let story_ttl_ms = self.inner.retention.story_ttl.map_or(0, |ttl| millis(ttl).max(1));
        let retention = self.inner.retention.for_story(story);
        let mut args = vec![
            retention.max_events.get().to_string(),
            trim_slack(retention.max_events).to_string(),
            key_ttl_ms.to_string(),
            format!("{} {}", event.event_type, event.ts),
            retention.max_age.map_or(0, millis).to_string(),
            idempotency.map(|idem| idem.fingerprint.as_str().to_owned()).unwrap_or_default(),
            story_ttl_ms.to_string(),
        ];
        args.extend(codec::fields(&event));
        let (outcome, answer): (i64, String) =
            self.inner.append.evalsha_with_reload(self.request_client()?, keys, args).await.map_err(unconfirmed)?;
        match outcome {
            1 => {
                let id =
                    EventId::parse(&answer).map_err(|e| BrokerError::Corrupt(format!("XADD id {answer:?}: {e}")))?;
                let receipt = Receipt { id, story: story.clone(), event_type: event.event_type, ts: event.ts };
                Ok(Appended { receipt, duplicate: false })
            }
            0 => Ok(Appended { receipt: parse_duplicate_receipt(story, &answer)?, duplicate: true }),
            2 => Err(BrokerError::IdempotencyKeyMismatch),
            other => Err(BrokerError::Corrupt(format!("append script answered {other}"))),
        }
    }

    async fn read_after(&self, story: &StoryId, after: EventId, limit: PageLimit) -> Result<Page, BrokerError> {
        let (gap, events) =
            read_page_checked(self.request_client()?, &self.inner.read, story, after, limit.get()).await?;
        Ok(Page { gap, events })
    }

    fn tail(&self, story: &StoryId, after: EventId) -> EventStream {
        let client = self.inner.pool.next().clone();
        self.inner.tailer.tail(client, story.clone(), after).boxed()
    }

    async fn bounds(&self, story: &StoryId) -> Result<LogBounds, BrokerError> {
        log_bounds(self.request_client()?, &self.inner.bounds, story).await
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let client = self.request_client()?;
        if client.is_clustered() {
            ping_every_primary(client, &self.inner.unreachable).await
        } else {
            client.ping::<()>(None).await.map_err(unavailable)
        }
    }

    fn rate_limits(&self) -> Option<Arc<dyn storyline_core::RateLimitStore>> {
        Some(Arc::new(limits::RedisRateLimits::new(self.clone())))
    }

    /// The revocation list in this Redis, shared by every instance on it (see [`revocations`]).
    fn revocations(&self) -> Option<Arc<dyn storyline_core::Revocations>> {
        Some(Arc::new(revocations::RedisRevocations::new(self.clone())))
    }
}

/// Readiness on a cluster: every primary answers a `PING` over its own connection, concurrently. Any story may
/// live on any primary, so one primary down is not ready; the error names each primary that failed (and the
/// servers the pool has lost: while fred reconnects a cluster client, every node times out).
async fn ping_every_primary(client: &Client, unreachable: &unreachable::Unreachable) -> Result<(), BrokerError> {
    let primaries = client.cached_cluster_state().map(|state| state.unique_primary_nodes()).unwrap_or_default();
    if primaries.is_empty() {
        return Err(BrokerError::Unavailable("Redis Cluster topology not known yet (connecting)".into()));
    }
    let pings = primaries.iter().map(|server| async move {
        client.with_cluster_node(server).ping::<()>(None).await.map_err(|e| format!("primary {server}: {e}"))
    });
    let failed: Vec<String> = futures::future::join_all(pings).await.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(BrokerError::Unavailable(format!(
            "Redis Cluster not ready: {}{}",
            failed.join("; "),
            unreachable.describe()
        )))
    }
}

/// The retained range of a story's log, in one round trip.
pub(crate) async fn log_bounds(client: &Client, script: &Script, story: &StoryId) -> Result<LogBounds, BrokerError> {
    let (oldest, newest, trimmed): (String, String, String) = script
        .evalsha_with_reload(client, vec![keys::log(story), keys::meta(story)], Vec::<String>::new())
        .await
        .map_err(unavailable)?;
    Ok(LogBounds {
        oldest: parse_optional_id(&oldest)?,
        newest: parse_optional_id(&newest)?,
        trimmed_through: parse_optional_id(&trimmed)?,
    })
}

/// Oldest Redis this adapter works with: XTRIM MINID and exclusive XRANGE bounds arrived in 6.2.
const MIN_REDIS: (u32, u32) = (6, 2);

/// Refuses a Redis older than [`MIN_REDIS`], loudly, at start. On a cluster every primary is asked (any of them
/// may own a story), each through its own connection.
async fn check_version(pool: &Pool) -> Result<(), BrokerError> {
    let client = pool.next();
    let section = Some(fred::types::InfoKind::Server);
    let mut infos: Vec<(String, String)> = Vec::new();
    if client.is_clustered() {
        for server in client.active_connections() {
            let info = client.with_cluster_node(&server).info(section.clone()).await.map_err(unavailable)?;
            infos.push((format!(" at {server}"), info));
        }
    }
    if infos.is_empty() {
        infos.push((String::new(), client.info(section).await.map_err(unavailable)?));
    }
    for (node, info) in infos {
        let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("").trim().to_owned();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if found < MIN_REDIS {
            return Err(BrokerError::Rejected(format!(
                "Redis {version}{node} is too old: storyline needs Redis {}.{} or newer",
                MIN_REDIS.0, MIN_REDIS.1
            )));
        }
    }
    Ok(())
}

/// A page after `after`, and the gap (if any) between `after` and the first retained event, read atomically.
pub(crate) async fn read_page_checked(
    client: &Client,
    script: &Script,
    story: &StoryId,
    after: EventId,
    limit: usize,
) -> Result<(Option<Gap>, Vec<StoredEvent>), BrokerError> {
    let (trimmed, oldest, entries): (String, String, Value) = script
        .evalsha_with_reload(
            client,
            vec![keys::log(story), keys::meta(story)],
            vec![format!("({after}"), limit.to_string()],
        )
        .await
        .map_err(unavailable)?;
    let gap = Gap::after(after, parse_optional_id(&trimmed)?, parse_optional_id(&oldest)?);
    Ok((gap, codec::decode_entries(story, entries)))
}

fn parse_optional_id(s: &str) -> Result<Option<EventId>, BrokerError> {
    if s.is_empty() { Ok(None) } else { EventId::parse(s).map(Some).map_err(|e| BrokerError::Corrupt(e.to_string())) }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    use super::*;

    #[test]
    fn a_write_whose_answer_was_lost_is_unconfirmed_and_a_refused_one_is_unavailable() {
        for kind in [ErrorKind::IO, ErrorKind::Timeout, ErrorKind::Canceled] {
            let e = Error::new(kind.clone(), "connection closed");
            assert!(matches!(unconfirmed(e.clone()), BrokerError::Unconfirmed(_)), "{kind:?} after sending");
            assert!(matches!(unavailable(e), BrokerError::Unavailable(_)), "{kind:?} on a read");
        }
        // Error replies: Redis did not run the script.
        for reply in ["LOADING Redis is loading", "BUSY Redis is busy running a script", "OOM command not allowed"] {
            let e = Error::new(ErrorKind::Unknown, reply);
            assert!(matches!(unconfirmed(e), BrokerError::Unavailable(_)), "{reply}");
        }
        let e = Error::new(ErrorKind::Unknown, "Failed to route command.");
        assert!(matches!(unconfirmed(e), BrokerError::Unavailable(_)), "no connection to send it on: not sent");
        let e = Error::new(ErrorKind::Unknown, "Too many failed write attempts.");
        assert!(matches!(unconfirmed(e.clone()), BrokerError::Unconfirmed(_)), "its connection died under it");
        assert!(matches!(unavailable(e), BrokerError::Unavailable(_)), "a read on a dying connection");
        let e = Error::new(ErrorKind::Unknown, "WRONGTYPE Operation against a key holding the wrong kind of value");
        assert!(matches!(unconfirmed(e), BrokerError::Rejected(_)));
    }
}
