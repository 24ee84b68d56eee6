//! The stored form in a stream entry: fields `type`, `data`, `author`, `ts`, and one `m.<key>` field per
//! metadata entry (never shown to readers). Field order does not matter.

use fred::prelude::Value;
use storyline_core::{BrokerError, EventData, EventId, EventType, Metadata, NewEvent, StoredEvent, StoryId};

const META_PREFIX: &str = "m.";

/// The field/value pairs XADD stores for an event.
pub(crate) fn fields(event: &NewEvent) -> Vec<String> {
    let mut out = Vec::with_capacity(8 + 2 * event.meta.iter().count());
    out.extend([
        "type".to_owned(),
        event.event_type.as_str().to_owned(),
        "data".to_owned(),
        event.data.as_str().to_owned(),
        "author".to_owned(),
        event.author.clone(),
        "ts".to_owned(),
        event.ts.to_string(),
    ]);
    for (k, v) in event.meta.iter() {
        out.push(format!("{META_PREFIX}{k}"));
        out.push(v.to_owned());
    }
    out
}

fn corrupt(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Corrupt(what.to_string())
}

fn text(v: &Value) -> Result<std::borrow::Cow<'_, str>, BrokerError> {
    v.as_str().ok_or_else(|| corrupt(format!("expected a string, got {:?}", v.kind())))
}

pub(crate) fn parse_id(v: &Value) -> Result<EventId, BrokerError> {
    let s = text(v)?;
    EventId::parse(&s).map_err(|e| corrupt(format!("stream id {s:?}: {e}")))
}

/// Decodes one `[id, [field, value, ...]]` entry.
pub(crate) fn decode_entry(story: &StoryId, entry: Value) -> Result<StoredEvent, BrokerError> {
    let mut parts = entry.into_array().into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(corrupt("stream entry is not [id, fields]"));
    };
    let id = parse_id(&id)?;
    let (mut event_type, mut data, mut author, mut ts) = (None, None, None, None);
    let mut meta = Metadata::new();
    let mut fields = fields.into_array().into_iter();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        let k = text(&k)?;
        match k.as_ref() {
            "type" => event_type = Some(EventType::parse(&text(&v)?).map_err(corrupt)?),
            "data" => data = Some(EventData::from_json_text(&text(&v)?).map_err(corrupt)?),
            "author" => author = Some(text(&v)?.into_owned()),
            "ts" => ts = Some(text(&v)?.parse::<u64>().map_err(corrupt)?),
            other => {
                if let Some(key) = other.strip_prefix(META_PREFIX) {
                    meta.insert(key, text(&v)?.into_owned());
                }
            }
        }
    }
    let (Some(event_type), Some(data), Some(author), Some(ts)) = (event_type, data, author, ts) else {
        return Err(corrupt(format!("entry {id} of {story} lacks type, data, author or ts")));
    };
    Ok(StoredEvent { id, story: story.clone(), event_type, data, author, ts, meta })
}

/// Decodes an XRANGE reply (`[[id, fields], ...]`). An entry storyline cannot read (written by something else,
/// or corrupted) is logged and skipped, the same way on every read path, rather than failing every page that
/// contains it forever.
pub(crate) fn decode_entries(story: &StoryId, reply: Value) -> Vec<StoredEvent> {
    if reply.is_null() {
        return Vec::new();
    }
    reply
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            decode_entry(story, entry)
                .map_err(|e| tracing::error!(story = %story, error = %e, "undecodable stream entry skipped"))
                .ok()
        })
        .collect()
}
