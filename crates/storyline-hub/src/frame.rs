//! SSE wire encoding. Every field comes from a parsed type that cannot contain CR, LF or NUL (event ids, event
//! types) or from JSON serialization on one line (the envelope, gap data), so no escaping is needed.

use bytes::{BufMut, Bytes, BytesMut};
use storyline_core::{GAP_EVENT, Gap, StoredEvent};

/// `id: <id>\nevent: <type>\ndata: <envelope>\n\n`, encoded once per event and shared by every subscriber.
pub fn encode_event(event: &StoredEvent) -> Bytes {
    let envelope = event.envelope().to_json();
    let id = event.id.to_string();
    let mut out = BytesMut::with_capacity(envelope.len() + id.len() + event.event_type.as_str().len() + 24);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\nevent: ");
    out.put_slice(event.event_type.as_str().as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(envelope.as_bytes());
    out.put_slice(b"\n\n");
    out.freeze()
}

/// `event: gap\ndata: {"requested","resumed_from"}\n\n`, with no `id:` so the client's Last-Event-ID stays put.
pub fn encode_gap(gap: Gap) -> Bytes {
    let data = serde_json::json!({
        "requested": gap.requested.to_string(),
        "resumed_from": gap.resumed_from.to_string(),
    });
    Bytes::from(format!("event: {GAP_EVENT}\ndata: {data}\n\n"))
}
