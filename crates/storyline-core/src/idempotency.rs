//! Idempotency keys: 1..=128 visible ASCII characters (0x21..=0x7E).

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
