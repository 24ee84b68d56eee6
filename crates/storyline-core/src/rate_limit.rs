//! The global rate-limit port: rate limits whose counts are shared by every instance of the service.
//!
//! An instance's own limiter (the server's governor GCRA) sees only the requests that reach that instance, so
//! with N instances a client gets N times its quota. A broker whose store is shared by all instances (Redis) can
//! offer a [`RateLimitStore`] through [`Broker::rate_limits`](crate::Broker::rate_limits); the server then asks it
//! first and falls back to its own limiter when the store cannot answer. The in-memory broker offers none.
//!
//! The contract every store owes:
//! - **GCRA with a burst of one second's worth**: a subject limited to `r` per second may make `r` requests at
//!   once, then one every `1/r` seconds; the same semantics as the per-instance limiter, so falling back changes
//!   how many instances share a budget, not what the budget is.
//! - **One decision per call, atomic**: concurrent calls from any number of instances never admit more than the
//!   rate allows.
//! - **A refusal consumes nothing** and says how long until the next request would be admitted.
//! - **An error means "no decision"** (the store is unreachable or too slow): the caller decides what to do
//!   (the server falls back to its local limiter), never "refused".
//!
//! This module only states the port; it does no I/O.

use std::{fmt, num::NonZeroU32, time::Duration};

use crate::{BrokerError, StoryId};

/// What a rate applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSubject<'a> {
    /// Publishes by one principal (`sub`) within its class (the server's tier name): a principal whose class
    /// changes has a separate budget per class, as with the per-instance limiter.
    Publisher { class: &'a str, sub: &'a str },
    /// Publishes to one story, from every writer together.
    Story(&'a StoryId),
}

/// A store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Over the rate: nothing was consumed; the next request is admitted after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// A rate-limit store shared by every instance. See the module docs for the contract.
#[async_trait::async_trait]
pub trait RateLimitStore: Send + Sync + fmt::Debug + 'static {
    /// Takes one request from `subject`'s budget of `per_second` (burst: `per_second`), or says when to retry.
    async fn check(&self, subject: RateSubject<'_>, per_second: NonZeroU32) -> Result<RateDecision, BrokerError>;
}
