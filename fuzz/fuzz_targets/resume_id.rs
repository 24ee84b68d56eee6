//! The resume point of a stream request: `storyline_server::input::resume_point` (`Last-Event-ID` header, else
//! the `last_event_id` query value).
//!
//! Input layout, chosen so seeds stay readable: byte 0 selects the sources (`byte % 4`: bit 0 = a
//! `Last-Event-ID` header is sent, bit 1 = a query value is sent); the rest is `<header bytes>\n<query>` (a
//! header value cannot hold `\n`). `"3123-4\n0"` is header `123-4` and query `0`.
//!
//! Checked: never panic; a non-empty header wins over the query and an empty one counts as absent; an accepted
//! id came from text that is `0` or `<digits>-<digits>` (no whitespace, signs or other noise) with exactly those
//! numbers, and its `Display` (what goes out as the SSE `id:`) parses back to the same id; errors are 400.
#![no_main]

use actix_web::{http::header::HeaderValue, test::TestRequest};
use libfuzzer_sys::fuzz_target;
use storyline_core::EventId;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (header_bytes, query_bytes) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let header = if mode & 1 == 1 {
        let Ok(value) = HeaderValue::from_bytes(header_bytes) else { return };
        Some(value)
    } else {
        None
    };
    let query = if mode & 2 == 2 {
        let Ok(query) = std::str::from_utf8(query_bytes) else { return };
        Some(query)
    } else {
        None
    };

    let mut req = TestRequest::get();
    if let Some(value) = &header {
        req = req.insert_header(("last-event-id", value.clone()));
    }
    let req = req.to_http_request();
    let resumed = storyline_server::input::resume_point(&req, query);

    // Which text the answer must come from. A header that is not visible ASCII is an error, never a fallback.
    let source: Option<Result<&str, ()>> = match &header {
        Some(v) if !v.is_empty() => Some(v.to_str().map_err(|_| ())),
        _ => query.filter(|q| !q.is_empty()).map(Ok),
    };
    match (source, resumed) {
        (None, Ok(None)) => {}
        (None, other) => panic!("no resume id sent, got {other:?}"),
        (Some(_), Ok(None)) => panic!("a resume id was sent but ignored"),
        (Some(_), Err(e)) => assert_eq!(actix_web::ResponseError::status_code(&e).as_u16(), 400, "{e}"),
        (Some(Err(())), Ok(Some(id))) => panic!("non-ASCII header accepted as {id:?}"),
        (Some(Ok(text)), Ok(Some(id))) => {
            let expected = if text == "0" {
                EventId::ZERO
            } else {
                let (ms, seq) = text.split_once('-').unwrap_or_else(|| panic!("{text:?} accepted without '-'"));
                let decimal = |s: &str| {
                    assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()), "{text:?} accepted");
                    s.parse::<u64>().unwrap_or_else(|e| panic!("{text:?} accepted: {e}"))
                };
                EventId::new(decimal(ms), decimal(seq))
            };
            assert_eq!(id, expected, "{text:?} parsed as the wrong id");
            let shown = id.to_string();
            assert!(shown.bytes().all(|b| b.is_ascii_digit() || b == b'-'), "{shown:?} is not SSE-safe");
            assert_eq!(EventId::parse(&shown), Ok(id), "{shown:?} does not parse back");
        }
    }
});
