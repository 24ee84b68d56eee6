//! The one incremental Server-Sent Events parser of the workspace: [`crate::Client::subscribe`] reads streams
//! with it, and so do `storyline-bench`'s raw-socket subscribers and soak readers.
//!
//! [`SseParser::feed`] hands out the `data` of each dispatched event (all a load generator needs).
//! [`SseParser::feed_frames`] hands out every frame with its `id`, `event` and `retry` fields too (the client
//! and the soak readers check ids and tell `gap` and `token-expired` frames and drain hints from story events).
//! Comments are skipped. Input may be split anywhere (inside a line, between CR and LF). Lines and fields are
//! bounded so a misbehaving server cannot make a reader grow without limit. The parser borrows its output and
//! allocates only while a line or event is incomplete, so a subscriber costs a few buffers.

/// Longest line or event data the parser accepts.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE line or event is longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// One frame (the fields up to a blank line), as [`SseParser::feed_frames`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The `id` field of this frame, if it had one.
    pub id: Option<&'a [u8]>,
    /// The `event` field of this frame, if it had one (`None`: the default type, `message`).
    pub event: Option<&'a [u8]>,
    /// The `data` lines joined with `\n`; `None` when the frame had no `data` field.
    pub data: Option<&'a [u8]>,
    /// The `retry` field (milliseconds), if it had a valid one.
    pub retry: Option<u64>,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    /// A line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The `data` lines of the current event, joined with `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The `id` and `event` fields of the current frame (empty and `false` when absent).
    id: Vec<u8>,
    has_id: bool,
    event: Vec<u8>,
    has_event: bool,
    retry: Option<u64>,
    /// The previous input ended with CR: a leading LF in the next input belongs to the same line ending.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds decoded body bytes; calls `on_event` with the data of every event completed by them.
    pub fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(&[u8])) -> Result<(), SseError> {
        self.feed_frames(input, |frame| {
            if let Some(data) = frame.data {
                on_event(data);
            }
        })
    }

    /// Feeds decoded body bytes; calls `on_frame` for every frame they complete that carried a `data` or a
    /// `retry` field (an event, or a reconnection hint). Frames holding only comments, or only `id`/`event`,
    /// dispatch nothing, as in a browser.
    pub fn feed_frames(&mut self, mut input: &[u8], mut on_frame: impl FnMut(Frame<'_>)) -> Result<(), SseError> {
        loop {
            if self.after_cr {
                if input.is_empty() {
                    return Ok(());
                }
                input = input.strip_prefix(b"\n").unwrap_or(input);
                self.after_cr = false;
            }
            let Some(end) = input.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                if self.partial.len() + input.len() > MAX_LINE_BYTES {
                    return Err(SseError::TooLong { limit: MAX_LINE_BYTES });
                }
                self.partial.extend_from_slice(input);
                return Ok(());
            };
            if self.partial.is_empty() {
                self.line(&input[..end], &mut on_frame)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[..end]);
                self.line(&line, &mut on_frame)?;
                line.clear();
                self.partial = line;
            }
            self.after_cr = input[end] == b'\r';
            input = &input[end + 1..];
        }
    }

    fn line(&mut self, line: &[u8], on_frame: &mut impl FnMut(Frame<'_>)) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data || self.retry.is_some() {
                on_frame(Frame {
                    id: self.has_id.then_some(self.id.as_slice()),
                    event: self.has_event.then_some(self.event.as_slice()),
                    data: self.has_data.then_some(self.data.as_slice()),
                    retry: self.retry,
                });
            }
            self.data.clear();
            self.has_data = false;
            self.id.clear();
            self.has_id = false;
            self.event.clear();
            self.has_event = false;
            self.retry = None;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.data.len() + value.len() + 1 > MAX_LINE_BYTES {
                return Err(SseError::TooLong { limit: MAX_LINE_BYTES });
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        } else if field == b"id" || field == b"event" {
            // Bounded by the line limit already; one value each, the last one wins.
            let (buffer, present) =
                if field == b"id" { (&mut self.id, &mut self.has_id) } else { (&mut self.event, &mut self.has_event) };
            buffer.clear();
            buffer.extend_from_slice(value);
            *present = true;
        } else if field == b"retry" && !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
            self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<String> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in input.chunks(piece) {
            parser.feed(chunk, |data| events.push(String::from_utf8_lossy(data).into_owned())).unwrap();
        }
        events
    }

    #[test]
    fn events_come_out_the_same_however_the_input_is_split() {
        let input = b"retry: 1500\n\n: keep-alive\n\nid: 1-0\nevent: bench\ndata: {\"seq\":1}\n\ndata: two\n\n";
        for piece in 1..input.len() {
            assert_eq!(parse_in_pieces(input, piece), vec!["{\"seq\":1}", "two"], "pieces of {piece} bytes");
        }
    }

    #[test]
    fn crlf_and_lone_cr_line_endings() {
        let input = b"data: a\r\n\r\ndata: b\r\rdata: c\n\r\n";
        for piece in 1..input.len() {
            assert_eq!(parse_in_pieces(input, piece), vec!["a", "b", "c"], "pieces of {piece} bytes");
        }
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        assert_eq!(parse_in_pieces(b"data: one\ndata:two\ndata\n\n", 100), vec!["one\ntwo\n"]);
    }

    /// id, event, data, retry.
    type OwnedFrame = (Option<String>, Option<String>, Option<String>, Option<u64>);

    fn frames_in_pieces(input: &[u8], piece: usize) -> Vec<OwnedFrame> {
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let mut parser = SseParser::new();
        let mut frames = Vec::new();
        for chunk in input.chunks(piece) {
            parser.feed_frames(chunk, |f| frames.push((text(f.id), text(f.event), text(f.data), f.retry))).unwrap();
        }
        frames
    }

    #[test]
    fn frames_carry_their_id_event_and_retry_fields_however_the_input_is_split() {
        let input = b"retry: 2500\n\n: keep-alive\n\nid: 17-3\nevent: chapter\ndata: {}\n\nevent: gap\ndata: x\n\n\
                      retry: 900\n\nid: 5\n\nretry: 12a\n\n";
        let s = |v: &str| Some(v.to_owned());
        let expected = vec![
            (None, None, None, Some(2500)),
            (s("17-3"), s("chapter"), s("{}"), None),
            (None, s("gap"), s("x"), None),
            (None, None, None, Some(900)),
        ];
        for piece in 1..input.len() {
            assert_eq!(frames_in_pieces(input, piece), expected, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn comments_and_frames_without_data_dispatch_nothing() {
        assert!(parse_in_pieces(b": keep-alive\n\nretry: 2000\n\nid: 5\n\n", 3).is_empty());
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        assert!(parse_in_pieces(b"data: half", 4).is_empty());
    }

    #[test]
    fn overlong_lines_are_an_error() {
        let mut parser = SseParser::new();
        let big = vec![b'a'; MAX_LINE_BYTES + 1];
        assert_eq!(parser.feed(&big, |_| {}), Err(SseError::TooLong { limit: MAX_LINE_BYTES }));
    }
}
