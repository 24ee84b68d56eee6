//! Event types: `^[a-z][a-z0-9_.-]{0,63}$`, minus the names storyline reserves for its own frames.

use std::{fmt, sync::Arc};

pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// The event name of the frame telling a resuming reader that events it missed were trimmed.
pub const GAP_EVENT: &str = "gap";
/// The event name of the last frame of a stream whose token expired.
pub const TOKEN_EXPIRED_EVENT: &str = "token-expired";
/// The event name of the last frame of a stream whose token was revoked (see [`crate::Revocations`]).
pub const TOKEN_REVOKED_EVENT: &str = "token-revoked";
/// Event names storyline sends itself on a stream; writers may not use them.
const RESERVED: &[&str] = &[GAP_EVENT, TOKEN_EXPIRED_EVENT, TOKEN_REVOKED_EVENT];
/// Prefix reserved for storyline's own future frames.
const RESERVED_PREFIX: &str = "storyline.";

/// A writer-chosen event type, valid as an SSE `event:` field.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTypeError {
    #[error("event type is empty")]
    Empty,
    #[error("event type is longer than {max} characters")]
    TooLong { max: usize },
    #[error("event type must start with a lowercase letter")]
    BadFirstCharacter,
    #[error("event type may contain only lowercase letters, digits, '_', '.' and '-'")]
    BadCharacter,
    #[error("event type {0:?} is reserved by storyline")]
    Reserved(String),
}

impl EventType {
    /// Parses a writer-supplied event type, rejecting reserved names.
    pub fn parse(s: &str) -> Result<Self, EventTypeError> {
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(EventTypeError::Empty);
        };
        if bytes.len() > MAX_EVENT_TYPE_LEN {
            return Err(EventTypeError::TooLong { max: MAX_EVENT_TYPE_LEN });
        }
        if !first.is_ascii_lowercase() {
            return Err(EventTypeError::BadFirstCharacter);
        }
        if !bytes[1..].iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(EventTypeError::BadCharacter);
        }
        if RESERVED.contains(&s) || s.starts_with(RESERVED_PREFIX) {
            return Err(EventTypeError::Reserved(s.to_owned()));
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({})", &self.0)
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_types() {
        for ok in ["chapter", "a", "scene.added", "x_1-2.3", &format!("a{}", "b".repeat(63))] {
            assert!(EventType::parse(ok).is_ok(), "{ok:?} should parse");
        }
    }

    #[test]
    fn rejects_invalid_and_reserved_types() {
        let cases: &[(&str, EventTypeError)] = &[
            ("", EventTypeError::Empty),
            (&"a".repeat(65), EventTypeError::TooLong { max: 64 }),
            ("Chapter", EventTypeError::BadFirstCharacter),
            ("1st", EventTypeError::BadFirstCharacter),
            ("a b", EventTypeError::BadCharacter),
            ("a\r\nid: 9", EventTypeError::BadCharacter),
            ("aB", EventTypeError::BadCharacter),
            ("a:b", EventTypeError::BadCharacter),
            ("gap", EventTypeError::Reserved("gap".into())),
            ("token-expired", EventTypeError::Reserved("token-expired".into())),
            ("storyline.ping", EventTypeError::Reserved("storyline.ping".into())),
        ];
        for (input, want) in cases {
            assert_eq!(EventType::parse(input).as_ref().err(), Some(want), "case {input:?}");
        }
    }

    #[test]
    fn names_that_merely_resemble_reserved_ones_are_allowed() {
        for ok in ["gaps", "storyline", "storyline-x", "token-expired2"] {
            assert!(EventType::parse(ok).is_ok(), "{ok:?} should parse");
        }
    }
}
