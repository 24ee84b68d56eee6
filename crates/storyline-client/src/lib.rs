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
//! HTTP is reqwest without TLS features: plain `http://` (a TLS-terminating proxy, or a reqwest TLS feature
//! enabled elsewhere in the build, for `https://`).

pub mod client;
pub mod error;
pub mod event;
pub mod retry;
pub mod sse;
pub mod stream;
pub mod token;

pub use client::{Client, ClientBuilder};
pub use error::{BoxError, Error, Problem};
pub use event::{Envelope, Event, Gap, HistoryPage, HistoryQuery, Receipt};
pub use retry::RetryPolicy;
pub use storyline_core::{EventId, EventType, IdempotencyKey, StoryId};
pub use stream::{Connection, Item, StreamFrame, SubscribeOptions, Subscription, SubscriptionStats};
pub use token::TokenSource;
