//! SSE wire encoding. Every field comes from a parsed type that cannot contain CR, LF or NUL (event ids, event
//! types) or from JSON serialization on one line (the envelope, gap data), so no escaping is needed.
//!
//! And the decoding a client does ([`take_frame`]), for storyline's own clients: the synthetic probe and the test
//! kit's stream reader.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use storyline_core::{EventId, GAP_EVENT, Gap, StoredEvent, StoryId};
use utoipa::ToSchema;

/// `id: <id>\nevent: <type>\ndata: <envelope>\n\n`, encoded once per event and shared by every subscriber.
pub fn encode_event(event: &StoredEvent) -> Bytes {
    encode_event_frame(event).0
}

/// The event's frame, and where its `event:` line starts: a stream that writes an `id:` line of its own (the
/// many-story stream's cursor) writes that, then the shared bytes from there on.
pub(crate) fn encode_event_frame(event: &StoredEvent) -> (Bytes, usize) {
    let envelope = event.envelope().to_json();
    let id = event.id.to_string();
    let mut out = BytesMut::with_capacity(envelope.len() + id.len() + event.event_type.as_str().len() + 24);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\n");
    let fields_at = out.len();
    out.put_slice(b"event: ");
    out.put_slice(event.event_type.as_str().as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(envelope.as_bytes());
    out.put_slice(b"\n\n");
    (out.freeze(), fields_at)
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

// What `encode_story_gap` serializes, and the schema both documents publish for the many-story stream's `gap`.
/// Data of the `gap` event on a stream of several stories (`GET /v1/streams`): one story's resume point fell out
/// of its retained history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoryGapData {
    /// The story whose events were trimmed.
    #[schema(value_type = String)]
    pub story: StoryId,
    /// The story's position the client was at.
    #[schema(value_type = String)]
    pub requested: EventId,
    /// The id of the story's first event delivered instead (the oldest retained).
    #[schema(value_type = String)]
    pub resumed_from: EventId,
}

/// `event: gap\ndata: {"story","requested","resumed_from"}\n\n`: a many-story stream's gap notice without its
/// `id:` line, which the stream writes before it (its cursor, with the story moved past the hole).
pub fn encode_story_gap(story: &StoryId, gap: Gap) -> Bytes {
    let data = StoryGapData { story: story.clone(), requested: gap.requested, resumed_from: gap.resumed_from };
    // A story id and two event ids as strings: serializing them cannot fail.
    let data = serde_json::to_string(&data).unwrap_or_default();
    Bytes::from(format!("event: {GAP_EVENT}\ndata: {data}\n\n"))
}

/// The position a reader is at once it got a gap notice: just before `resumed_from`, so that resuming from it
/// delivers `resumed_from` and does not report the hole again (everything before `resumed_from` that is gone
/// was trimmed at or before this position; a resume id newer than the story, after a reset store, moves back).
/// `ZERO` stays `ZERO` ("from the oldest retained").
pub fn position_after_gap(gap: Gap) -> EventId {
    let at = gap.resumed_from;
    match (at.ms, at.seq) {
        (_, 1..) => EventId::new(at.ms, at.seq - 1),
        (1.., 0) => EventId::new(at.ms - 1, u64::MAX),
        (0, 0) => EventId::ZERO,
    }
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
    fn the_position_after_a_gap_is_just_before_the_event_delivery_resumes_from() {
        let gap = |requested, resumed_from| Gap { requested, resumed_from };
        let (r, z) = (EventId::new(1, 0), EventId::ZERO);
        assert_eq!(position_after_gap(gap(r, EventId::new(9, 3))), EventId::new(9, 2));
        assert_eq!(position_after_gap(gap(r, EventId::new(9, 0))), EventId::new(8, u64::MAX));
        assert_eq!(position_after_gap(gap(z, z)), z, "nothing retained and nothing known: from the oldest");
        let reset = gap(EventId::new(99, 0), EventId::new(7, 1));
        assert_eq!(position_after_gap(reset), EventId::new(7, 0), "a resume id newer than the story: its oldest next");
    }

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
