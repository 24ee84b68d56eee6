//! storyline's HTTP surface: POST ingress, SSE streams with `Last-Event-ID` resume, history pages, health,
//! metrics and the OpenAPI document, on actix-web.
//!
//! Layout:
//! - [`startup`]: the one function that builds the running server, used by `main` and by every integration test.
//! - [`config`]: what the surface needs to know ([`ServerConfig`]); the binary fills it from files and env.
//! - `routes/`: one module per endpoint. `error`: the only `ResponseError`, rendered as RFC 9457 problem+json.
//! - [`auth`], [`jwks`]: JWT verification (an HS256 secret; public keys from a JWKS file or URL), scopes and the
//!   typed [`auth::Principal`] that handlers take as an argument.
//! - `revocation`: this instance's snapshot of the revocation list (by `jti` or `sub`), checked on every request and
//!   by every open stream, refreshed from the broker's store every heartbeat; `routes/admin.rs` manages it.
//! - [`openapi`]: the OpenAPI document generated from the handlers; [`asyncapi`]: the AsyncAPI document of the
//!   streams, generated from the same types and from the OpenAPI document.
//!
//! This crate depends on the broker *port* (`Arc<dyn Broker>`), never on an adapter.

pub mod asyncapi;
pub mod audit;
pub mod auth;
pub mod config;
mod error;
pub mod input;
pub mod jwks;
pub mod limits;
mod metered;
mod meters;
pub mod network;
pub mod openapi;
mod revocation;
mod routes;
mod slow;
pub mod startup;
pub mod telemetry;
pub mod tls;

pub use config::{
    MAX_STORIES_PER_STREAM, MetricsToken, RESERVED_FILE_DESCRIPTORS, ServerConfig, streams_allowed_by_open_files_limit,
};
pub use error::{ApiError, Problem};
pub use meters::{SpanDrop, trace_spans_dropped};
pub use startup::{Application, Shutdown};
