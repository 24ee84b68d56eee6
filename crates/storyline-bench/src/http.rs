//! The little HTTP/1.1 a subscriber needs: write one GET, read the response head, decode a chunked (or
//! identity) body incrementally. Written by hand so a subscriber costs one socket, one buffer and a few bytes
//! of state, and the generator spends its CPU on reading rather than on a general-purpose client.

use crate::template::{HeaderTemplate, UrlTemplate, Values};

/// The longest response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("the response head is longer than {limit} bytes")]
    HeadTooLong { limit: usize },
    #[error("malformed status line")]
    BadStatusLine,
    #[error("malformed chunked encoding")]
    BadChunk,
}

/// `GET <path> HTTP/1.1` with `Host`, `Accept: text/event-stream` and the extra headers.
pub fn get_request(url: &UrlTemplate, headers: &[HeaderTemplate], values: &Values<'_>) -> Vec<u8> {
    let mut request = String::with_capacity(256);
    request.push_str("GET ");
    url.path.fill_into(&mut request, values);
    request.push_str(" HTTP/1.1\r\nHost: ");
    request.push_str(&url.authority);
    request.push_str("\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
    for header in headers {
        request.push_str(&header.name);
        request.push_str(": ");
        header.value.fill_into(&mut request, values);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// `GET <path> HTTP/1.1` to `authority` with `Host`, `Accept: text/event-stream` and the given headers, for
/// requests whose headers change from one connection to the next (a resume id, a fresh token).
pub fn get_request_with(authority: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = String::with_capacity(256);
    request.push_str("GET ");
    request.push_str(path);
    request.push_str(" HTTP/1.1\r\nHost: ");
    request.push_str(authority);
    request.push_str("\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
    /// `Retry-After` in seconds, when the answer had one.
    pub retry_after_secs: Option<u64>,
    /// Bytes of `buffer` taken by the head; what follows is body.
    pub len: usize,
}

/// Parses the head at the start of `buffer`: `Ok(None)` while incomplete.
pub fn parse_head(buffer: &[u8]) -> Result<Option<Head>, HttpError> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buffer.len() > MAX_HEAD_BYTES {
            Err(HttpError::HeadTooLong { limit: MAX_HEAD_BYTES })
        } else {
            Ok(None)
        };
    };
    let text = String::from_utf8_lossy(&buffer[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::BadStatusLine);
    }
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or(HttpError::BadStatusLine)?;
    let mut chunked = false;
    let mut content_length = None;
    let mut retry_after_secs = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after_secs = value.parse().ok();
        }
    }
    Ok(Some(Head { status, chunked, content_length, retry_after_secs, len: end + 4 }))
}

/// Whether the body has more to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` bounds its length.
    Size {
        value: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to LF.
    Extension {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    DataEnd {
        seen_cr: bool,
    },
    Done,
}

/// Decodes a response body incrementally, handing body bytes to a sink without copying.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    chunked: Option<Chunk>,
    /// Identity bodies: bytes left, or `None` until the connection closes.
    remaining: Option<u64>,
}

impl BodyDecoder {
    pub fn new(head: &Head) -> BodyDecoder {
        if head.chunked {
            BodyDecoder { chunked: Some(Chunk::Size { value: 0, digits: 0 }), remaining: None }
        } else {
            BodyDecoder { chunked: None, remaining: head.content_length }
        }
    }

    pub fn decode<E: From<HttpError>>(
        &mut self,
        mut input: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Progress, E> {
        let Some(state) = self.chunked.as_mut() else {
            return match self.remaining.as_mut() {
                None => sink(input).map(|()| Progress::More),
                Some(left) => {
                    let take = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    sink(&input[..take])?;
                    Ok(if *left == 0 { Progress::Ended } else { Progress::More })
                }
            };
        };
        while !input.is_empty() {
            match *state {
                Chunk::Size { value, digits } => {
                    let b = input[0];
                    input = &input[1..];
                    *state = match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                            let digit = (b as char).to_digit(16).map(u64::from).ok_or(HttpError::BadChunk)?;
                            Chunk::Size { value: value * 16 + digit, digits: digits + 1 }
                        }
                        b';' | b' ' | b'\t' | b'\r' if digits > 0 => Chunk::Extension { value },
                        b'\n' if digits > 0 => size_done(value),
                        _ => return Err(HttpError::BadChunk.into()),
                    };
                }
                Chunk::Extension { value } => match input.iter().position(|b| *b == b'\n') {
                    Some(lf) => {
                        input = &input[lf + 1..];
                        *state = size_done(value);
                    }
                    None => input = &[],
                },
                Chunk::Data { remaining } => {
                    let take = input.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let (data, rest) = input.split_at(take);
                    input = rest;
                    let remaining = remaining - take as u64;
                    *state = if remaining == 0 { Chunk::DataEnd { seen_cr: false } } else { Chunk::Data { remaining } };
                    sink(data)?;
                }
                Chunk::DataEnd { seen_cr } => {
                    let b = input[0];
                    input = &input[1..];
                    *state = match b {
                        b'\r' if !seen_cr => Chunk::DataEnd { seen_cr: true },
                        b'\n' => Chunk::Size { value: 0, digits: 0 },
                        _ => return Err(HttpError::BadChunk.into()),
                    };
                }
                // The last chunk: trailers and anything after are ignored.
                Chunk::Done => break,
            }
        }
        Ok(if *state == Chunk::Done { Progress::Ended } else { Progress::More })
    }
}

fn size_done(value: u64) -> Chunk {
    if value == 0 { Chunk::Done } else { Chunk::Data { remaining: value } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::STREAM_VARS;

    fn decode_all(decoder: &mut BodyDecoder, input: &[u8], piece: usize) -> (Vec<u8>, Progress) {
        let mut out = Vec::new();
        let mut progress = Progress::More;
        for chunk in input.chunks(piece) {
            progress = decoder
                .decode::<HttpError>(chunk, |data| {
                    out.extend_from_slice(data);
                    Ok(())
                })
                .unwrap();
        }
        (out, progress)
    }

    #[test]
    fn the_request_carries_path_host_and_headers() {
        let url = UrlTemplate::parse("url", "http://127.0.0.1:8080/s/{story}?t={token}", STREAM_VARS).unwrap();
        let headers = [HeaderTemplate::parse("h", "X-Index: {index}", STREAM_VARS).unwrap()];
        let values = Values { story: "b-1", token: "tk", index: 3, ..Values::default() };
        let request = String::from_utf8(get_request(&url, &headers, &values)).unwrap();
        assert_eq!(
            request,
            "GET /s/b-1?t=tk HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\nX-Index: 3\r\n\r\n"
        );
    }

    #[test]
    fn a_request_with_per_connection_headers() {
        let request = get_request_with("127.0.0.1:9", "/v1/stories/s/stream", &[("Last-Event-ID", "1-0")]);
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "GET /v1/stories/s/stream HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\nLast-Event-ID: 1-0\r\n\r\n"
        );
    }

    #[test]
    fn a_head_is_parsed_once_complete() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        assert_eq!(parse_head(&head[..20]), Ok(None));
        let parsed = parse_head(head).unwrap().unwrap();
        assert_eq!(
            parsed,
            Head { status: 200, chunked: true, content_length: None, retry_after_secs: None, len: head.len() - 3 }
        );
        assert_eq!(parse_head(b"HTTP/1.1 401 Unauthorized\r\n\r\n").unwrap().unwrap().status, 401);
        let refused = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!((refused.status, refused.retry_after_secs), (503, Some(3)));
        assert_eq!(parse_head(b"SSH-2.0\r\n\r\n"), Err(HttpError::BadStatusLine));
        assert_eq!(parse_head(&[b'a'; MAX_HEAD_BYTES + 1]), Err(HttpError::HeadTooLong { limit: MAX_HEAD_BYTES }));
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let body = b"7\r\ndata: a\r\n18;ext=1\r\n: keep-alive\n\ndata: bb\n\n\r\n0\r\n\r\n";
        for piece in 1..body.len() {
            let head = Head { status: 200, chunked: true, content_length: None, retry_after_secs: None, len: 0 };
            let (out, progress) = decode_all(&mut BodyDecoder::new(&head), body, piece);
            assert_eq!(out, b"data: a: keep-alive\n\ndata: bb\n\n", "pieces of {piece}");
            assert_eq!(progress, Progress::Ended, "pieces of {piece}");
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        let head = Head { status: 200, chunked: true, content_length: None, retry_after_secs: None, len: 0 };
        for body in [&b"zz\r\n"[..], b"\r\n", b"1\r\nab", b"fffffffffffffffff\r\n"] {
            let result = BodyDecoder::new(&head).decode::<HttpError>(body, |_| Ok(()));
            assert_eq!(result, Err(HttpError::BadChunk), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn identity_bodies_end_at_content_length_or_never() {
        let head = Head { status: 200, chunked: false, content_length: Some(4), retry_after_secs: None, len: 0 };
        let (out, progress) = decode_all(&mut BodyDecoder::new(&head), b"abcdef", 3);
        assert_eq!((out.as_slice(), progress), (&b"abcd"[..], Progress::Ended));
        let head = Head { status: 200, chunked: false, content_length: None, retry_after_secs: None, len: 0 };
        let (out, progress) = decode_all(&mut BodyDecoder::new(&head), b"abcdef", 3);
        assert_eq!((out.as_slice(), progress), (&b"abcdef"[..], Progress::More));
    }
}
