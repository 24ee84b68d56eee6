//! A raw Server-Sent Events reader for tests. Unlike a browser `EventSource`, it keeps everything the server
//! sent — `retry:` fields and `:` comments (heartbeats) included — so tests can check the wire format itself.

use std::time::Duration;

use bytes::BytesMut;
use futures::{StreamExt, stream::BoxStream};

/// One SSE frame (the lines up to a blank line), as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    /// `data:` lines joined with `\n`, as a browser would.
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl From<storyline_hub::SseFrame> for Frame {
    fn from(f: storyline_hub::SseFrame) -> Self {
        Self { id: f.id, event: f.event, data: f.data, retry: f.retry, comments: f.comments }
    }
}

impl Frame {
    /// A frame a browser would dispatch as an event.
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }

    /// The `data:` parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null"))
            .unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {self:?}"))
    }
}

/// An open SSE response being read frame by frame.
pub struct SseStream {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: BytesMut,
    /// Every byte received so far, for wire-format assertions.
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream").field("status", &self.status).finish_non_exhaustive()
    }
}

impl SseStream {
    /// Reads `response` (a `200 text/event-stream` answer) as SSE.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
            raw: Vec::new(),
        }
    }

    /// The next frame, or `None` when the server ended the stream. Panics if nothing arrives within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            match tokio::time::timeout(within, self.body.next()).await {
                Err(_) => {
                    panic!("no SSE frame within {within:?}; buffered: {:?}", String::from_utf8_lossy(&self.buffer))
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => panic!("SSE body failed: {e}"),
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.buffer.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Like [`SseStream::next_frame`] with no deadline, but a transport error (a reset) is returned, not a panic.
    pub async fn try_next_frame(&mut self) -> Result<Option<Frame>, reqwest::Error> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Ok(Some(frame));
            }
            match self.body.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => {
                    self.raw.extend_from_slice(&chunk);
                    self.buffer.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// The next frame that is an event (skipping `retry:`-only frames and comments).
    pub async fn next_event(&mut self, within: Duration) -> Frame {
        loop {
            match self.next_frame(within).await {
                Some(frame) if frame.is_event() => return frame,
                Some(_) => continue,
                None => panic!("stream ended while waiting for an event"),
            }
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize, each_within: Duration) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event(each_within).await);
        }
        out
    }

    /// Reads until the server ends the stream, returning what was left; panics if it does not end in time.
    pub async fn until_end(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "stream did not end within {within:?}");
            match self.next_frame(left).await {
                Some(frame) => frames.push(frame),
                None => return frames,
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        storyline_hub::take_frame(&mut self.buffer).map(Frame::from)
    }
}
