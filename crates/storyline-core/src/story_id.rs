//! Story identifiers: `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`.

use std::{fmt, str::FromStr, sync::Arc};

/// Maximum length of a story id in bytes (all allowed characters are ASCII).
pub const MAX_STORY_ID_LEN: usize = 128;

/// A story id that is known to be valid. Cheap to clone.
///
/// The allowed alphabet contains no whitespace, no `/`, no `{`/`}` and no control characters, so a `StoryId` is
/// safe in URLs, SSE fields, log lines and Redis hash-tagged keys without escaping.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoryId(Arc<str>);

/// Why a string is not a story id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoryIdError {
    #[error("story id is empty")]
    Empty,
    #[error("story id is longer than {max} characters")]
    TooLong { max: usize },
    #[error("story id must start with a letter or digit")]
    BadFirstCharacter,
    #[error("story id may contain only letters, digits, '_', '.', ':' and '-'")]
    BadCharacter,
}

impl StoryId {
    /// Parses a story id.
    pub fn parse(s: &str) -> Result<Self, StoryIdError> {
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(StoryIdError::Empty);
        };
        if bytes.len() > MAX_STORY_ID_LEN {
            return Err(StoryIdError::TooLong { max: MAX_STORY_ID_LEN });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(StoryIdError::BadFirstCharacter);
        }
        if !bytes[1..].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')) {
            return Err(StoryIdError::BadCharacter);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:` (`public:dragon-tale` -> `public`), or the whole id.
    /// Used to group stories in bounded metric labels and retention policies.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(ns, _)| ns)
    }
}

impl FromStr for StoryId {
    type Err = StoryIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoryId({})", &self.0)
    }
}

impl AsRef<str> for StoryId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for StoryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for StoryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["x", "0", "public:dragon-tale", "a.b_c-d:e", &"a".repeat(128)] {
            assert!(StoryId::parse(ok).is_ok(), "{ok:?} should parse");
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        let cases: &[(&str, StoryIdError)] = &[
            ("", StoryIdError::Empty),
            (&"a".repeat(129), StoryIdError::TooLong { max: 128 }),
            ("-x", StoryIdError::BadFirstCharacter),
            (":x", StoryIdError::BadFirstCharacter),
            ("a b", StoryIdError::BadCharacter),
            ("a/b", StoryIdError::BadCharacter),
            ("a\nb", StoryIdError::BadCharacter),
            ("a{b}", StoryIdError::BadCharacter),
            ("..", StoryIdError::BadFirstCharacter),
            ("é", StoryIdError::BadFirstCharacter),
            ("aé", StoryIdError::BadCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(StoryId::parse(input).as_ref().err(), Some(want), "case {input:?}");
        }
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(StoryId::parse("public:dragon:tale").map(|s| s.namespace().to_owned()), Ok("public".into()));
        assert_eq!(StoryId::parse("plain").map(|s| s.namespace().to_owned()), Ok("plain".into()));
    }

    #[test]
    fn deserializing_goes_through_the_parser() {
        assert!(serde_json::from_str::<StoryId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<StoryId>("\"not ok\"").is_err());
    }
}
