//! Requests no client should send: none may panic a handler, kill the process, or append anything.

use crate::helpers::{Kind, assert_problem, both_brokers, spawn};

both_brokers!(garbage_requests_get_clear_errors_and_leave_the_service_healthy);

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
    let big_header = app.client.get(app.url("/healthz")).header("x-junk", "j".repeat(64 * 1024)).send().await;
    // Header-size limits are the security hardening's job; here the server must survive and never fail with 5xx.
    if let Ok(response) = big_header {
        assert!(!response.status().is_server_error(), "64 KiB header: {}", response.status());
    }
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200, "still alive");
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200, "still ready");
    assert!(app.all_ids("s").await.is_empty(), "nothing was appended");
}
