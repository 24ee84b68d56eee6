//! The HTTP contract suite: one test per rule of the v1 contract, each body run against BOTH brokers (the
//! in-memory one and Redis Streams on a throwaway `redis-server`), through the real server on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod auth;
mod garbage;
mod global_limits;
mod history;
mod jwks;
mod limits;
mod metrics_access;
mod operations;
mod publish;
mod reader;
mod revocation;
mod stream;
mod streams;
mod tls;
