//! `storyline-bench`: a load generator and reporter for SSE fan-out servers — storyline, and through URL and
//! body templates also nchan, pushpin and the like.
//!
//! A run opens N subscriber streams over C stories, publishes at a paced rate, and reports what arrived:
//! expected vs delivered, lost and duplicated events, end-to-end latency percentiles, and (given the server's
//! pid) its CPU time and memory per stream.
//!
//! Layout:
//! - [`config`]: the parameters and their validated [`config::Plan`]; [`template`]: URL/header/body templates,
//!   loopback-only targets.
//! - [`subscriber`]: raw-socket streams with a hand-written GET ([`http`]) and the SSE parser of
//!   `storyline-client` (re-exported with the payload marks by [`sse`]).
//! - [`publisher`]: absolute-deadline pacing over a small keep-alive pool.
//! - [`stats`]: lost/duplicate accounting and histograms; [`worker`]: splitting streams over processes.
//! - [`run`]: the phases; [`report`] and [`plot`]: the output; [`system`]: `/proc` readings.
//! - [`soak`]: the soak test's readers, log follower, resource sampler and verdict (`soak-readers`).
//!
//! Load goes to loopback addresses only; every loop is bounded by a count, a deadline or a timeout.

pub mod config;
pub mod http;
pub mod plot;
pub mod publisher;
pub mod report;
pub mod run;
pub mod soak;
pub mod sse;
pub mod stats;
pub mod subscriber;
pub mod system;
pub mod template;
pub mod worker;

pub use config::{BenchConfig, Scenario};
pub use report::Report;
pub use run::run;
