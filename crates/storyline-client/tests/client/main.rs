//! storyline-client against the real server (port 0, loopback), on both brokers. One binary, a module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod errors;
mod history;
mod publish;
mod revocation;
mod subscribe;
mod tls;
