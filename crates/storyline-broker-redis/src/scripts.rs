//! Loading the adapter's Lua scripts into Redis ahead of use.
//!
//! Every script runs with `EVALSHA`, falling back to `SCRIPT LOAD` on `NOSCRIPT` (fred's `evalsha_with_reload`).
//! That fallback is the last resort, not the plan: a Redis that restarted (or a fresh primary after a failover)
//! has an empty script cache, and the first command after the restart would pay a `NOSCRIPT` round trip plus a
//! `SCRIPT LOAD` at the worst moment, while the connections are still coming back (and with
//! `max_command_attempts = 1` a stall there fails the request). So the scripts are loaded:
//!
//! - at connect, on every pooled connection (on a cluster: on every primary), before the broker is handed out;
//! - on every reconnection of any pooled connection, by a listener that runs as soon as fred reports the
//!   connection up (on a cluster: into every primary, so a node that restarted gets them whichever connection
//!   noticed first).
//!
//! `SCRIPT LOAD` is idempotent and cheap (the scripts are a few hundred bytes), so loading once per connection
//! rather than once per server costs nothing worth saving. This module never runs a script.

use std::sync::Weak;

use fred::prelude::*;

/// Every script the adapter runs, as Lua source.
pub(crate) const ALL: [&str; 6] = [
    crate::APPEND_LUA,
    crate::BOUNDS_LUA,
    crate::READ_LUA,
    crate::limits::GCRA_LUA,
    crate::revocations::REVOKE_LUA,
    crate::revocations::SNAPSHOT_LUA,
];

/// Loads every script through `client`: on a cluster into every primary, else into the one server.
pub(crate) async fn load_all(client: &Client) -> Result<(), fred::error::Error> {
    for source in ALL {
        let _sha: String = if client.is_clustered() {
            client.script_load_cluster(source).await?
        } else {
            client.script_load(source).await?
        };
    }
    Ok(())
}

/// Reloads the scripts whenever pooled connection `index` reconnects. The listener holds the broker only weakly
/// (a strong reference from a task the client owns would keep both alive forever) and ends with the client.
pub(crate) fn reload_on_reconnect(client: &Client, index: usize, broker: Weak<crate::Inner>) {
    let _listener = client.on_reconnect(move |server| {
        let broker = broker.clone();
        async move {
            let Some(inner) = broker.upgrade() else { return Ok(()) };
            let Some(client) = inner.pool.clients().get(index).cloned() else { return Ok(()) };
            drop(inner);
            // The event comes while fred is still putting the connection (on a cluster: all of them) in place, and
            // a command aimed at one node then can land elsewhere: wait until the client is connected, then load
            // through the normal routes (on a cluster: into every primary).
            let _ = client.wait_for_connect().await;
            match load_all(&client).await {
                Ok(()) => tracing::debug!(target: "storyline::broker", server = %server, "Lua scripts loaded"),
                // Not fatal: the next script call reloads on NOSCRIPT.
                Err(error) => tracing::warn!(
                    target: "storyline::broker", server = %server, error = %error,
                    "loading the Lua scripts after a reconnect failed; they load on first use instead"
                ),
            }
            Ok(())
        }
    });
}
