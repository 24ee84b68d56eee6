//! Fault injection (issue #6): real `storyline serve` processes on one real `redis-server`, a fault injected
//! while publishers and subscribers run, and an exact count afterwards. Every test prints one `tally` line:
//! what it injected, and acknowledged / delivered / duplicates on the wire / missing / unexpected, then asserts
//! that every acknowledged event reached every subscriber of its story, none twice on one connection, and
//! that the broker holds exactly the acknowledged events, one per idempotency key.
//!
//! `cargo test -p storyline --test faults -- --nocapture` shows the tallies of a passing run.
//!
//! - [`harness`]: the reusable part (processes, faults, publishers, subscribers, the tally).
//! - [`redis_restart`]: Redis stopped and started again under load (fault 1).
//! - [`instance_kill`]: `kill -9` of one of two instances under load (fault 2).
//! - [`rolling_deploy`]: SIGTERM of each of two instances in turn, streams drained over the window (fault 3).
//! - [`slow_readers`]: a reader that stops reading while its story carries 94 MiB (fault 4).
//! - [`idempotency`]: retries with one `Idempotency-Key` across instances, lost answers, the window.
//!
//! The reconnect storm (fault 5) is `tests/storm.rs`, a binary of its own: its 5,000 readers need lean state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

#[path = "../common/mod.rs"]
mod common;

mod harness;
mod idempotency;
mod instance_kill;
mod redis_restart;
mod rolling_deploy;
mod slow_readers;
