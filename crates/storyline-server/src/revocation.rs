//! Per-token revocation at the HTTP edge: this instance's snapshot of the revocation list, checked in memory on
//! every authenticated request and by every open stream, and kept fresh from the shared store.
//!
//! - **Where the list lives.** In the broker's store when it keeps one ([`storyline_core::Broker::revocations`]:
//!   Redis, shared by every instance on it; the memory broker, shared by the servers of one process); otherwise
//!   in this process only.
//! - **How fresh it is.** A revoke made here applies here at once (the entry goes into the local snapshot as soon
//!   as the store took it, and open streams are told). Every heartbeat period, each instance reads the store's
//!   version (one `GET` on Redis) and, only when it changed, the whole list: a revoke made on another instance
//!   applies here within one heartbeat, requests and open streams alike.
//! - **Cost.** A request pays one atomic load while the list is empty, and a read lock and two hash look-ups
//!   otherwise; an open stream checks the same way at each heartbeat and whenever the list changes, and holds
//!   one pointer to its token's `sub` and `jti`.
//! - **Failure.** If the store cannot be read, the last snapshot stays in force (its entries still expire on
//!   time) and the refresh is retried next period; a revoke answers 503 and changes nothing here.
//!
//! Never: I/O on the request path, or a timer per stream.

use std::{
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use storyline_core::{Broker, BrokerError, MemoryRevocations, Revocation, RevocationList, Revocations};
use tokio::sync::Notify;

use crate::auth::Principal;

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What an open stream keeps to be checked against the list: its token's `sub` and `jti`.
#[derive(Debug)]
pub(crate) struct Holder {
    sub: String,
    jti: Option<String>,
}

impl Holder {
    /// `None` for a guest without a token: nothing to revoke.
    pub(crate) fn of(principal: &Principal) -> Option<Arc<Self>> {
        (!principal.anonymous).then(|| Arc::new(Self { sub: principal.sub.clone(), jti: principal.jti.clone() }))
    }
}

/// The instance's view of the revocation list.
#[derive(Debug)]
pub(crate) struct RevocationGuard {
    store: Arc<dyn Revocations>,
    /// Whether `store` is the broker's (shared) or this process's own.
    shared: bool,
    snapshot: RwLock<Arc<RevocationList>>,
    /// `false` while the snapshot holds no entry: the hot paths skip the lock.
    any: AtomicBool,
    /// Wakes the stream signal task when the snapshot changed, so open streams check at once.
    changed: Notify,
    /// The last refresh failed (its warning is logged once per outage).
    failing: AtomicBool,
}

impl RevocationGuard {
    /// The broker's list if it keeps one, else a list of this process.
    pub(crate) fn new(broker: &dyn Broker) -> Self {
        let (store, shared) = match broker.revocations() {
            Some(store) => (store, true),
            None => (Arc::new(MemoryRevocations::new()) as Arc<dyn Revocations>, false),
        };
        Self {
            store,
            shared,
            snapshot: RwLock::default(),
            any: AtomicBool::new(false),
            changed: Notify::new(),
            failing: AtomicBool::new(false),
        }
    }

    fn current(&self) -> Arc<RevocationList> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, list: RevocationList) {
        self.any.store(!list.is_empty(), Ordering::Release);
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
        // A stored permit if the signal task is busy: the change is never missed.
        self.changed.notify_one();
    }

    /// The entry revoking this principal's token now, if any. Guests have no token to revoke.
    pub(crate) fn revoking(&self, principal: &Principal) -> Option<Revocation> {
        if principal.anonymous || !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.current().revoking(&principal.sub, principal.jti.as_deref(), now_secs())
    }

    /// Whether an open stream's token is revoked now.
    pub(crate) fn holds(&self, holder: &Holder) -> Option<Revocation> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.current().revoking(&holder.sub, holder.jti.as_deref(), now_secs())
    }

    /// Stores `entry` and applies it here at once. The local snapshot keeps its old version, so the next refresh
    /// still fetches what other instances revoked meanwhile.
    pub(crate) async fn revoke(&self, entry: Revocation) -> Result<(), BrokerError> {
        let now = now_secs();
        self.store.revoke(entry.clone(), now).await?;
        let mut list = RevocationList::clone(&self.current());
        list.prune(now);
        list.insert(entry);
        self.replace(list);
        Ok(())
    }

    /// The entries in force, read from the store (not the snapshot: what every instance will apply).
    pub(crate) async fn list(&self) -> Result<Vec<Revocation>, BrokerError> {
        let now = now_secs();
        Ok(self.store.snapshot(now).await?.entries(now))
    }

    /// Reads the store's version and, if it moved, the list. Expired entries are dropped from the snapshot here
    /// too, so that an emptied list costs the hot paths nothing again.
    async fn refresh(&self) -> Result<(), BrokerError> {
        let now = now_secs();
        let held = self.current();
        if self.store.version().await? == held.version {
            if held.entries(now).len() < held.len() {
                let mut list = RevocationList::clone(&held);
                list.prune(now);
                self.any.store(!list.is_empty(), Ordering::Release);
                *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
            }
            return Ok(());
        }
        let fresh = self.store.snapshot(now).await?;
        if fresh != *held {
            self.replace(fresh);
        }
        Ok(())
    }

    /// Resolves when the snapshot changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Refreshes the snapshot every `period` (the heartbeat) until `stop` resolves. Only a shared store can change
    /// behind this instance's back; each attempt is bounded by `timeout`.
    pub(crate) fn spawn_refresher(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        period: Duration,
        timeout: Duration,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        if !self.shared {
            return;
        }
        let guard = Arc::clone(self);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = interval.tick() => {}
                }
                let outcome = match tokio::time::timeout(timeout, guard.refresh()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(BrokerError::Unavailable(format!("no answer within {timeout:?}"))),
                };
                match outcome {
                    Ok(()) => {
                        if guard.failing.swap(false, Ordering::AcqRel) {
                            tracing::info!("revocation list refreshed again");
                        }
                    }
                    Err(e) => {
                        if !guard.failing.swap(true, Ordering::AcqRel) {
                            tracing::warn!(error = %e, "cannot refresh the revocation list; the last one read stays in force");
                        }
                    }
                }
            }
        });
    }
}
