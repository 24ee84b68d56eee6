//! Fault 4: a reader that stops reading (its socket's buffers full) while a story carries large events.
//!
//! It must not grow the instance's memory without bound (the story's frames are shared and windowed, the stalled
//! connection holds a cursor, not a queue), must not slow the other readers of the story (when it is cut, they
//! have received far more than it could), is disconnected after the slow-consumer timeout with reason
//! `slow_consumer`, and loses nothing when it resumes with `Last-Event-ID`.

use std::{collections::BTreeSet, time::Duration};

use bytes::BytesMut;
use storyline_core::EventId;
use storyline_testkit::{SseStream, poll_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Ack, Cluster, DEADLINE, EVENT_TYPE, PublishReport, Reconnect, SubscribeOptions, Subscriber};

/// `STORYLINE_SLOW_CONSUMER_SECS`: long enough for the healthy readers to receive everything first.
const SLOW_CONSUMER: Duration = Duration::from_secs(8);
const EVENTS: u64 = 6_000;
/// Bytes of padding per event.
const PAD: usize = 16 * 1024;
const STORY: &str = "slow-0";
/// What the instance's memory may grow by while the story carries [`EVENTS`] x [`PAD`] (94 MiB). Its buffers are
/// bounded by design: the fan-out window (4 MiB), the Redis live reader's per-story channel (256 events, 4 MiB
/// here) and, for a healthy reader that falls behind the window on this busy machine, a catch-up page of 256
/// events (4 MiB, decoded and encoded), plus connections and the allocator's slack. A reader whose frames were
/// queued for it would need all 94. (With 60 KiB events a catch-up page is 15 MiB: one run of an earlier version
/// of this test peaked at +85 MiB with two healthy readers catching up at once.)
const MEMORY_BOUND: u64 = 40 << 20;

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// A stream opened on a raw socket with a 4 KiB receive buffer, then never read.
async fn stalled_reader(base: &str, token: &str) -> tokio::net::TcpStream {
    let address: std::net::SocketAddr =
        base.strip_prefix("http://").expect("an http:// base").parse().expect("an address");
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(address).await.expect("connect");
    let request = format!(
        "GET /v1/stories/{STORY}/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Last-Event-ID: 0\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send the GET");
    stream
}

/// The ids of the complete event frames in what a stalled reader eventually read: the HTTP/1.1 response's
/// chunked body, decoded up to its last complete chunk.
fn complete_event_ids(bytes: &[u8]) -> Vec<EventId> {
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(bytes.len(), |p| p + 4);
    let mut rest = &bytes[start..];
    let mut body = BytesMut::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let Some(size) = std::str::from_utf8(&rest[..line_end]).ok().and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            break;
        };
        let chunk = &rest[line_end + 2..];
        if size == 0 || chunk.len() < size + 2 {
            break;
        }
        body.extend_from_slice(&chunk[..size]);
        rest = &chunk[size + 2..];
    }
    let mut ids = Vec::new();
    while let Some(frame) = storyline_hub::take_frame(&mut body) {
        if let (Some(id), Some(_)) = (frame.id.as_deref(), frame.data.as_deref()) {
            ids.push(EventId::parse(id).expect("an event id"));
        }
    }
    ids
}

async fn slow_consumer_closes(cluster: &Cluster) -> f64 {
    let closes = cluster.metric_total(0, "storyline_connections_closed_total", "reason=\"slow_consumer\"").await;
    closes.expect("the instance answers /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_cut_without_growing_memory_or_slowing_others_and_loses_nothing() {
    let slow = SLOW_CONSUMER.as_secs().to_string();
    let cluster = Cluster::start(1, &[("STORYLINE_SLOW_CONSUMER_SECS", slow.as_str())]).await;
    let pid = cluster.instance(0).pid();
    let healthy: Vec<Subscriber> = (0..2)
        .map(|n| {
            let options = SubscribeOptions { reconnect: Reconnect::SameTarget, ..SubscribeOptions::default() };
            cluster.subscriber(&format!("healthy-{n}"), STORY, cluster.targets(&[0]), options)
        })
        .collect();
    for subscriber in &healthy {
        subscriber.wait_connected(1).await;
    }
    let mut stalled = stalled_reader(&cluster.url(0), &cluster.reader_token).await;
    let rss_before = rss(pid);

    // Publish large events as fast as the instance acknowledges them, sampling its memory.
    let (client, base, token) = (cluster.client.clone(), cluster.url(0), cluster.writer_token.clone());
    let publishing = tokio::spawn(async move {
        let pad = "x".repeat(PAD);
        let (mut acked, mut rss_peak) = (Vec::new(), 0);
        for seq in 0..EVENTS {
            let key = format!("{STORY}-{seq}");
            let body = serde_json::json!({ "type": EVENT_TYPE, "data": { "key": key, "seq": seq, "pad": pad } });
            let answer = client
                .post(format!("{base}/v1/stories/{STORY}/events"))
                .bearer_auth(&token)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
                .expect("POST");
            assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap_or_default());
            let receipt: serde_json::Value = answer.json().await.expect("a receipt");
            let id = EventId::parse(receipt["id"].as_str().expect("an id")).expect("a valid id");
            acked.push(Ack { id, status: 201 });
            if seq % 50 == 0 {
                rss_peak = rss_peak.max(rss(pid));
            }
        }
        (acked, rss_peak)
    });

    // The stalled reader is cut, counted as a slow consumer. By then the healthy readers are far ahead of it:
    // it did not pace them (if it did, they would have no more than it had when it was cut).
    let healthy_at_cut = poll_until("the stalled reader is cut as a slow consumer", DEADLINE * 2, || async {
        let at_this_moment = healthy.iter().map(Subscriber::delivered).min().unwrap_or(0);
        (slow_consumer_closes(&cluster).await >= 1.0).then_some(at_this_moment)
    })
    .await;
    let (acked, rss_peak) = publishing.await.expect("the publisher");
    let published_bytes = EVENTS * PAD as u64;
    let want: BTreeSet<EventId> = acked.iter().map(|a| a.id).collect();
    poll_until("the healthy readers receive every event", DEADLINE, || async {
        healthy.iter().all(|s| s.has_all(&want)).then_some(())
    })
    .await;
    let rss_peak = rss_peak.max(rss(pid));
    let mut received = Vec::new();
    tokio::time::timeout(DEADLINE, stalled.read_to_end(&mut received)).await.expect("the cut connection ends").ok(); // a reset after the cut is an end too
    let seen = complete_event_ids(&received);

    // It resumes after the last event it read completely, and gets the rest: nothing lost.
    let resume = seen.last().map_or_else(|| "0".to_owned(), EventId::to_string);
    let response = cluster
        .client
        .get(format!("{}/v1/stories/{STORY}/stream", cluster.url(0)))
        .bearer_auth(&cluster.reader_token)
        .header("last-event-id", &resume)
        .send()
        .await
        .expect("resume");
    assert_eq!(response.status(), 200);
    let rest = want.iter().filter(|id| seen.last().is_none_or(|last| *id > last)).count();
    let after_resume: Vec<EventId> = SseStream::new(response)
        .events(rest, DEADLINE)
        .await
        .iter()
        .map(|frame| EventId::parse(frame.id.as_deref().expect("an id")).expect("a valid id"))
        .collect();
    let union: BTreeSet<EventId> = seen.iter().chain(&after_resume).copied().collect();

    // Assert
    let grown = rss_peak.saturating_sub(rss_before);
    let injected = format!(
        "a reader stopped reading (4 KiB receive buffer) while {EVENTS} events of {} KiB ({} MiB) were published; \
         instance memory {} MiB before, peak {} MiB (+{} MiB); the stalled reader read {} events before it was cut \
         as a slow consumer after {SLOW_CONSUMER:?} without draining (the healthy readers had {healthy_at_cut} by \
         then) and {} after resuming with Last-Event-ID {resume}",
        PAD / 1024,
        published_bytes >> 20,
        rss_before >> 20,
        rss_peak >> 20,
        grown >> 20,
        seen.len(),
        after_resume.len(),
    );
    let cuts = slow_consumer_closes(&cluster).await;
    let healthy_connections: Vec<usize> = healthy.iter().map(Subscriber::connections).collect();
    let tally =
        cluster.finish("slow_readers", injected, Vec::new(), vec![PublishReport::manual(STORY, acked)], healthy).await;
    tally.assert_exact();
    assert_eq!(union, want, "the stalled reader, before its cut and after its resume, got every event");
    assert_eq!(cuts, 1.0, "only the stalled reader was cut as a slow consumer");
    assert!(healthy_connections.iter().all(|n| *n == 1), "no healthy reader reconnected: {healthy_connections:?}");
    assert!(
        healthy_at_cut > 2 * seen.len(),
        "the healthy readers had {healthy_at_cut} events when the stalled one was cut with {}: they were not held \
         back to its pace",
        seen.len()
    );
    assert!(
        grown < MEMORY_BOUND,
        "memory grew by {} MiB while {} MiB went through a stalled reader's story",
        grown >> 20,
        published_bytes >> 20
    );
}
