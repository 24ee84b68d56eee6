//! The SSE parser is `storyline-client`'s (one piece of code speaks the protocol); this module adds the payload
//! marks (`seq`, `sent_us`) the benchmark's subscribers measure.

pub use storyline_client::sse::{Frame, MAX_LINE_BYTES, SseError, SseParser};

/// What a benchmark payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub seq: u64,
    pub sent_us: u64,
}

/// Finds `"seq":<n>` and `"sent_us":<n>` anywhere in an event's data, so it works whether the server wraps the
/// published body in an envelope (storyline) or relays it as is (nchan, pushpin). `None` for other events
/// (heartbeats, gap notices, anything without both numbers).
pub fn extract_marks(data: &[u8]) -> Option<Marks> {
    Some(Marks { seq: find_number(data, b"\"seq\":")?, sent_us: find_number(data, b"\"sent_us\":")? })
}

/// The unsigned integer after the first occurrence of `key` (spaces allowed before it).
fn find_number(haystack: &[u8], key: &[u8]) -> Option<u64> {
    let at = haystack.windows(key.len()).position(|w| w == key)?;
    let rest = &haystack[at + key.len()..];
    let digits = rest.iter().skip_while(|b| **b == b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for b in digits.take_while(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_found_in_an_envelope_and_in_a_raw_body() {
        let envelope = br#"{"id":"1-0","story":"bench-0","type":"bench","data":{"seq":42,"sent_us":1700000000123456,"pad":"xx"},"author":"b","ts":1}"#;
        assert_eq!(extract_marks(envelope), Some(Marks { seq: 42, sent_us: 1_700_000_000_123_456 }));
        let raw = br#"{"sent_us": 5, "seq": 0}"#;
        assert_eq!(extract_marks(raw), Some(Marks { seq: 0, sent_us: 5 }));
    }

    #[test]
    fn events_without_marks_are_ignored() {
        for data in [&br#"{"requested":"1-0","resumed_from":"2-0"}"#[..], b"", br#"{"seq":"1","sent_us":2}"#] {
            assert_eq!(extract_marks(data), None, "{}", String::from_utf8_lossy(data));
        }
        assert_eq!(extract_marks(br#"{"seq":99999999999999999999999,"sent_us":1}"#), None, "overflow");
    }

    #[test]
    fn marks_of_frames_from_the_shared_parser() {
        let mut parser = SseParser::new();
        let mut marks = Vec::new();
        parser
            .feed(b"retry: 10\n\nid: 1-0\ndata: {\"seq\":3,\"sent_us\":9}\n\n", |data| {
                marks.extend(extract_marks(data))
            })
            .unwrap();
        assert_eq!(marks, vec![Marks { seq: 3, sent_us: 9 }]);
    }
}
