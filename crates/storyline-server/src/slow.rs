//! Slow-consumer disconnect.
//!
//! When a client stops reading, its socket stops draining and actix stops polling the response body, so the
//! stream cannot notice by itself. Each open stream therefore registers here with the raw fd of its connection
//! and a "last polled" time that its body refreshes whenever actix asks it for more (a healthy stream is polled
//! at least once per heartbeat). A sweeper on the same worker thread shuts down the socket of any stream that has
//! not been polled for the configured timeout; actix then drops the connection and the body.
//!
//! Why this is sound: registry, bodies and connections of a worker all live on that worker's thread, and a body
//! leaves the registry when it is dropped, which happens together with its connection. So while an entry exists,
//! its fd still belongs to its connection: the sweeper can never shut down an fd that was reused.
//!
//! Memory stays bounded meanwhile: a stalled subscriber is only a cursor into its story's shared window.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    os::fd::RawFd,
    rc::Rc,
    time::{Duration, Instant},
};

/// The raw fd of a connection, recorded by `on_connect`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnFd(pub(crate) RawFd);

struct Watched {
    fd: RawFd,
    last_poll: Rc<Cell<Instant>>,
}

thread_local! {
    static STREAMS: RefCell<HashMap<u64, Watched>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    static SWEEPER: Cell<bool> = const { Cell::new(false) };
}

/// Keeps a stream registered while alive; [`Watch::touch`] marks progress.
#[derive(Debug)]
pub(crate) struct Watch {
    id: u64,
    last_poll: Rc<Cell<Instant>>,
}

impl Watch {
    /// Registers a stream on this worker's sweeper (started on first use).
    pub(crate) fn register(fd: RawFd, timeout: Duration) -> Self {
        let id = NEXT_ID.with(|n| {
            let id = n.get();
            n.set(id.wrapping_add(1));
            id
        });
        let last_poll = Rc::new(Cell::new(Instant::now()));
        STREAMS.with(|s| s.borrow_mut().insert(id, Watched { fd, last_poll: Rc::clone(&last_poll) }));
        if !SWEEPER.with(|s| s.replace(true)) {
            actix_web::rt::spawn(sweep(timeout));
        }
        Self { id, last_poll }
    }

    pub(crate) fn touch(&self) {
        self.last_poll.set(Instant::now());
    }

    /// Whether the sweeper cut this stream's connection (it leaves the registry then).
    pub(crate) fn was_cut(&self) -> bool {
        STREAMS.with(|s| !s.borrow().contains_key(&self.id))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        STREAMS.with(|s| s.borrow_mut().remove(&self.id));
    }
}

/// Shuts down the sockets of streams that have not been polled for `timeout`, checking every quarter of it.
async fn sweep(timeout: Duration) {
    let mut interval = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
    loop {
        interval.tick().await;
        let now = Instant::now();
        let stalled: Vec<(u64, RawFd)> = STREAMS.with(|s| {
            s.borrow()
                .iter()
                .filter(|(_, w)| now.duration_since(w.last_poll.get()) > timeout)
                .map(|(id, w)| (*id, w.fd))
                .collect()
        });
        for (id, fd) in stalled {
            STREAMS.with(|s| s.borrow_mut().remove(&id));
            match nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both) {
                Ok(()) => {
                    // Counted as closed (reason slow_consumer) when the stream's body is dropped.
                    tracing::info!(timeout = ?timeout, "disconnected a slow consumer (socket not drained)");
                }
                Err(e) => tracing::debug!(error = %e, "slow consumer socket already gone"),
            }
        }
    }
}
