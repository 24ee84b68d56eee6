//! The token a request carries: `storyline_server::input::token` (`Authorization: Bearer`, else
//! `?access_token=`, else the `storyline_token` cookie).
//!
//! Structured input (`arbitrary`): an optional `Authorization` header, a query string, an optional `Cookie`
//! header. Checked: never panic; a returned token is non-empty and has no whitespace at its ends, whatever its
//! source; with an `Authorization` header the answer comes from it alone (a `Bearer` token; anything else is 401,
//! never "no token" and never a fallback to the query or cookie); without one, extraction cannot fail.
#![no_main]

use actix_web::{
    http::{Uri, header::HeaderValue},
    test::TestRequest,
};
use libfuzzer_sys::{arbitrary, arbitrary::Arbitrary, fuzz_target};

/// Borrowed slices rather than `Vec`s: `arbitrary` takes them as contiguous runs of the input, so a seed or a
/// mutation holding `Bearer …` keeps those bytes together.
#[derive(Debug, Arbitrary)]
struct Input<'a> {
    authorization: Option<&'a [u8]>,
    query: &'a str,
    cookie: Option<&'a [u8]>,
}

fuzz_target!(|input: Input<'_>| {
    let uri = format!("/v1/stories/s/stream?{}", input.query);
    // Only requests an HTTP parser could hand us: a valid URI and valid header values.
    if Uri::try_from(uri.as_str()).is_err() {
        return;
    }
    let header = |bytes: Option<&[u8]>| bytes.map(HeaderValue::from_bytes).transpose();
    let (Ok(authorization), Ok(cookie)) = (header(input.authorization), header(input.cookie)) else { return };

    let mut req = TestRequest::get().uri(&uri);
    if let Some(value) = &authorization {
        req = req.insert_header(("authorization", value.clone()));
    }
    if let Some(value) = &cookie {
        req = req.insert_header(("cookie", value.clone()));
    }
    let req = req.to_http_request();

    match (storyline_server::input::token(&req), &authorization) {
        (Ok(Some(token)), Some(value)) => {
            assert!(!token.is_empty(), "empty token");
            assert_eq!(token.trim(), token, "Authorization token {token:?} is not trimmed");
            let value = value.to_str().unwrap_or_else(|_| panic!("non-ASCII Authorization accepted"));
            let (scheme, rest) = value.split_once(' ').unwrap_or_else(|| panic!("{value:?} accepted"));
            assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme {scheme:?} accepted");
            assert_eq!(rest.trim(), token, "token is not the header's");
        }
        (Ok(None), Some(value)) => panic!("Authorization {value:?} treated as no token"),
        (Err(e), Some(_)) => assert_eq!(actix_web::ResponseError::status_code(&e).as_u16(), 401, "{e}"),
        (Ok(Some(token)), None) => {
            assert!(!token.is_empty(), "empty token");
            assert_eq!(token.trim(), token, "query/cookie token {token:?} is not trimmed");
        }
        (Ok(None), None) => {}
        (Err(e), None) => panic!("query/cookie extraction failed: {e}"),
    }
});
