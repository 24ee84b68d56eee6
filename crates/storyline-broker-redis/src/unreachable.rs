//! Which Redis servers the pool has lost and not yet got back, so that "not connected" can say where.
//!
//! fred reports a lost connection with its server (`on_error`) and every connection it makes (`on_reconnect`),
//! but while it reconnects a client answers nothing at all, and on a cluster it reconnects every node together:
//! one primary that refuses connections keeps the whole client down. Readiness then fails with
//! `not connected`, and this set names the servers to look at. It is a diagnostic only: no decision depends on
//! it. Bounded by the number of servers in the deployment.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
};

use fred::prelude::*;

#[derive(Debug, Default, Clone)]
/// `(pooled client, server)` pairs: a server is lost while any pooled client has lost it.
pub(crate) struct Unreachable(Arc<Mutex<BTreeSet<(usize, String)>>>);

impl Unreachable {
    /// Follows pooled client `index`'s connection losses and reconnections. The listeners end with the client.
    pub(crate) fn watch(&self, client: &Client, index: usize) {
        let lost = self.clone();
        let _lost = client.on_error(move |(_, server)| {
            if let Some(server) = server {
                lost.set().insert((index, server.to_string()));
            }
            async { Ok(()) }
        });
        let back = self.clone();
        let _back = client.on_reconnect(move |server| {
            back.set().remove(&(index, server.to_string()));
            async { Ok(()) }
        });
    }

    /// `" (lost: a, b)"`, or nothing when no server is known to be lost.
    pub(crate) fn describe(&self) -> String {
        let servers: BTreeSet<String> = self.set().iter().map(|(_, server)| server.clone()).collect();
        if servers.is_empty() {
            String::new()
        } else {
            format!(" (lost: {})", servers.into_iter().collect::<Vec<_>>().join(", "))
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<(usize, String)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
