//! The `{story}` path segment: `storyline_server::input::story_id`, the parser every story route calls.
//!
//! A `StoryId` that exists must be safe in URLs, SSE fields, log lines and Redis hash-tagged keys without
//! escaping (docs on `StoryId`). So for every UTF-8 input: never panic; on success the id is the input verbatim,
//! 1..=MAX_STORY_ID_LEN bytes of the documented alphabet (so no whitespace, control characters, `/`, `{`, `}`),
//! and serde deserialization agrees with the parser; on failure the answer is 400.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storyline_core::{MAX_STORY_ID_LEN, StoryId};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let parsed = storyline_server::input::story_id(raw);

    // Deserializing (how ids arrive in JSON) goes through the same parser.
    let json = serde_json::to_string(raw).expect("a str always serializes");
    assert_eq!(serde_json::from_str::<StoryId>(&json).is_ok(), parsed.is_ok(), "serde disagrees on {raw:?}");

    let id = match parsed {
        Ok(id) => id,
        Err(e) => {
            assert_eq!(actix_web::ResponseError::status_code(&e).as_u16(), 400, "{raw:?}: {e}");
            return;
        }
    };
    assert_eq!(id.as_str(), raw, "a story id is its input verbatim");
    assert_eq!(id.to_string(), raw);
    assert!(!raw.is_empty() && raw.len() <= MAX_STORY_ID_LEN, "length of {raw:?}");
    assert!(raw.as_bytes()[0].is_ascii_alphanumeric(), "first character of {raw:?}");
    assert!(
        raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')),
        "alphabet of {raw:?}"
    );
    // The consequences the docs promise, spelled out (implied by the alphabet; asserted in case it ever widens).
    assert!(!raw.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '{' | '}')), "{raw:?}");
    let namespace = id.namespace();
    assert!(raw.starts_with(namespace) && !namespace.contains(':') && !namespace.is_empty(), "namespace of {raw:?}");
});
