//! A tiny bench against the real storyline server (in-process, memory broker): every published event reaches
//! every stream exactly once.

use std::{net::Ipv4Addr, sync::Arc};

use storyline_bench::{BenchConfig, Scenario};
use storyline_broker_memory::MemoryBroker;
use storyline_testkit::spawn_app;

fn config(base: &str, token: String, scenario: Scenario) -> BenchConfig {
    BenchConfig {
        scenario,
        label: "integration".into(),
        stream_url: format!("{base}/v1/stories/{{story}}/stream?access_token={{token}}"),
        stream_headers: vec![],
        publish_url: format!("{base}/v1/stories/{{story}}/events"),
        publish_body: r#"{"type":"bench","data":{"seq":{seq},"sent_us":{sent_us},"pad":"{pad}"}}"#.into(),
        publish_headers: vec!["Content-Type: application/json".into(), "Authorization: Bearer {token}".into()],
        token,
        streams: 20,
        stories: 2,
        story_prefix: format!("bench-it-{}-", std::process::id()),
        rate: 50.0,
        duration_secs: 2.0,
        settle_secs: 0.2,
        drain_secs: 1.0,
        payload_bytes: 200,
        publishers: 2,
        connect_concurrency: 10,
        connect_timeout_secs: 10.0,
        source_ips: vec![Ipv4Addr::new(127, 0, 0, 1).into(), Ipv4Addr::new(127, 0, 0, 2).into()],
        procs: 1,
        threads: 1,
        server_pid: Some(std::process::id()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_event_reaches_every_stream_once() {
    let app = spawn_app(Arc::new(MemoryBroker::default())).await;
    let token = app.token("bench", "read:* write:*");

    let report = storyline_bench::run(config(&app.base, token, Scenario::Publish)).await.unwrap();

    assert_eq!((report.streams.wanted, report.streams.open, report.streams.failed), (20, 20, 0), "{report:#?}");
    assert_eq!(report.streams.open_at_end, 20);
    let publish = report.publish.as_ref().unwrap();
    assert_eq!((publish.ok, publish.failed), (100, 0), "{:?}", publish.failures);
    let deliveries = report.deliveries.as_ref().unwrap();
    assert_eq!(deliveries.expected, 100 * 10, "50 events per story × 10 streams per story × 2 stories");
    assert_eq!(deliveries.lost, 0);
    assert_eq!(deliveries.duplicated, 0);
    assert_eq!(deliveries.unexpected, 0);
    assert_eq!(deliveries.delivered, deliveries.expected);
    let latency = report.latency_ms.unwrap();
    assert_eq!(latency.count, deliveries.delivered);
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.max, "{latency:?}");
    let server = report.server.as_ref().unwrap();
    assert!(server.rss_before_bytes.is_some() && server.cpu_secs.is_some(), "{server:?}");
    assert!(report.render_table().contains("lost / duplicated / unexpected"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_stay_open_and_nothing_is_published() {
    let app = spawn_app(Arc::new(MemoryBroker::default())).await;
    let token = app.token("bench", "read:* write:*");
    let mut config = config(&app.base, token, Scenario::Idle);
    config.duration_secs = 0.5;

    let report = storyline_bench::run(config).await.unwrap();

    assert_eq!((report.streams.open, report.streams.open_at_end, report.streams.dropped), (20, 20, 0));
    assert!(report.publish.is_none() && report.deliveries.is_none());
    assert!(report.server.as_ref().unwrap().bytes_per_stream.is_some());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_reported_as_failed_streams() {
    let app = spawn_app(Arc::new(MemoryBroker::default())).await;
    let mut config = config(&app.base, "not-a-token".into(), Scenario::Idle);
    config.duration_secs = 0.1;

    let report = storyline_bench::run(config).await.unwrap();

    assert_eq!((report.streams.open, report.streams.failed), (0, 20));
    assert_eq!(report.streams.failures.get("status 401"), Some(&20), "{:?}", report.streams.failures);
    app.stop().await;
}
