//! Event types: `storyline_core::EventType::parse`, what a `POST …/events` body's `"type"` goes through.
//!
//! An `EventType` is written as the SSE `event:` field, and storyline reserves some names for its own frames.
//! So for every UTF-8 input: never panic; on success the type is the input verbatim, 1..=MAX_EVENT_TYPE_LEN
//! bytes matching `^[a-z][a-z0-9_.-]*$` (so no CR, LF, NUL, whitespace or `:`), and never `gap`,
//! `token-expired` or `storyline.*`; a `Reserved` error is given only for exactly those names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storyline_core::{EventType, EventTypeError, GAP_EVENT, MAX_EVENT_TYPE_LEN, TOKEN_EXPIRED_EVENT};

fn is_reserved(s: &str) -> bool {
    s == GAP_EVENT || s == TOKEN_EXPIRED_EVENT || s.starts_with("storyline.")
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let ty = match EventType::parse(raw) {
        Ok(ty) => ty,
        Err(EventTypeError::Reserved(name)) => {
            assert_eq!(name, raw);
            assert!(is_reserved(raw), "{raw:?} called reserved");
            return;
        }
        Err(_) => return,
    };
    assert_eq!(ty.as_str(), raw, "an event type is its input verbatim");
    assert_eq!(ty.to_string(), raw);
    assert!(!raw.is_empty() && raw.len() <= MAX_EVENT_TYPE_LEN, "length of {raw:?}");
    assert!(raw.as_bytes()[0].is_ascii_lowercase(), "first character of {raw:?}");
    assert!(
        raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')),
        "alphabet of {raw:?}"
    );
    assert!(!raw.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':'), "SSE-unsafe {raw:?}");
    assert!(!is_reserved(raw), "reserved name {raw:?} accepted");
});
