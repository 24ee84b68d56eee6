//! What writers send, what brokers store, and what readers receive.
//!
//! The stored form is designed once for both brokers: a [`StoredEvent`] is the reader-facing envelope fields plus
//! [`Metadata`] that readers never see (W3C trace context, and whatever later features need to carry with an
//! event through the log).

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{EventId, EventType, StoryId};

/// Arbitrary JSON supplied by a writer, kept as validated JSON text on one line.
///
/// It is stored and forwarded verbatim (never re-serialized per reader). Line breaks between JSON tokens are
/// turned into spaces so the text fits a single SSE `data:` line; JSON forbids raw line breaks inside strings, so
/// this never changes a value. Cloning is a reference-count increment.
#[derive(Clone)]
pub struct EventData(Arc<RawValue>);

/// Deepest nesting of arrays/objects accepted in event data. serde_json's raw-value parsing skips nested values
/// without its usual recursion limit, and readers' JSON parsers should not be handed arbitrarily deep input.
pub const MAX_DATA_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDataError {
    #[error("event data is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("event data nests arrays/objects deeper than {max} levels")]
    TooDeep { max: usize },
}

/// Whether JSON text nests deeper than `max`. Brackets inside strings do not count.
fn nests_deeper_than(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl EventData {
    /// Validates JSON text and keeps it (normalised to one line).
    pub fn from_json_text(text: &str) -> Result<Self, EventDataError> {
        let raw: &RawValue = serde_json::from_str(text).map_err(|e| EventDataError::InvalidJson(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// Keeps JSON that serde has already validated (for example a field of a request body), if it is not nested
    /// deeper than [`MAX_DATA_DEPTH`].
    pub fn from_raw(raw: &RawValue) -> Result<Self, EventDataError> {
        let text = raw.get();
        if nests_deeper_than(text, MAX_DATA_DEPTH) {
            return Err(EventDataError::TooDeep { max: MAX_DATA_DEPTH });
        }
        let owned: Box<RawValue> = if text.contains(['\r', '\n']) {
            let one_line = text.replace(['\r', '\n'], " ");
            // Replacing whitespace between tokens keeps the JSON valid; fall back to the original on the
            // impossible failure rather than panicking.
            RawValue::from_string(one_line).unwrap_or_else(|_| raw.to_owned())
        } else {
            raw.to_owned()
        };
        Ok(Self(Arc::from(owned)))
    }

    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventData({})", self.0.get())
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Per-event data that travels with an event through the broker but is never shown to readers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// An event as accepted at ingress, before the broker assigns it an id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: EventType,
    pub data: EventData,
    /// The poster's `sub`.
    pub author: String,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub meta: Metadata,
}

/// An event as stored in a story's log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: EventId,
    pub story: StoryId,
    pub event_type: EventType,
    pub data: EventData,
    pub author: String,
    pub ts: u64,
    pub meta: Metadata,
}

impl StoredEvent {
    pub fn from_new(id: EventId, story: StoryId, event: NewEvent) -> Self {
        Self {
            id,
            story,
            event_type: event.event_type,
            data: event.data,
            author: event.author,
            ts: event.ts,
            meta: event.meta,
        }
    }

    /// The reader-facing view (no metadata).
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            id: self.id,
            story: &self.story,
            event_type: &self.event_type,
            data: self.data.as_raw(),
            author: &self.author,
            ts: self.ts,
        }
    }

    pub fn receipt(&self) -> Receipt {
        Receipt { id: self.id, story: self.story.clone(), event_type: self.event_type.clone(), ts: self.ts }
    }
}

/// What readers receive: `{"id","story","type","data","author","ts"}`, one line of JSON.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Envelope<'a> {
    pub id: EventId,
    pub story: &'a StoryId,
    #[serde(rename = "type")]
    pub event_type: &'a EventType,
    pub data: &'a RawValue,
    pub author: &'a str,
    pub ts: u64,
}

impl Envelope<'_> {
    /// The envelope as one line of JSON. Cannot contain CR or LF: every field is either escaped by serde_json or
    /// is [`EventData`], which is normalised to one line.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, integers and pre-validated raw JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The answer to an append: `{"id","story","type","ts"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub id: EventId,
    pub story: StoryId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_kept_verbatim_on_one_line() {
        let data = EventData::from_json_text("{\n  \"text\": \"line one\\nline two\",\r\n  \"n\": [1,\n2]\n}");
        let Ok(data) = data else { panic!("valid JSON rejected") };
        assert!(!data.as_str().contains(['\n', '\r']), "{data:?}");
        let reparsed: serde_json::Value = serde_json::from_str(data.as_str()).unwrap_or_default();
        assert_eq!(reparsed, serde_json::json!({"text": "line one\nline two", "n": [1, 2]}));
    }

    #[test]
    fn event_data_rejects_invalid_json() {
        for bad in ["", "{", "{\"a\":}", "nul", "1 2"] {
            assert!(EventData::from_json_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_limited_and_brackets_in_strings_do_not_count() {
        let at_limit = format!("{}{}", "[".repeat(MAX_DATA_DEPTH), "]".repeat(MAX_DATA_DEPTH));
        assert!(EventData::from_json_text(&at_limit).is_ok());
        let over = format!("{}{}", "[".repeat(MAX_DATA_DEPTH + 1), "]".repeat(MAX_DATA_DEPTH + 1));
        assert_eq!(EventData::from_json_text(&over).err(), Some(EventDataError::TooDeep { max: MAX_DATA_DEPTH }));
        let in_string = format!("\"{}\\\"{}\"", "[".repeat(100), "{".repeat(100));
        assert!(EventData::from_json_text(&in_string).is_ok(), "{in_string}");
    }

    #[test]
    fn envelope_has_exactly_the_contract_fields() {
        let (Ok(story), Ok(ty), Ok(data)) =
            (StoryId::parse("s"), EventType::parse("chapter"), EventData::from_json_text("{\"x\":1}"))
        else {
            panic!("fixtures must parse")
        };
        let mut meta = Metadata::new();
        meta.insert("traceparent", "00-abc-def-01");
        let ev = StoredEvent { id: EventId::new(5, 1), story, event_type: ty, data, author: "ann".into(), ts: 5, meta };
        assert_eq!(
            ev.envelope().to_json(),
            r#"{"id":"5-1","story":"s","type":"chapter","data":{"x":1},"author":"ann","ts":5}"#
        );
    }
}
