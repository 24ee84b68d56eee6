//! Key layout. Every key of a story carries the story id as its hash tag (`{<story>}`), so the stream, its
//! metadata and its idempotency keys live in one Redis Cluster slot. Story ids cannot contain `{` or `}`, so the
//! tag is always exactly the story id.

use storyline_core::{IdempotencyKey, StoryId};

const PREFIX: &str = "storyline:{";
const LOG_SUFFIX: &str = "}:log";

pub(crate) fn log(story: &StoryId) -> String {
    format!("{PREFIX}{story}{LOG_SUFFIX}")
}

pub(crate) fn meta(story: &StoryId) -> String {
    format!("{PREFIX}{story}}}:meta")
}

pub(crate) fn idempotency(story: &StoryId, key: &IdempotencyKey) -> String {
    format!("{PREFIX}{story}}}:idem:{}", key.as_str())
}

/// The story whose log this key is, if it is one of ours.
pub(crate) fn story_of_log(key: &str) -> Option<StoryId> {
    key.strip_prefix(PREFIX)?.strip_suffix(LOG_SUFFIX).and_then(|s| StoryId::parse(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_story_hash_tag_and_round_trip() {
        let story = StoryId::parse("public:dragon-tale").unwrap_or_else(|e| panic!("{e}"));
        let key = IdempotencyKey::parse("k-1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log(&story), "storyline:{public:dragon-tale}:log");
        assert_eq!(meta(&story), "storyline:{public:dragon-tale}:meta");
        assert_eq!(idempotency(&story, &key), "storyline:{public:dragon-tale}:idem:k-1");
        assert_eq!(story_of_log(&log(&story)), Some(story.clone()));
        assert_eq!(story_of_log("other:{x}:log"), None);
    }

    #[test]
    fn every_key_of_a_story_is_in_the_slot_of_its_id() {
        use fred::util::redis_keyslot;
        let story = StoryId::parse("public:dragon-tale").unwrap_or_else(|e| panic!("{e}"));
        let key = IdempotencyKey::parse("k-1").unwrap_or_else(|e| panic!("{e}"));
        let slot = redis_keyslot(story.as_str().as_bytes());
        for k in [log(&story), meta(&story), idempotency(&story, &key)] {
            assert_eq!(redis_keyslot(k.as_bytes()), slot, "{k} hashes by the story id alone");
        }
    }
}
