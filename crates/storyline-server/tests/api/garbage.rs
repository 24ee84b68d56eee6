//! Requests no client should send: none may panic a handler, kill the process, or append anything.

use reqwest::Method;
use storyline_testkit::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, spawn, spawn_with};

both_brokers!(
    garbage_requests_get_clear_errors_and_leave_the_service_healthy,
    a_client_that_trickles_its_request_head_is_cut_off,
    wrong_methods_are_405_with_allow_and_unknown_paths_404,
    broken_request_bodies_append_nothing_and_leave_the_service_healthy,
);

async fn garbage_requests_get_clear_errors_and_leave_the_service_healthy(kind: Kind) {
    let app = spawn(kind).await;
    let post = |body: Vec<u8>| {
        app.client
            .post(app.url("/v1/stories/s/events"))
            .bearer_auth(app.admin_token())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_problem(post(vec![0xff, 0xfe, 0x00, 0x7b]).await.unwrap(), 400, "invalid UTF-8").await;
    assert_problem(
        post(b"{\"type\":\"chapter\",\"data\":\"\xff\"}".to_vec()).await.unwrap(),
        400,
        "invalid UTF-8 in a string",
    )
    .await;
    assert_problem(post(vec![b'x'; 1 << 20]).await.unwrap(), 413, "1 MiB body").await;
    let deep = format!("{{\"type\":\"chapter\",\"data\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    assert_problem(post(deep.into_bytes()).await.unwrap(), 422, "data nested 10,000 levels deep").await;
    for path in ["/v1/stories/..%2F..%2Fetc/events", "/v1/stories/%00/events", "/v1/stories/a%0D%0Aid:1/events"] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(app.admin_token())
            .header("content-type", "application/json")
            .body(r#"{"type":"a","data":1}"#)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{path}: {}", response.status());
    }
    let bad_header = app
        .client
        .get(app.url("/v1/stories/s/stream"))
        .bearer_auth(app.admin_token())
        .header("last-event-id", reqwest::header::HeaderValue::from_bytes(b"1-1\xff").unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(bad_header, 400, "non-UTF-8 Last-Event-ID").await;
    // A head over the limit (16 KiB by default) is refused before any handler runs, whatever the route.
    let junk = "j".repeat(64 * 1024);
    let big_get = app.client.get(app.url("/healthz")).header("x-junk", &junk).send().await.unwrap();
    assert_problem(big_get, 431, "64 KiB header on GET").await;
    let big_post = app
        .post_event_request("s", &serde_json::json!({"type": "chapter", "data": 1}))
        .header("x-junk", &junk)
        .send()
        .await
        .unwrap();
    assert_problem(big_post, 431, "64 KiB header on POST").await;
    let within = app.client.get(app.url("/healthz")).header("x-junk", "j".repeat(8 * 1024)).send().await.unwrap();
    assert_eq!(within.status(), 200, "an 8 KiB header is within the limit");
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200, "still alive");
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200, "still ready");
    assert!(app.all_ids("s").await.is_empty(), "nothing was appended");
}

/// Slowloris: a connection that sends part of a request head and then nothing is answered and closed after the
/// client request timeout, instead of holding its place forever.
async fn a_client_that_trickles_its_request_head_is_cut_off(kind: Kind) {
    let config = storyline_server::ServerConfig {
        // Not shorter: actix measures it against a clock it refreshes every 500 ms.
        client_request_timeout: std::time::Duration::from_secs(1),
        ..storyline_testkit::test_config()
    };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let addr = app.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: storyline\r\nX-Slow: ").await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(FRAME, socket.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the server closed the connection (read so far: {:?})", String::from_utf8_lossy(&answer));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "a 408 or a plain close, not {answer:?}");
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200, "others are served");
}

/// Every route answers the methods it does not serve with 405, its `Allow` list and a problem body; a path that
/// is no route is 404. Neither runs a handler: an event body sent along appends nothing.
async fn wrong_methods_are_405_with_allow_and_unknown_paths_404(kind: Kind) {
    let app = spawn(kind).await;
    let event = r#"{"type":"chapter","data":1}"#;
    let send = |method: Method, path: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(app.admin_token())
            .header("content-type", "application/json")
            .body(event)
            .send()
    };
    let routes = [
        ("/v1/stories/s/events", "GET, POST"),
        ("/v1/stories/s/stream", "GET"),
        ("/healthz", "GET, HEAD"),
        ("/readyz", "GET, HEAD"),
        ("/metrics", "GET"),
        ("/openapi.json", "GET"),
        ("/v1/streams", "GET"),
        ("/", "GET"),
        ("/reader", "GET"),
        ("/reader/storyline.js", "GET"),
    ];
    for (path, allow) in routes {
        for method in [Method::PUT, Method::DELETE, Method::PATCH] {
            let case = format!("{method} {path}");
            let response = send(method, path).await.unwrap();
            assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{case}: Allow");
            assert_problem(response, 405, &case).await;
        }
    }
    for path in [
        "/v1/stories/s",
        "/v1/stories/s/events/x",
        "/v1/streams/x",
        "/reader/other.js",
        "/v2/stories/s/events",
        "/healthz/",
        "/HEALTHZ",
    ] {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let case = format!("{method} {path}");
            let response = send(method, path).await.unwrap();
            assert!(response.headers().get("allow").is_none(), "{case}: no Allow on a 404");
            assert_problem(response, 404, &case).await;
        }
    }
    assert!(app.all_ids("s").await.is_empty(), "nothing was appended");
}

/// How a raw request ends once its bytes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close the connection at once, without reading.
    Drop,
    /// Close the write side, then read what the server answers until it closes.
    HalfClose,
    /// Keep the connection open and read until the server closes it.
    WaitForClose,
}

/// Sends `bytes` on a new connection and ends it as `end` says; returns what the server answered (nothing for
/// [`End::Drop`]). The server must close the connection within [`FRAME`].
async fn raw_request(app: &TestApp, bytes: &[u8], end: End) -> String {
    let addr = app.url("").trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    match end {
        End::Drop => return String::new(),
        End::HalfClose => socket.shutdown().await.unwrap(),
        End::WaitForClose => {}
    }
    let mut answer = Vec::new();
    // A reset instead of an orderly close is a close too.
    let closed = tokio::time::timeout(FRAME, socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(closed.is_ok(), "the server closes the connection (answer so far: {answer:?})");
    answer
}

/// Request bodies that never arrive whole: a chunked body cut off (mid-chunk, or after a complete event but
/// before the last chunk), a chunk-size line that is not hex, a Content-Length larger than what is sent. The
/// connection is dropped, or half-closed to read the answer. None may append anything, even when the bytes
/// that did arrive are a valid event; the service stays healthy and goes on serving.
async fn broken_request_bodies_append_nothing_and_leave_the_service_healthy(kind: Kind) {
    let app = spawn(kind).await;
    let event = r#"{"type":"chapter","data":1}"#;
    let head = |framing: &str| {
        format!(
            "POST /v1/stories/s/events HTTP/1.1\r\nHost: storyline\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n",
            app.admin_token()
        )
    };
    let chunked = head("Transfer-Encoding: chunked");
    let cases = [
        // Dropped first: nothing tells when the server is done with those, so they get the most time.
        ("chunked, cut mid-chunk, dropped", format!("{chunked}40\r\n{}", &event[..20]), End::Drop),
        (
            "chunked, whole event but no last chunk, dropped",
            format!("{chunked}{:x}\r\n{event}\r\n", event.len()),
            End::Drop,
        ),
        ("Content-Length larger than sent, dropped", format!("{}{event}", head("Content-Length: 100")), End::Drop),
        ("chunked, cut mid-chunk, half-closed", format!("{chunked}40\r\n{}", &event[..20]), End::HalfClose),
        (
            "chunked, whole event but no last chunk, half-closed",
            format!("{chunked}{:x}\r\n{event}\r\n", event.len()),
            End::HalfClose,
        ),
        (
            "Content-Length larger than sent, half-closed",
            format!("{}{event}", head("Content-Length: 100")),
            End::HalfClose,
        ),
        ("chunk size not hex", format!("{chunked}zz\r\n{event}\r\n0\r\n\r\n"), End::WaitForClose),
        (
            "chunk size overflowing",
            format!("{chunked}10000000000000000001b\r\n{event}\r\n0\r\n\r\n"),
            End::WaitForClose,
        ),
    ];
    for (case, bytes, end) in cases {
        let answer = raw_request(&app, bytes.as_bytes(), end).await;
        // After a half-close the server may answer or just close; it must never accept. A framing error it
        // sees for itself gets an answer.
        let problem = answer.starts_with("HTTP/1.1 400 ")
            && answer.to_ascii_lowercase().contains("\r\ncontent-type: application/problem+json\r\n");
        assert!(problem || (answer.is_empty() && end != End::WaitForClose), "{case}: not a 400 problem: {answer:?}");
        if end == End::HalfClose && problem {
            assert!(answer.contains("urn:storyline:problem:incomplete-body"), "{case}: says what happened: {answer:?}");
        }
    }
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200, "still alive");
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200, "still ready");
    let receipt = app.publish("other", "chapter", serde_json::json!({"text": "still writing"})).await;
    assert_eq!(app.all_ids("other").await, vec![receipt["id"].as_str().unwrap().to_owned()], "a normal publish works");
    assert!(app.all_ids("s").await.is_empty(), "nothing was appended to the story the garbage targeted");
}
