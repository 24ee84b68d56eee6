//! The wire types: what a writer posts, the receipt it gets, what readers receive (the envelope, a gap notice),
//! and a page of history. Ids, story ids and event types are storyline-core's parse-only newtypes, so a value
//! the server sent that does not parse is a decode error here, never a malformed value passed on.

use serde::{Deserialize, Deserializer, Serialize};
use storyline_core::{EventId, EventType, IdempotencyKey, StoryId};

/// An event to publish: the `POST /v1/stories/{story}/events` body `{"type", "data"}`, and the
/// `Idempotency-Key` to send with it (one is generated when none is given, and reused on every retry).
#[derive(Debug, Clone)]
pub struct Event<T> {
    pub event_type: EventType,
    /// Any `Serialize`; readers get it verbatim as the envelope's `data`.
    pub data: T,
    pub idempotency_key: Option<IdempotencyKey>,
}

impl<T: Serialize> Event<T> {
    pub fn new(event_type: EventType, data: T) -> Self {
        Self { event_type, data, idempotency_key: None }
    }

    /// Sends this key, so that a retry by the caller (after a crash, say) is recognised too.
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

/// The body as the server defines it: `type` and `data`, nothing else (unknown fields are refused).
#[derive(Serialize)]
pub(crate) struct PublishBody<'a, T> {
    #[serde(rename = "type")]
    pub(crate) event_type: &'a EventType,
    pub(crate) data: &'a T,
}

/// The answer to a publish: `{"id","story","type","ts"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    pub id: EventId,
    pub story: StoryId,
    #[serde(rename = "type", deserialize_with = "event_type")]
    pub event_type: EventType,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The server answered 200, not 201: an earlier attempt with the same Idempotency-Key had stored the event
    /// (its answer was lost, or was `unconfirmed`), and this receipt is that event's.
    #[serde(skip)]
    pub replayed: bool,
}

/// An event as readers receive it: `{"id","story","type","data","author","ts"}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Envelope {
    pub id: EventId,
    pub story: StoryId,
    #[serde(rename = "type", deserialize_with = "event_type")]
    pub event_type: EventType,
    pub data: serde_json::Value,
    /// The writer's `sub`.
    pub author: String,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
}

impl Envelope {
    /// `data` as the writer's type.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

/// Events the reader was due were trimmed by retention (or the resume id was one the story never issued):
/// delivery continues from `resumed_from`. Never a silent hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Gap {
    /// The position the reader asked to resume after.
    pub requested: EventId,
    /// The first event delivered instead (the oldest retained).
    pub resumed_from: EventId,
}

/// A page of `GET /v1/stories/{story}/events`, oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryPage {
    pub events: Vec<Envelope>,
    /// The `after` of the next page; `None` when this page was not full.
    pub next: Option<EventId>,
}

/// What to read from a story's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Events after this id; `None` (or [`EventId::ZERO`]): from the oldest retained.
    pub after: Option<EventId>,
    /// Page size, 1..=1000 (the server's default when `None`: 100).
    pub limit: Option<u32>,
}

fn event_type<'de, D: Deserializer<'de>>(d: D) -> Result<EventType, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(d)?;
    EventType::parse(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_body_is_type_and_data_only() {
        let event = Event::new(EventType::parse("note").unwrap(), serde_json::json!({"n": 1}));
        let body = PublishBody { event_type: &event.event_type, data: &event.data };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"type":"note","data":{"n":1}}"#);
    }

    #[test]
    fn envelopes_and_receipts_parse_with_the_core_newtypes() {
        let envelope: Envelope = serde_json::from_str(
            r#"{"id":"5-1","story":"s:1","type":"chapter","data":{"x":[1]},"author":"ann","ts":5}"#,
        )
        .unwrap();
        assert_eq!(
            (envelope.id, envelope.story.as_str(), envelope.author.as_str()),
            (EventId::new(5, 1), "s:1", "ann")
        );
        assert_eq!(envelope.data_as::<serde_json::Value>().unwrap()["x"][0], 1);
        let receipt: Receipt = serde_json::from_str(r#"{"id":"7-0","story":"s","type":"chapter","ts":7}"#).unwrap();
        assert!(!receipt.replayed);
        for bad in [
            r#"{"id":"x","story":"s","type":"chapter","ts":7}"#,
            r#"{"id":"7-0","story":"bad story","type":"chapter","ts":7}"#,
            r#"{"id":"7-0","story":"s","type":"Bad","ts":7}"#,
        ] {
            assert!(serde_json::from_str::<Receipt>(bad).is_err(), "{bad}");
        }
    }
}
