//! The `storyline` binary as an operator and a new user meet it: the committed OpenAPI and AsyncAPI documents, `token`,
//! configuration errors, and `serve` from a cold start through SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{process::Command, time::Duration};

use common::{Running as Serve, logged_base_url, logged_base_url_json, mint_token, spawn, storyline};

#[test]
fn the_committed_openapi_document_matches_what_the_binary_prints() {
    let printed = storyline(&["openapi"], &[]);
    assert!(printed.status.success());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/openapi.json"))
        .expect("openapi/openapi.json exists");
    assert!(
        String::from_utf8_lossy(&printed.stdout) == committed,
        "openapi/openapi.json is stale: regenerate it with `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn the_committed_asyncapi_document_matches_what_the_binary_prints() {
    let printed = storyline(&["asyncapi"], &[]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../asyncapi/storyline.yaml"))
        .expect("asyncapi/storyline.yaml exists");
    assert!(
        String::from_utf8_lossy(&printed.stdout) == committed,
        "asyncapi/storyline.yaml is stale: regenerate it with `cargo run -q -- asyncapi > asyncapi/storyline.yaml` \
         (then check it with ./scripts/asyncapi.sh)"
    );
}

#[test]
fn token_mints_a_jwt_with_the_configured_secret() {
    let secret = "0123456789abcdef0123456789abcdef";
    let out = storyline(
        &["token", "--sub", "agent-7", "--scope", "write:public:*", "--tier", "agent", "--ttl-secs", "120"],
        &[("STORYLINE_JWT_SECRET", secret)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let keys = storyline_server::auth::JwtKeys::new(&storyline_server::auth::JwtSecret::new(secret));
    let principal = keys.verify(token.trim()).expect("the minted token verifies");
    assert_eq!(principal.sub, "agent-7");
    assert_eq!(principal.tier, storyline_server::auth::Tier::Agent);
    assert!(principal.scopes.can_write(&storyline_core::StoryId::parse("public:x").unwrap()));
}

#[test]
fn token_without_a_configured_secret_says_what_to_set() {
    let out = storyline(&["token", "--sub", "x"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STORYLINE_JWT_SECRET"));
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    for env in [("STORYLINE_HEARTBEAT_SECS", "often"), ("STORYLINE_LISTEN", "not-an-address"), ("STORYLINE_TYPO", "1")]
    {
        let out = storyline(&["serve"], &[env]);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("storyline:"), "{env:?} explains itself");
    }
}

/// Starts `storyline serve` on a free port with only `env` set, and its stdout as a channel of lines.
fn serve(env: &[(&str, &str)]) -> (Serve, std::sync::mpsc::Receiver<String>) {
    spawn(&["serve", "--listen", "127.0.0.1:0"], env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_configuration_prints_working_commands_and_stops_cleanly_on_sigterm() {
    let (serve, rx) = serve(&[]);
    // Read the quickstart the binary prints: the base URL and the two tokens.
    let (mut base, mut writer, mut reader, mut page) = (None, None, None, None);
    while base.is_none() || writer.is_none() || reader.is_none() || page.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("quickstart printed");
        if let Some(rest) = line.strip_prefix("storyline is up at ") {
            base = Some(rest.trim().to_owned());
        }
        if let Some((_, t)) = line.split_once("Authorization: Bearer ") {
            writer = Some(t.trim_end_matches(['\'', ' ', '\\']).to_owned());
        }
        if line.trim_start().starts_with("curl -N") {
            let t = line.split("access_token=").nth(1).unwrap();
            reader = Some(t.trim_end_matches('\'').to_owned());
        }
        if line.contains("/reader#") {
            page = Some(line.trim().to_owned());
        }
    }
    let (base, writer, reader, page) = (base.unwrap(), writer.unwrap(), reader.unwrap(), page.unwrap());
    let client = storyline_testkit::http_client();

    // The printed reader page: the page itself, opened on the story with the reader token in its fragment.
    assert_eq!(page, format!("{base}/reader#story=demo&token={reader}"), "the reader page's URL");
    let (page_url, _fragment) = page.split_once('#').unwrap();
    let served = client.get(page_url).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert!(served.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "the page is HTML");

    // The printed stream command (reader token in the query, as EventSource would send it).
    let stream = client.get(format!("{base}/v1/stories/demo/stream?access_token={reader}")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    // The printed POST command.
    let post = client
        .post(format!("{base}/v1/stories/demo/events"))
        .bearer_auth(&writer)
        .header("content-type", "application/json")
        .body(r#"{"type":"chapter","data":{"text":"Once upon a time"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 201);
    let id = post.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut body = stream.bytes_stream();
    let mut seen = String::new();
    use futures::StreamExt;
    while !seen.contains(&format!("id: {id}\n")) {
        let chunk =
            tokio::time::timeout(Duration::from_secs(10), body.next()).await.expect("event arrives").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: chapter\n") && seen.contains("Once upon a time"), "{seen}");

    // SIGTERM: the open stream ends and the process exits 0.
    let pid = serve.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .expect("the stream ends after SIGTERM");
    assert!(ended, "the stream ended cleanly, not with a transport error");
    let mut serve = serve;
    let status = tokio::task::spawn_blocking(move || serve.0.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_not_ready_while_redis_is_down_and_becomes_ready_when_it_is_up() {
    let mut redis = storyline_testkit::RedisServer::start();
    redis.kill();
    let (_serve, rx) = serve(&[
        ("STORYLINE_REDIS_URL", &redis.url()),
        ("STORYLINE_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("STORYLINE_BROKER_TIMEOUT_MS", "500"),
        ("STORYLINE_LOG_FORMAT", "json"),
    ]);
    let base = logged_base_url_json(&rx);
    let client = storyline_testkit::http_client();
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200, "alive without Redis");
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 503, "not ready without Redis");
    redis.restart(&["--save", "", "--appendonly", "no"]);
    storyline_testkit::poll_until("readyz turns 200 once Redis is up", Duration::from_secs(15), || async {
        let status = client.get(format!("{base}/readyz")).send().await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
    // An outage of a connected broker, and its end, are in the logs as structured broker events.
    let logged = |message: &str| loop {
        let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| panic!("no log line {message:?}"));
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if entry["target"] == "storyline::broker" && entry["fields"]["message"] == message {
            return entry;
        }
    };
    redis.kill();
    let lost = logged("Redis connection lost; reconnecting");
    assert!(lost["fields"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{lost}");
    redis.restart(&["--save", "", "--appendonly", "no"]);
    logged("Redis connection re-established");
}

/// Query strings carry tokens (`?access_token=` is how EventSource authenticates), so neither a valid nor an
/// invalid token may show up in the logs (at the most verbose level), in `/metrics` or in an error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs_the_metrics_or_error_bodies() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let token = mint_token(SECRET, &["--sub", "reader", "--scope", "read:* write:*"]);
    assert!(token.len() > 20, "a token was minted");
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.forged-signature-marker";
    let (serve, rx) =
        serve(&[("STORYLINE_JWT_SECRET", SECRET), ("STORYLINE_LOG_FORMAT", "json"), ("RUST_LOG", "trace")]);
    let base = logged_base_url_json(&rx);
    let client = storyline_testkit::http_client();
    let mut bodies = Vec::new();

    let stream = client.get(format!("{base}/v1/stories/demo/stream?access_token={token}")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);
    for (url, status) in [
        (format!("{base}/v1/stories/demo/stream?access_token={forged}"), 401),
        (format!("{base}/v1/stories/../stream?access_token={token}"), 404),
        (format!("{base}/v1/nowhere?access_token={token}"), 404),
        (format!("{base}/v1/stories/demo/events?after=bad&access_token={token}"), 400),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
        bodies.push(response.text().await.unwrap());
    }
    for auth in [format!("Bearer {forged}"), format!("Basic {token}")] {
        let response = client
            .post(format!("{base}/v1/stories/demo/events"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(r#"{"type":"chapter","data":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        bodies.push(response.text().await.unwrap());
    }
    bodies.push(client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap());

    let pid = serve.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut serve = serve;
    let status = tokio::task::spawn_blocking(move || serve.0.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    // Everything it wrote: the reader thread ends at the exited process's end of output.
    let logs: Vec<String> = rx.iter().collect();
    assert!(
        logs.iter().filter(|l| l.contains("/v1/stories/demo/stream")).count() >= 2,
        "the requests were logged (so a leak would have shown): {logs:#?}"
    );
    // Streams are logged when they open (with who opened them) and when they close (with why).
    let entries: Vec<serde_json::Value> = logs.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let stream_log = |message: &str| {
        entries.iter().find(|e| e["target"] == "storyline::stream" && e["fields"]["message"] == message).cloned()
    };
    let opened = stream_log("stream opened").unwrap_or_else(|| panic!("no stream opened line: {logs:#?}"));
    assert_eq!((opened["fields"]["story"].as_str(), opened["fields"]["sub"].as_str()), (Some("demo"), Some("reader")));
    let closed = stream_log("stream closed").unwrap_or_else(|| panic!("no stream closed line: {logs:#?}"));
    assert!(matches!(closed["fields"]["reason"].as_str(), Some("client" | "shutdown")), "{closed}");
    let signature = forged.rsplit('.').next().unwrap();
    let token_signature = token.rsplit('.').next().unwrap();
    for (what, texts) in [("logs", &logs), ("bodies and metrics", &bodies)] {
        for text in texts {
            assert!(!text.contains(token_signature), "the valid token leaked into the {what}: {text}");
            assert!(!text.contains(signature), "the forged token leaked into the {what}: {text}");
        }
    }
}

/// Authentication failures, access denials, rate-limit rejections and admin actions are audit events: JSON lines
/// under the `storyline::audit` target even when the log format is text, with a bounded reason, the client IP and
/// the token's `sub`, never the token; and counted by event and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_audited_as_json_lines_and_counted_by_reason() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let mint = |args: &[&str]| mint_token(SECRET, args);
    let reader = mint(&["--sub", "reader", "--scope", "read:*"]);
    let writer = mint(&["--sub", "writer", "--scope", "write:*"]);
    let admin = mint(&["--sub", "root", "--scope", "read:* write:*", "--tier", "admin"]);
    // A well-formed token whose signature is wrong (base64 of "forged-signature-marker").
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.Zm9yZ2VkLXNpZ25hdHVyZS1tYXJrZXI";
    let (serve, rx) = serve(&[
        ("STORYLINE_JWT_SECRET", SECRET),
        ("STORYLINE_LOG_FORMAT", "text"),
        ("STORYLINE_PUBLISH_RATE_MEMBER", "1"),
    ]);
    let base = logged_base_url(&rx);
    let client = storyline_testkit::http_client();
    let post = |token: &str| {
        client
            .post(format!("{base}/v1/stories/demo/events"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"type":"chapter","data":1}"#)
            .send()
    };
    assert_eq!(post(forged).await.unwrap().status(), 401);
    assert_eq!(post(&reader).await.unwrap().status(), 403);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&writer).await.unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429), "member at 1/s: {statuses:?}");
    assert_eq!(post(&admin).await.unwrap().status(), 201);
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();

    let pid = serve.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut serve = serve;
    tokio::task::spawn_blocking(move || serve.0.wait()).await.unwrap().unwrap();
    let logs: Vec<String> = rx.iter().collect();
    let audits: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "storyline::audit")
        .collect();
    let find = |event: &str, reason: &str| {
        audits
            .iter()
            .find(|e| e["fields"]["event"] == event && e["fields"]["reason"] == reason)
            .unwrap_or_else(|| panic!("no {event}/{reason} audit line in {audits:#?}"))
            .clone()
    };
    let failure = find("auth_failure", "bad_signature");
    assert_eq!(failure["fields"]["sub"], "mallory", "the claimed sub of a failed token");
    assert_eq!(failure["fields"]["sub_verified"], false);
    assert_eq!(failure["fields"]["client_ip"], "127.0.0.1");
    assert_eq!(failure["fields"]["status"], 401);
    assert_eq!(find("access_denied", "scope")["fields"]["sub"], "reader");
    assert_eq!(find("rate_limited", "publish_rate_per_sub")["fields"]["sub"], "writer");
    let action = find("admin_action", "write");
    assert_eq!(
        (&action["fields"]["sub"], &action["fields"]["route"]),
        (&"root".into(), &"/v1/stories/{story}/events".into())
    );
    for line in logs.iter().filter(|l| l.contains("storyline::audit")) {
        for token in [forged, &reader, &writer, &admin] {
            assert!(!line.contains(token.rsplit('.').next().unwrap()), "a token leaked into an audit line: {line}");
        }
    }
    assert!(!logs.iter().any(|l| l.contains("event=\"auth_failure\"")), "audit lines are not duplicated as text");
    for (event, reason) in [
        ("auth_failure", "bad_signature"),
        ("access_denied", "scope"),
        ("rate_limited", "publish_rate_per_sub"),
        ("admin_action", "write"),
    ] {
        let series = format!("storyline_audit_events_total{{event=\"{event}\",reason=\"{reason}\"}}");
        assert!(metrics.contains(&series), "{series} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_asks_the_running_instance_and_its_tokens_are_refused_from_then_on() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let reader = mint_token(SECRET, &["--sub", "leaker", "--scope", "read:*"]);
    let (serve, rx) = serve(&[("STORYLINE_JWT_SECRET", SECRET), ("STORYLINE_LOG_FORMAT", "text")]);
    let base = logged_base_url(&rx);
    let client = storyline_testkit::http_client();
    let history = || client.get(format!("{base}/v1/stories/demo/events")).bearer_auth(&reader).send();
    assert_eq!(history().await.unwrap().status(), 200);

    let env = [("STORYLINE_JWT_SECRET", SECRET)];
    let refused = storyline(&["revoke", "--ttl-secs", "60", "--url", &base], &env);
    assert!(!refused.status.success(), "a target is required");
    let out = storyline(&["revoke", "--sub", "leaker", "--ttl-secs", "60", "--url", &base], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["sub"], "leaker", "prints the stored entry: {entry}");

    let answer = history().await.unwrap();
    assert_eq!(answer.status(), 401);
    let problem: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(problem["type"], "urn:storyline:problem:token-revoked");
    let wrong =
        storyline(&["revoke", "--sub", "x", "--ttl-secs", "60", "--url", &base, "--admin-token", &reader], &env);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"), "{}", String::from_utf8_lossy(&wrong.stderr));
    drop(serve);
}
