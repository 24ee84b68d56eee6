//! Requests no client should send: none may panic a handler, kill the process, or append anything.

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, spawn, spawn_with};

both_brokers!(
    garbage_requests_get_clear_errors_and_leave_the_service_healthy,
    a_client_that_trickles_its_request_head_is_cut_off,
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
