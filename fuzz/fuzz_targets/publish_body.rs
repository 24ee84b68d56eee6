//! A `POST …/events` body: `storyline_server::input::publish_body`, the parser the publish route calls.
//!
//! Promises checked, from `EventData` and `Envelope` (storyline-core `envelope.rs`) and the publish route:
//! - never panic;
//! - accepted data is valid JSON on one line (no CR/LF: it goes out on one SSE `data:` line), and making it one
//!   line never changes its value; the envelope built from it is one line of valid JSON too;
//! - the accepted type is a valid, unreserved `EventType`;
//! - errors are 400 (the body is not JSON) or 422 (JSON, but not an event), and a body that is not JSON is
//!   always 400 ("Syntax errors are 400; valid JSON that is not an event is 422").
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::{Value, value::RawValue};
use storyline_core::{EventId, EventType, Metadata, StoredEvent, StoryId};

/// Whether `body` is a JSON text (RFC 8259: UTF-8, one value). `IgnoredAny` checks the grammar only: no number
/// range or nesting limit, so it is the reference for "is JSON", independent of what an event allows.
fn is_json(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|s| serde_json::from_str::<IgnoredAny>(s).is_ok())
}

fuzz_target!(|body: &[u8]| {
    let (ty, data) = match storyline_server::input::publish_body(body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e).as_u16();
            assert!(status == 400 || status == 422, "status {status} for {e}");
            if !is_json(body) {
                assert_eq!(status, 400, "a body that is not JSON must be 400, got {status}: {e}");
            }
            return;
        }
    };
    assert!(is_json(body), "accepted a body that is not JSON");
    assert_eq!(EventType::parse(ty.as_str()).as_ref(), Ok(&ty), "type {ty:?} does not re-parse");

    let text = data.as_str();
    assert!(!text.contains(['\n', '\r']), "event data is not one line: {text:?}");
    assert!(serde_json::from_str::<Box<RawValue>>(text).is_ok(), "event data is not JSON: {text:?}");
    // Same value as the body's `data` (where serde_json's Value can hold it: numbers within f64 range).
    let sent = serde_json::from_slice::<Value>(body).ok().and_then(|mut v| v.get_mut("data").map(Value::take));
    if let (Some(sent), Ok(kept)) = (sent, serde_json::from_str::<Value>(text)) {
        assert_eq!(sent, kept, "making event data one line changed its value");
    }

    let event = StoredEvent {
        id: EventId::new(1, 0),
        story: StoryId::parse("s").expect("fixture"),
        event_type: ty,
        data,
        author: "fuzz".into(),
        ts: 1,
        meta: Metadata::new(),
    };
    let line = event.envelope().to_json();
    assert!(!line.contains(['\n', '\r']), "envelope is not one line: {line:?}");
    assert!(serde_json::from_str::<Box<RawValue>>(&line).is_ok(), "envelope is not JSON: {line:?}");
});
