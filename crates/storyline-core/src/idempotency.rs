//! Idempotency keys (1..=128 visible ASCII characters, 0x21..=0x7E) and the request fingerprint remembered with
//! them, so that a key reused for a different request is told apart from a retry (IETF httpapi
//! Idempotency-Key draft: the same key with another payload is refused, never answered with the first receipt).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::{EventData, EventType, NewEvent};

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A writer-chosen key that makes a retried append safe: within the idempotency window, the same key on the same
/// story yields the first append's receipt and appends nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    #[error("Idempotency-Key must be 1 to {max} visible ASCII characters")]
    Invalid { max: usize },
}

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, IdempotencyKeyError> {
        let ok = !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        if ok { Ok(Self(s.to_owned())) } else { Err(IdempotencyKeyError::Invalid { max: MAX_IDEMPOTENCY_KEY_LEN }) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.0)
    }
}

/// A stable digest of what an append asks for: SHA-256 over the event type and the event data as stored (the
/// canonical one-line JSON text), as 64 lowercase hex digits. What the server adds itself (author, accept time,
/// trace context) is not part of it: a retry differs there and is still the same request. The story is not part
/// of it either, because a key is already scoped to one story.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

/// Bumped if the digested form ever changes, so records of one form are never compared with another's.
const FINGERPRINT_FORM: &[u8] = b"storyline-append-v1\n";

impl Fingerprint {
    pub fn of(event_type: &EventType, data: &EventData) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_FORM);
        hasher.update(event_type.as_str().as_bytes());
        // An event type has no line break, so this separator cannot be confused with either part.
        hasher.update(b"\n");
        hasher.update(data.as_str().as_bytes());
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(hex)
    }

    /// 64 lowercase hex digits (no spaces: safe in a space-separated record).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

/// What a broker needs to make an append idempotent: the writer's key and the fingerprint of the request made
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
}

impl Idempotency {
    /// `key` for appending `event`: the fingerprint is taken from the event's type and data.
    pub fn for_event(key: IdempotencyKey, event: &NewEvent) -> Self {
        Self { fingerprint: Fingerprint::of(&event.event_type, &event.data), key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(ty: &str, data: &str) -> Fingerprint {
        let ty = EventType::parse(ty).unwrap_or_else(|e| panic!("{e}"));
        Fingerprint::of(&ty, &EventData::from_json_text(data).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn a_fingerprint_is_stable_hex_and_tells_type_and_data_apart() {
        let a = fingerprint("chapter", r#"{"n":1}"#);
        assert_eq!(a, fingerprint("chapter", r#"{"n":1}"#), "same request, same fingerprint");
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|b| HEX.contains(&b)), "{a:?}");
        assert_ne!(a, fingerprint("chapter", r#"{"n":2}"#), "other data");
        assert_ne!(a, fingerprint("retitled", r#"{"n":1}"#), "other type");
        assert_eq!(
            fingerprint("chapter", "{\n\"n\":1}"),
            fingerprint("chapter", "{ \"n\":1}"),
            "data as stored: a line break between tokens is stored as a space"
        );
    }

    #[test]
    fn accepts_visible_ascii_up_to_128() {
        for ok in ["a", "retry-1", "~!@#$%^&*()", &"k".repeat(128)] {
            assert!(IdempotencyKey::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_empty_long_spaces_and_controls() {
        for bad in ["", " ", "a b", "a\tb", "a\r\n", "é", &"k".repeat(129)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
