//! Event ids in the Redis Streams form `<ms>-<seq>`, strictly increasing per story in every broker.

use std::{fmt, str::FromStr};

/// The position of an event in its story's log. `EventId::ZERO` (`0`, `0-0`) is "before the first event".
///
/// Ordering is numeric on `(ms, seq)`, which is the order of the log. Both brokers assign ids the way Redis does:
/// `ms` is the append time in milliseconds since the epoch, never going backwards within a story, and `seq`
/// counts appends within the same millisecond.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    #[error("event id is empty")]
    Empty,
    #[error("event id must have the form <ms>-<seq> (decimal integers), or be 0")]
    Malformed,
}

impl EventId {
    pub const ZERO: Self = Self { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Parses `<ms>-<seq>` or a bare `0` (meaning [`EventId::ZERO`]).
    ///
    /// Whitespace, signs, and a bare number other than `0` are rejected: a resume id is something the server
    /// gave out, never something to guess at.
    pub fn parse(s: &str) -> Result<Self, EventIdError> {
        if s.is_empty() {
            return Err(EventIdError::Empty);
        }
        if s == "0" {
            return Ok(Self::ZERO);
        }
        let (ms, seq) = s.split_once('-').ok_or(EventIdError::Malformed)?;
        Ok(Self { ms: parse_decimal(ms)?, seq: parse_decimal(seq)? })
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The greatest id below `self` (`ZERO` stays `ZERO`): what a story's first append records as trimmed when
    /// the story may have had a forgotten past (see the broker contract, guarantee 8).
    pub fn just_before(self) -> Self {
        match (self.ms, self.seq) {
            (0, 0) => Self::ZERO,
            (ms, 0) => Self { ms: ms - 1, seq: u64::MAX },
            (ms, seq) => Self { ms, seq: seq - 1 },
        }
    }

    /// The next id a broker would assign at time `now_ms` after `self`, the Redis way.
    pub fn next_after(self, now_ms: u64) -> Option<Self> {
        if now_ms > self.ms {
            Some(Self { ms: now_ms, seq: 0 })
        } else {
            self.seq.checked_add(1).map(|seq| Self { ms: self.ms, seq })
        }
    }
}

fn parse_decimal(s: &str) -> Result<u64, EventIdError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EventIdError::Malformed);
    }
    s.parse().map_err(|_| EventIdError::Malformed)
}

impl FromStr for EventId {
    type Err = EventIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stream_ids_and_zero() {
        assert_eq!(EventId::parse("0"), Ok(EventId::ZERO));
        assert_eq!(EventId::parse("0-0"), Ok(EventId::ZERO));
        assert_eq!(EventId::parse("1700000000000-3"), Ok(EventId::new(1_700_000_000_000, 3)));
        assert_eq!(EventId::parse("18446744073709551615-18446744073709551615"), Ok(EventId::new(u64::MAX, u64::MAX)));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "-",
            "a-1",
            "1-b",
            " 1-1",
            "1-1 ",
            "+1-1",
            "1--1",
            "1-1-1",
            "18446744073709551616-0",
            "1\n-1",
        ] {
            assert!(EventId::parse(bad).is_err(), "case {bad:?} should be rejected");
        }
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(EventId::parse("9-0").ok() < EventId::parse("10-0").ok());
        assert!(EventId::new(5, 9) < EventId::new(5, 10));
    }

    #[test]
    fn next_after_never_goes_backwards() {
        let last = EventId::new(100, 4);
        assert_eq!(last.next_after(101), Some(EventId::new(101, 0)));
        assert_eq!(last.next_after(100), Some(EventId::new(100, 5)));
        assert_eq!(last.next_after(50), Some(EventId::new(100, 5)), "clock went backwards");
        assert_eq!(EventId::new(1, u64::MAX).next_after(1), None);
    }

    #[test]
    fn just_before_is_the_greatest_smaller_id() {
        assert_eq!(EventId::new(100, 4).just_before(), EventId::new(100, 3));
        assert_eq!(EventId::new(100, 0).just_before(), EventId::new(99, u64::MAX));
        assert_eq!(EventId::ZERO.just_before(), EventId::ZERO);
        let id = EventId::new(100, 0);
        assert_eq!(EventId::parse(&id.just_before().to_string()), Ok(id.just_before()), "round-trips as text");
    }

    #[test]
    fn display_round_trips() {
        let id = EventId::new(42, 7);
        assert_eq!(EventId::parse(&id.to_string()), Ok(id));
    }
}
