//! The reader page: `GET /reader` and its assets, embedded in the binary; `GET /` redirects to it.

use crate::helpers::{Kind, both_brokers, spawn};

both_brokers!(
    the_page_and_its_assets_are_served_with_their_content_types_and_no_token,
    only_the_reader_routes_carry_the_page_policy_the_api_keeps_its_strict_one,
    the_root_redirects_to_the_reader,
    the_served_client_is_the_javascript_client_byte_for_byte,
    an_unchanged_file_is_revalidated_with_its_etag,
);

/// The reader's files and the content type each must be served with.
const FILES: [(&str, &str); 4] = [
    ("/reader", "text/html; charset=utf-8"),
    ("/reader/storyline.js", "text/javascript; charset=utf-8"),
    ("/reader/reader.js", "text/javascript; charset=utf-8"),
    ("/reader/reader.css", "text/css; charset=utf-8"),
];

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn the_page_and_its_assets_are_served_with_their_content_types_and_no_token(kind: Kind) {
    let app = spawn(kind).await;
    for (path, content_type) in FILES {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff", "{path}: never sniffed");
        assert_eq!(header(&response, "cache-control"), "no-cache", "{path}: revalidated on every load");
        assert!(!header(&response, "etag").is_empty(), "{path}: has an ETag");
        assert!(!response.text().await.unwrap().is_empty(), "{path}: has a body");
    }
    let page = app.client.get(app.url("/reader")).send().await.unwrap().text().await.unwrap();
    for asset in ["/reader/reader.js", "/reader/reader.css"] {
        assert!(page.contains(asset), "the page loads {asset}");
    }
}

async fn only_the_reader_routes_carry_the_page_policy_the_api_keeps_its_strict_one(kind: Kind) {
    let app = spawn(kind).await;
    let api = app.client.get(app.url("/healthz")).send().await.unwrap();
    let strict = header(&api, "content-security-policy");
    assert_eq!(strict, "default-src 'none'; frame-ancestors 'none'", "the API's policy");
    for (path, _) in FILES {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let policy = header(&response, "content-security-policy");
        assert_ne!(policy, strict, "{path}: a policy of its own");
        let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
        for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(directives.contains(&directive), "{path}: {directive:?} in {policy:?}");
        }
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{path}: no inline code");
    }
    let history = app.client.get(app.url("/v1/stories/s/events")).bearer_auth(app.admin_token()).send().await.unwrap();
    assert_eq!(header(&history, "content-security-policy"), strict, "the API routes keep the strict policy");
}

async fn the_root_redirects_to_the_reader(kind: Kind) {
    let app = spawn(kind).await;
    let client = storyline_testkit::http_client_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(app.url("/")).send().await.unwrap();
    assert!([302, 303].contains(&response.status().as_u16()), "a redirect: {}", response.status());
    assert_eq!(header(&response, "location"), "/reader");
    let followed = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!((followed.url().path(), followed.status().as_u16()), ("/reader", 200), "the redirect lands on the page");
}

async fn the_served_client_is_the_javascript_client_byte_for_byte(kind: Kind) {
    let app = spawn(kind).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js/src/storyline.js");
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let served = app.client.get(app.url("/reader/storyline.js")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(served.len(), file.len(), "same length");
    assert!(served[..] == file[..], "the served client is clients/js/src/storyline.js");
}

async fn an_unchanged_file_is_revalidated_with_its_etag(kind: Kind) {
    let app = spawn(kind).await;
    for (path, _) in FILES {
        let first = app.client.get(app.url(path)).send().await.unwrap();
        let etag = header(&first, "etag");
        let again = app.client.get(app.url(path)).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{path}: not modified");
        assert_eq!(header(&again, "etag"), etag, "{path}: the same validator");
        assert!(again.bytes().await.unwrap().is_empty(), "{path}: no body");
        let stale = app.client.get(app.url(path)).header("if-none-match", "\"other\"").send().await.unwrap();
        assert_eq!(stale.status(), 200, "{path}: another validator gets the file");
    }
}
