//! A Rust client for storyline, for agents and services: publish events, follow a story, read its history.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use storyline_client::{Client, Event, EventType, Item, StoryId, SubscribeOptions};
//!
//! let client = Client::builder("http://127.0.0.1:8080").token("<jwt>").build()?;
//! let story = StoryId::parse("demo")?;
//! let receipt = client.publish(&story, &Event::new(EventType::parse("note")?, "hello")).await?;
//! let mut events = client.subscribe(&story, SubscribeOptions { last_event_id: Some(storyline_client::EventId::ZERO) });
//! while let Some(Item::Event(event)) = events.next().await.transpose()? {
//!     if event.id == receipt.id { break; }
//! }
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`client`]: [`Client`], its builder, [`Client::publish`] (an `Idempotency-Key` on every event, reused on
//!   every retry) and [`Client::history`], retried per a [`RetryPolicy`] ([`retry`]: jittered backoff that honours
//!   `Retry-After`).
//! - [`stream`]: [`Client::subscribe`], a [`futures::Stream`] that resumes across disconnects, token expiry
//!   and restarts with `Last-Event-ID`, and [`Client::open_stream`], one connection read as sent.
//! - [`sse`]: the Server-Sent Events parser (also `storyline-bench`'s); [`event`]: the wire types;
//!   [`token`]: fixed tokens and [`TokenSource`]s; [`error`]: one variant per problem type the server sends.
//!
//! `https://` and `http://` base URLs both work. TLS is rustls with the ring provider, configured by this crate
//! and handed to reqwest whole, so no process-wide crypto provider has to be installed (reqwest is built without
//! one: its default, aws-lc-rs, is a C build). Server certificates are verified against the system's roots (the
//! platform verifier); for a storyline behind a private CA, add that CA's certificate (PEM) to them:
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = std::fs::read("/etc/storyline/ca.pem")?;
//! let client = storyline_client::Client::builder("https://storyline.internal")
//!     .token("<jwt>")
//!     .add_root_certificates_pem(ca)
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! ALPN offers HTTP/2 first (storyline serves it over TLS, so every stream and request of a client shares one
//! connection), then HTTP/1.1. A certificate the client does not trust fails every call at once with
//! [`Error::Tls`], which is not retried. [`http_client_builder`] gives other programs a reqwest builder with the
//! same TLS (a plain `reqwest::Client::new()` in this build panics unless the process installed a provider).

pub mod client;
pub mod error;
pub mod event;
pub mod retry;
pub mod sse;
pub mod stream;
mod tls;
pub mod token;

pub use client::{Client, ClientBuilder};
pub use error::{BoxError, Error, Problem};
pub use event::{Envelope, Event, Gap, HistoryPage, HistoryQuery, Receipt};
pub use retry::RetryPolicy;
pub use storyline_core::{EventId, EventType, IdempotencyKey, StoryId};
pub use stream::{Connection, Item, StreamFrame, SubscribeOptions, Subscription, SubscriptionStats};
pub use tls::{http_client_builder, http1_client_builder, rustls_config_with_roots};
pub use token::TokenSource;
