//! storyline's domain: the types every other crate speaks, and the broker port.
//!
//! This crate does no I/O and knows no runtime, web framework or Redis client. The dependency arrow in the
//! workspace always points here:
//!
//! - [`StoryId`], [`EventType`], [`EventId`], [`IdempotencyKey`]: newtypes whose only constructors parse, so a
//!   value that exists is valid (no CR/LF/NUL can reach an SSE frame or a Redis key through them).
//! - [`EventData`], [`NewEvent`], [`StoredEvent`], [`Envelope`]: what a writer sends, what a broker stores (the
//!   envelope plus metadata readers never see), and what readers receive.
//! - [`Broker`]: the port that the Redis and in-memory adapters implement; its docs are the contract.
//! - [`RateLimitStore`]: the optional port for rate limits shared by every instance (offered by the Redis broker).
//! - [`Revocations`]: the list of revoked tokens (by `jti` or `sub`, each until a time), shared by the instances
//!   that use one broker; [`MemoryRevocations`] is the in-process one.

mod broker;
mod envelope;
mod event_id;
mod event_type;
mod idempotency;
mod rate_limit;
mod revocation;
mod story_id;

pub use broker::{
    Appended, Broker, BrokerError, DEFAULT_PAGE_LIMIT, EventStream, Gap, LogBounds, LogRetention, MAX_PAGE_LIMIT, Page,
    PageLimit, Retention, TailItem,
};
pub use envelope::{Envelope, EventData, EventDataError, MAX_DATA_DEPTH, Metadata, NewEvent, Receipt, StoredEvent};
pub use event_id::{EventId, EventIdError};
pub use event_type::{
    EventType, EventTypeError, GAP_EVENT, MAX_EVENT_TYPE_LEN, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT,
};
pub use idempotency::{Fingerprint, Idempotency, IdempotencyKey, IdempotencyKeyError, MAX_IDEMPOTENCY_KEY_LEN};
pub use rate_limit::{RateDecision, RateLimitStore, RateSubject};
pub use revocation::{
    MAX_REVOCATION_ID_LEN, MemoryRevocations, Revocation, RevocationError, RevocationId, RevocationList,
    RevocationTarget, Revocations,
};
pub use story_id::{MAX_STORY_ID_LEN, StoryId, StoryIdError};
