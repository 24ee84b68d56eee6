//! OTLP traces end to end, against a real OTLP/gRPC receiver that this test runs (the collector's
//! `TraceService`, from opentelemetry-proto, served by tonic on a free port):
//!
//! - two `storyline serve` processes share one Redis; an event POSTed to instance A with a `traceparent` is read
//!   on a stream of instance B, and the spans received form one trace: A's ingress span (a child of the caller's
//!   span), A's broker append span (a child of the ingress span), and B's fan-out span (a child of the ingress
//!   span, joined through the trace context stored with the event in Redis) with its subscriber count;
//! - A's JSON log line for that request carries the trace id;
//! - with the collector down, the service works and counts the spans it dropped;
//! - to an `https://` OTLP/HTTP collector whose certificate comes from a private CA (a receiver this test runs
//!   with the test certificate), spans arrive once the CA is named in `OTEL_EXPORTER_OTLP_CERTIFICATE`;
//! - with a collector that accepts and never answers, the export queue fills and the spans refused are counted
//!   (`reason="queue_full"`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Running, logged_base_url_json, mint_token, spawn};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::span::SpanKind,
};
use storyline_testkit::{RedisServer, poll_until};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

/// A span as received, with the `service.instance.id` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    instance: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<KeyValue>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_of(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let instance = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.instance.id")
                .map(|kv| string_of(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    instance: instance.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Runs the receiver on a free port; returns its endpoint.
async fn start_collector(collector: Collector) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    endpoint
}

/// The same receiver over TLS with the test certificate (signed by the test CA); returns its `https://` endpoint.
async fn start_tls_collector(collector: Collector) -> String {
    use tonic::transport::{Identity, ServerTlsConfig};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let cert = std::fs::read(storyline_testkit::fixture("tls-cert.pem")).unwrap();
    let key = std::fs::read(storyline_testkit::fixture("tls-key.pem")).unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        .unwrap()
        .add_service(TraceServiceServer::new(collector));
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    endpoint
}

/// `storyline serve` on a free port of one Redis, exporting traces as `otel` says, as service instance `id`.
fn serve(redis: &RedisServer, otel: &[(&str, &str)], id: &str) -> (Running, std::sync::mpsc::Receiver<String>, String) {
    let attributes = format!("service.instance.id={id}");
    let mut env = vec![
        ("STORYLINE_REDIS_URL", redis.url()),
        ("STORYLINE_JWT_SECRET", SECRET.to_owned()),
        ("STORYLINE_LOG_FORMAT", "json".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_RESOURCE_ATTRIBUTES", attributes),
    ];
    env.extend(otel.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (running, rx) = spawn(&["serve", "--listen", "127.0.0.1:0"], &env);
    let base = logged_base_url_json(&rx);
    (running, rx, base)
}

fn token() -> String {
    mint_token(SECRET, &["--sub", "tracer", "--scope", "read:* write:*"])
}

/// Reads the stream until an event frame whose data contains `marker`.
async fn read_until(stream: &mut reqwest::Response, marker: &str) {
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(marker) {
            let chunk = stream.chunk().await.unwrap().expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{marker} not delivered; the stream had: {seen}"));
}

async fn post(client: &reqwest::Client, base: &str, token: &str, body: &str, traceparent: Option<&str>) {
    let mut request = client
        .post(format!("{base}/v1/stories/traced/events"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    assert_eq!(request.send().await.unwrap().status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_event_from_ingress_on_one_instance_to_delivery_on_another() {
    let collector = Collector::default();
    let endpoint = start_collector(collector.clone()).await;
    let redis = RedisServer::start();
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    let (_a, a_logs, a) = serve(&redis, &otel, "a");
    let (_b, _b_logs, b) = serve(&redis, &otel, "b");
    let token = token();
    let client = storyline_testkit::http_client();

    let mut stream = client.get(format!("{b}/v1/stories/traced/stream")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    // A first event through B's feed, so that the traced one arrives live (fanned out), not caught up.
    post(&client, &a, &token, r#"{"type":"chapter","data":"warm-up"}"#, None).await;
    read_until(&mut stream, "warm-up").await;

    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    post(&client, &a, &token, r#"{"type":"chapter","data":"traced"}"#, Some(&traceparent)).await;
    read_until(&mut stream, "traced").await;

    let spans = poll_until("ingress, append and fan-out spans of the trace", WAIT, || {
        let spans: Vec<Received> =
            collector.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let complete = spans.iter().any(|s| s.name == "fan-out")
            && spans.iter().any(|s| s.name == "broker append")
            && spans.iter().any(|s| s.name.starts_with("POST "));
        async move { complete.then_some(spans) }
    })
    .await;
    let find = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {spans:#?}"));
    let ingress = find("POST /v1/stories/{story}/events");
    assert_eq!(ingress.instance, "a");
    assert_eq!(ingress.parent_span_id, caller_span, "the ingress span continues the caller's trace");
    assert_eq!(ingress.kind, SpanKind::Server as i32);
    assert_eq!(ingress.attribute("http.response.status_code"), Some(&Value::IntValue(201)));
    let append = find("broker append");
    assert_eq!((append.instance.as_str(), append.parent_span_id.as_str()), ("a", ingress.span_id.as_str()));
    assert_eq!(append.attribute("db.system.name"), Some(&Value::StringValue("redis".into())));
    let fan_out = find("fan-out");
    assert_eq!(fan_out.instance, "b", "delivery is traced on the instance that fanned the event out");
    assert_eq!(fan_out.parent_span_id, ingress.span_id, "joined to the ingress span through the stored context");
    assert_eq!(fan_out.kind, SpanKind::Consumer as i32);
    assert_eq!(fan_out.attribute("storyline.subscribers"), Some(&Value::IntValue(1)));
    assert_eq!(fan_out.attribute("storyline.delivered"), Some(&Value::IntValue(1)));
    assert!(matches!(fan_out.attribute("storyline.slowest_write_ms"), Some(Value::DoubleValue(ms)) if *ms >= 0.0));
    let fan_outs = spans.iter().filter(|s| s.name == "fan-out").count();
    assert_eq!(fan_outs, 1, "one fan-out span per event per instance: {spans:#?}");

    // The request's log lines carry the trace id.
    let logged = std::iter::from_fn(|| a_logs.try_recv().ok())
        .any(|line| line.contains("storyline::access") && line.contains(trace_id) && line.contains("/events"));
    assert!(logged, "A's access log line of the traced POST carries its trace id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_the_service_works_and_counts_the_dropped_spans() {
    // A port with nothing listening: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}");
    let redis = RedisServer::start();
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
    let (_a, _logs, a) = serve(&redis, &otel, "down");
    let token = token();
    let client = storyline_testkit::http_client();
    let mut stream = client.get(format!("{a}/v1/stories/traced/stream")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    post(&client, &a, &token, r#"{"type":"chapter","data":"unexported"}"#, None).await;
    read_until(&mut stream, "unexported").await;
    poll_until("the dropped spans are counted", WAIT, || async {
        let text = client.get(format!("{a}/metrics")).send().await.ok()?.text().await.ok()?;
        let dropped =
            storyline_testkit::metric_value(&text, "storyline_trace_spans_dropped_total{reason=\"export_failed\"}")?;
        (dropped > 0.0).then_some(())
    })
    .await;
    post(&client, &a, &token, r#"{"type":"chapter","data":"still-served"}"#, None).await;
    read_until(&mut stream, "still-served").await;
}

/// An OTLP/HTTP receiver over HTTPS with the test certificate (`localhost`, `127.0.0.1`; signed by the test CA):
/// `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`; the span names received. Returns its base URL.
async fn start_https_collector(names: Arc<Mutex<Vec<String>>>) -> String {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use prost::Message as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let tls = storyline_server::tls::server_config(
        &storyline_testkit::fixture("tls-cert.pem"),
        &storyline_testkit::fixture("tls-key.pem"),
    )
    .unwrap();
    let names = web::Data::from(names);
    let server = HttpServer::new(move || {
        App::new().app_data(names.clone()).route(
            "/v1/traces",
            web::post().to(|names: web::Data<Mutex<Vec<String>>>, body: web::Bytes| async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return HttpResponse::BadRequest().finish();
                };
                let spans = request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
                names.lock().unwrap().extend(spans.map(|span| span.name));
                HttpResponse::Ok()
                    .content_type("application/x-protobuf")
                    .body(ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen_rustls_0_23(listener, (*tls).clone())
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_whose_ca_is_named_in_otel_exporter_otlp_certificate() {
    let names = Arc::new(Mutex::new(Vec::new()));
    let endpoint = start_https_collector(Arc::clone(&names)).await;
    let redis = RedisServer::start();
    let ca = storyline_testkit::fixture("tls-ca.pem");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
    ];
    let (_a, _logs, a) = serve(&redis, &otel, "tls");
    let token = token();
    let client = storyline_testkit::http_client();
    post(&client, &a, &token, r#"{"type":"chapter","data":"over-tls"}"#, None).await;
    poll_until("the POST's request span arrives at the https collector", WAIT, || {
        let arrived = names.lock().unwrap().iter().any(|n| n == "POST /v1/stories/{story}/events");
        async move { arrived.then_some(()) }
    })
    .await;
    let text = client.get(format!("{a}/metrics")).send().await.unwrap().text().await.unwrap();
    let failed =
        storyline_testkit::metric_value(&text, "storyline_trace_spans_dropped_total{reason=\"export_failed\"}");
    assert_eq!(failed, Some(0.0), "no export failed over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_grpc_collector_whose_ca_is_named_in_otel_exporter_otlp_certificate() {
    let collector = Collector::default();
    let endpoint = start_tls_collector(collector.clone()).await;
    let redis = RedisServer::start();
    let ca = storyline_testkit::fixture("tls-ca.pem");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
    ];
    let (_a, _logs, a) = serve(&redis, &otel, "grpc-tls");
    let token = token();
    let client = storyline_testkit::http_client();
    post(&client, &a, &token, r#"{"type":"chapter","data":"over-grpc-tls"}"#, None).await;
    poll_until("the POST's request span arrives at the gRPC collector over TLS", WAIT, || {
        let arrived = collector.spans.lock().unwrap().iter().any(|s| s.name == "POST /v1/stories/{story}/events");
        async move { arrived.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_ended_while_the_export_queue_is_full_are_counted() {
    // A collector that accepts connections and never answers: the first export hangs, and the queue behind it
    // (two spans) fills.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", stalled.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            held.push(socket);
        }
    });
    let redis = RedisServer::start();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "120000"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "120000"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
    ];
    let (_a, _logs, a) = serve(&redis, &otel, "stalled");
    let token = token();
    let client = storyline_testkit::http_client();
    let series = "storyline_trace_spans_dropped_total{reason=\"queue_full\"}";
    let before = client.get(format!("{a}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(storyline_testkit::metric_value(&before, series), Some(0.0), "registered at 0:\n{before}");
    poll_until("spans refused by the full queue are counted", WAIT, || async {
        post(&client, &a, &token, r#"{"type":"chapter","data":"queued"}"#, None).await;
        let text = client.get(format!("{a}/metrics")).send().await.ok()?.text().await.ok()?;
        (storyline_testkit::metric_value(&text, series)? > 0.0).then_some(())
    })
    .await;
    let text = client.get(format!("{a}/metrics")).send().await.unwrap().text().await.unwrap();
    let failed =
        storyline_testkit::metric_value(&text, "storyline_trace_spans_dropped_total{reason=\"export_failed\"}");
    assert_eq!(failed, Some(0.0), "nothing failed yet: the export is still waiting");
}
