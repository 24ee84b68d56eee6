//! SSE wire encoding. Every field comes from a parsed type that cannot contain CR, LF or NUL (event ids, event
//! types) or from JSON serialization on one line (the envelope, gap data), so no escaping is needed.
//!
//! And the decoding a client does ([`take_frame`]), for storyline's own clients: the synthetic probe and the test
//! kit's stream reader.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use storyline_core::{EventId, GAP_EVENT, Gap, StoredEvent};
use utoipa::ToSchema;

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

// What `encode_gap` serializes, and the schema the OpenAPI and AsyncAPI documents publish for it (the doc comment
// below is its description there): a field renamed here changes the wire and both documents alike.
/// Data of the `gap` event: the resume point fell out of retained history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GapData {
    /// The id the client asked to resume after.
    #[schema(value_type = String)]
    pub requested: EventId,
    /// The id of the first event delivered instead (the oldest retained).
    #[schema(value_type = String)]
    pub resumed_from: EventId,
}

impl From<Gap> for GapData {
    fn from(gap: Gap) -> Self {
        Self { requested: gap.requested, resumed_from: gap.resumed_from }
    }
}

/// `event: gap\ndata: {"requested","resumed_from"}\n\n`, with no `id:` so the client's Last-Event-ID stays put.
pub fn encode_gap(gap: Gap) -> Bytes {
    // Two event ids as strings: serializing them cannot fail.
    let data = serde_json::to_string(&GapData::from(gap)).unwrap_or_default();
    Bytes::from(format!("event: {GAP_EVENT}\ndata: {data}\n\n"))
}

/// One SSE frame as a client reads it: the lines up to a blank line. `data:` lines are joined with `\n`, as a
/// browser joins them; comments (`: keep-alive`) are kept, without the colon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

/// Takes the first complete frame off `buf` (one ending in a blank line, in any of SSE's line endings), or
/// `None` if none is complete yet.
pub fn take_frame(buf: &mut BytesMut) -> Option<SseFrame> {
    let (end, terminator) = (0..buf.len()).find_map(|i| {
        [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"].iter().find(|t| buf[i..].starts_with(t)).map(|t| (i, t.len()))
    })?;
    let block = buf.split_to(end);
    buf.advance(terminator);
    let mut frame = SseFrame::default();
    for line in String::from_utf8_lossy(&block).lines() {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comments.push(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => {
                frame.data = Some(match frame.data.take() {
                    Some(previous) => format!("{previous}\n{value}"),
                    None => value.to_owned(),
                });
            }
            "retry" => frame.retry = value.parse().ok(),
            _ => {}
        }
    }
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_on_blank_lines_of_any_line_ending_and_comments_are_skipped() {
        let mut buf = BytesMut::from(
            &b"retry: 2000\n\n: keep-alive\r\n\r\nid: 1-0\nevent: probe\ndata: {\"a\":\ndata: 1}\r\rpartial"[..],
        );
        let mut frames = Vec::new();
        while let Some(frame) = take_frame(&mut buf) {
            frames.push(frame);
        }
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(frames[0].data.is_none() && frames[1].data.is_none(), "retry and comment frames carry no data");
        assert_eq!((frames[0].retry, frames[1].comments.as_slice()), (Some(2000), &["keep-alive".to_owned()][..]));
        assert_eq!(frames[2].id.as_deref(), Some("1-0"));
        assert_eq!(frames[2].event.as_deref(), Some("probe"));
        assert_eq!(frames[2].data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(&buf[..], b"partial", "an unfinished frame stays buffered");
    }
}
