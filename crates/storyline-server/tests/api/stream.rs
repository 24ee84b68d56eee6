//! `GET /v1/stories/{story}/stream`.

use std::{collections::HashSet, time::Duration};

use serde_json::json;
use storyline_testkit::test_config;

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, retention, spawn, spawn_with};

both_brokers!(
    a_stream_starts_with_a_jittered_retry_and_sets_no_buffering_headers,
    retry_hints_differ_between_connections,
    without_a_resume_id_only_new_events_arrive,
    frames_carry_id_event_and_a_one_line_envelope,
    last_event_id_resumes_exactly_after_that_event,
    the_query_parameter_resumes_and_the_header_wins,
    resuming_from_zero_replays_the_retained_history,
    a_malformed_resume_id_is_400_before_the_stream_starts,
    a_resume_point_older_than_retention_yields_a_gap_frame_then_the_oldest_events,
    replay_then_live_has_no_gap_and_no_duplicate_at_the_seam,
    several_publishers_and_subscribers_each_see_every_event_once_in_order,
    a_dropped_reader_resumes_exactly_where_it_left_off,
    idle_streams_receive_heartbeat_comments,
    shutdown_ends_open_streams_cleanly,
    a_drain_ends_streams_one_by_one_over_its_window_while_the_instance_keeps_serving,
    streams_of_different_stories_are_independent,
    a_reader_that_stops_reading_while_retention_trims_gets_a_gap_frame_never_a_silent_hole,
    an_empty_resume_id_means_no_resume_id,
    a_resume_id_newer_than_the_story_gets_a_gap_and_the_retained_history,
    a_reader_resuming_a_story_that_expired_gets_a_gap_frame_never_a_silent_hole,
    a_reader_whose_socket_stops_draining_is_disconnected_and_loses_nothing_on_resume,
    a_stream_ends_with_a_token_expired_frame_when_its_token_expires_and_a_new_token_resumes_it,
    past_the_instance_stream_limit_a_new_stream_gets_503_and_a_freed_place_is_reusable,
);

async fn a_stream_starts_with_a_jittered_retry_and_sets_no_buffering_headers(kind: Kind) {
    let app = spawn(kind).await;
    let mut stream = app.open_stream("s", None).await;
    assert_eq!(stream.status, 200);
    let header = |name: &str| stream.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(header("content-type"), "text/event-stream");
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    let first = stream.next_frame(FRAME).await.expect("a first frame");
    let retry = first.retry.expect("the first frame is retry:");
    assert!((1_000..=1_500).contains(&retry), "retry {retry} is the 1000 ms base plus up to 50%");
    assert!(
        stream.raw.starts_with(b"retry: "),
        "retry is the very first bytes: {:?}",
        String::from_utf8_lossy(&stream.raw)
    );
}

async fn retry_hints_differ_between_connections(kind: Kind) {
    let app = spawn(kind).await;
    let mut hints = HashSet::new();
    for _ in 0..8 {
        let mut stream = app.open_stream("s", None).await;
        hints.insert(stream.next_frame(FRAME).await.and_then(|f| f.retry).expect("retry"));
    }
    assert!(hints.len() > 1, "8 connections got one retry value {hints:?}: no jitter");
}

async fn without_a_resume_id_only_new_events_arrive(kind: Kind) {
    let app = spawn(kind).await;
    app.publish("s", "old", json!(1)).await;
    let mut stream = app.open_stream("s", None).await;
    let fresh = app.publish("s", "new", json!(2)).await;
    let event = stream.next_event(FRAME).await;
    assert_eq!(event.id.as_deref(), fresh["id"].as_str(), "the first event is the one posted after opening");
    assert_eq!(event.event.as_deref(), Some("new"));
}

async fn frames_carry_id_event_and_a_one_line_envelope(kind: Kind) {
    let app = spawn(kind).await;
    let mut stream = app.open_stream("tale", None).await;
    let receipt = app.publish("tale", "chapter", json!({"text": "a\nb"})).await;
    let frame = stream.next_event(FRAME).await;
    assert_eq!(frame.id.as_deref(), receipt["id"].as_str());
    assert_eq!(frame.event.as_deref(), Some("chapter"));
    let data = frame.data.clone().unwrap();
    assert!(!data.contains('\n'), "data is one line: {data:?}");
    let envelope = frame.json();
    assert_eq!(
        envelope,
        json!({"id": receipt["id"], "story": "tale", "type": "chapter", "data": {"text": "a\nb"}, "author": "tester", "ts": receipt["ts"]})
    );
}

async fn last_event_id_resumes_exactly_after_that_event(kind: Kind) {
    let app = spawn(kind).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.publish("s", "chapter", json!(n)).await["id"].as_str().unwrap().to_owned());
    }
    let mut stream = app.open_stream("s", Some(&ids[1])).await;
    let got: Vec<_> = stream.events(3, FRAME).await.into_iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(got, ids[2..].to_vec());
}

async fn the_query_parameter_resumes_and_the_header_wins(kind: Kind) {
    let app = spawn(kind).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(app.publish("s", "chapter", json!(n)).await["id"].as_str().unwrap().to_owned());
    }
    let by_query = app
        .client
        .get(app.url(&format!("/v1/stories/s/stream?last_event_id={}", ids[2])))
        .bearer_auth(app.admin_token());
    let mut stream = app.open_stream_request(by_query).await;
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(ids[3].as_str()), "query parameter");
    let both = app
        .client
        .get(app.url(&format!("/v1/stories/s/stream?last_event_id={}", ids[2])))
        .header("last-event-id", &ids[0])
        .bearer_auth(app.admin_token());
    let mut stream = app.open_stream_request(both).await;
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(ids[1].as_str()), "the header wins");
}

async fn resuming_from_zero_replays_the_retained_history(kind: Kind) {
    let app = spawn(kind).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.publish("s", "chapter", json!(n)).await["id"].as_str().unwrap().to_owned());
    }
    let mut stream = app.open_stream("s", Some("0")).await;
    let got: Vec<_> = stream.events(3, FRAME).await.into_iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(got, ids);
}

async fn a_malformed_resume_id_is_400_before_the_stream_starts(kind: Kind) {
    let app = spawn(kind).await;
    for bad in ["abc", "1", "1-", "-1", "1-2-3", "99999999999999999999999-0"] {
        let by_header =
            app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(app.admin_token()).header("last-event-id", bad);
        assert_problem(by_header.send().await.unwrap(), 400, &format!("header {bad}")).await;
        let by_query = app
            .client
            .get(app.url(&format!("/v1/stories/s/stream?last_event_id={bad}")))
            .bearer_auth(app.admin_token());
        assert_problem(by_query.send().await.unwrap(), 400, &format!("query {bad}")).await;
    }
}

async fn a_resume_point_older_than_retention_yields_a_gap_frame_then_the_oldest_events(kind: Kind) {
    let app = spawn_with(kind, retention(5), test_config()).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(app.publish("s", "chapter", json!(n)).await["id"].as_str().unwrap().to_owned());
    }
    let retained = app.all_ids("s").await;
    assert!(retained.len() >= 5 && retained.len() < 40, "retention trimmed the log: {} kept", retained.len());
    let mut stream = app.open_stream("s", Some(&ids[0])).await;
    let gap = stream.next_event(FRAME).await;
    assert_eq!(gap.event.as_deref(), Some("gap"), "first a gap frame: {gap:?}");
    assert_eq!(gap.id, None, "the gap frame does not move the client's Last-Event-ID");
    assert_eq!(gap.json(), json!({"requested": ids[0], "resumed_from": retained[0]}));
    let got: Vec<_> = stream.events(retained.len(), FRAME).await.into_iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(got, retained, "then every retained event, oldest first");
    // Resuming inside the retained range is exact: no gap frame.
    let mut stream = app.open_stream("s", Some(&retained[0])).await;
    let next = stream.next_event(FRAME).await;
    assert_eq!(
        next.id.as_deref(),
        Some(retained[1].as_str()),
        "no gap when nothing after the resume point was trimmed"
    );
}

async fn replay_then_live_has_no_gap_and_no_duplicate_at_the_seam(kind: Kind) {
    let app = spawn(kind).await;
    for n in 0..50 {
        app.publish("s", "chapter", json!(n)).await;
    }
    // Keep publishing while the reader replays, so appends land during the replay.
    let publisher = {
        let publisher = app.publisher();
        tokio::spawn(async move {
            for n in 50..150 {
                publisher.publish("s", "chapter", json!(n)).await;
            }
        })
    };
    let mut stream = app.open_stream("s", Some("0")).await;
    let got: Vec<_> = stream.events(150, FRAME).await.into_iter().map(|f| f.id.unwrap()).collect();
    publisher.await.unwrap();
    assert_eq!(got, app.all_ids("s").await, "every event exactly once, in order");
}

async fn several_publishers_and_subscribers_each_see_every_event_once_in_order(kind: Kind) {
    let app = spawn(kind).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(app.open_stream("s", None).await);
    }
    for reader in &mut readers {
        reader.next_frame(FRAME).await; // retry: — the stream is open and registered
    }
    let publishers = (0..4).map(|p| {
        let publisher = app.publisher();
        tokio::spawn(async move {
            for n in 0..25 {
                publisher.publish("s", "chapter", json!({"p": p, "n": n})).await;
            }
        })
    });
    for p in futures::future::join_all(publishers).await {
        p.unwrap();
    }
    let all = app.all_ids("s").await;
    assert_eq!(all.len(), 100);
    for (i, reader) in readers.iter_mut().enumerate() {
        let got: Vec<_> = reader.events(100, FRAME).await.into_iter().map(|f| f.id.unwrap()).collect();
        assert_eq!(got, all, "reader {i} saw every event once, in id order");
    }
}

async fn a_dropped_reader_resumes_exactly_where_it_left_off(kind: Kind) {
    let app = spawn(kind).await;
    let mut stream = app.open_stream("s", Some("0")).await;
    for n in 0..10 {
        app.publish("s", "chapter", json!(n)).await;
    }
    let first = stream.events(4, FRAME).await;
    let last_seen = first.last().unwrap().id.clone().unwrap();
    drop(stream);
    for n in 10..15 {
        app.publish("s", "chapter", json!(n)).await;
    }
    let mut resumed = app.open_stream("s", Some(&last_seen)).await;
    let rest: Vec<_> = resumed.events(11, FRAME).await.into_iter().map(|f| f.id.unwrap()).collect();
    let mut seen: Vec<_> = first.into_iter().map(|f| f.id.unwrap()).collect();
    seen.extend(rest);
    assert_eq!(seen, app.all_ids("s").await, "no gap, no duplicate across the reconnect");
}

async fn idle_streams_receive_heartbeat_comments(kind: Kind) {
    let config = storyline_server::ServerConfig { heartbeat: Duration::from_millis(300), ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let mut stream = app.open_stream("s", None).await;
    let mut heartbeats = 0;
    while heartbeats < 3 {
        let frame = stream.next_frame(FRAME).await.expect("stream stays open");
        assert!(!frame.is_event(), "no events were posted: {frame:?}");
        heartbeats += usize::from(!frame.comments.is_empty());
    }
}

async fn shutdown_ends_open_streams_cleanly(kind: Kind) {
    let app = spawn(kind).await;
    let mut stream = app.open_stream("s", None).await;
    let receipt = app.publish("s", "chapter", json!(1)).await;
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), receipt["id"].as_str());
    let stopping = {
        let signal = app.shutdown_signal();
        tokio::spawn(async move { signal.trigger() })
    };
    stopping.await.unwrap();
    let rest = stream.until_end(FRAME).await;
    assert!(rest.iter().all(|f| !f.is_event()), "no further events: {rest:?}");
    assert!(rest.last().is_some_and(|f| f.retry.is_some()), "the last frame is a fresh retry hint: {rest:?}");
    assert!(stream.raw.ends_with(b"\n\n"), "the stream ended at a frame boundary");
    let refused = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(app.admin_token()).send().await.unwrap();
    assert!(refused.headers().get("retry-after").is_some(), "draining says when to come back");
    let problem = assert_problem(refused, 503, "new stream while draining").await;
    assert_eq!(problem["type"], "urn:storyline:problem:draining", "not reported as a broker outage");
    app.stop().await;
}

/// A rolling deploy: the drain must not send every reader to the other instances in the same instant. Streams
/// end one by one through the window, each after a jittered `retry:` frame, while readiness fails at once, new
/// streams are refused, and publishing and the streams still open keep working; `stop` returns once the last
/// stream has ended.
async fn a_drain_ends_streams_one_by_one_over_its_window_while_the_instance_keeps_serving(kind: Kind) {
    const STREAMS: usize = 20;
    let config = storyline_server::ServerConfig { drain_window: Duration::from_secs(2), ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(app.open_stream("s", None).await);
    }
    let shutdown = app.shutdown_signal();
    shutdown.trigger();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness fails as soon as the drain starts");
    let refused = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(app.admin_token()).send().await.unwrap();
    assert_eq!(
        assert_problem(refused, 503, "new stream while draining").await["type"],
        "urn:storyline:problem:draining"
    );

    // Each stream ends on its own: whenever one ends, the others may still be open; and the instance still takes
    // POSTs meanwhile (a load balancer needs a moment to act on readiness). That the streams still open deliver
    // them is the rolling-deploy fault test's count (`tests/faults/rolling_deploy.rs`): here a stream may reach
    // its drain moment before a given event reaches it.
    let mut ended = Vec::new();
    let mut open_when_one_ended = Vec::new();
    let mut tasks: futures::stream::FuturesUnordered<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| async move {
            let frames = stream.until_end(Duration::from_secs(10)).await;
            (i, frames)
        })
        .collect();
    let mut published = Vec::new();
    while let Some((i, frames)) = futures::StreamExt::next(&mut tasks).await {
        open_when_one_ended.push(shutdown.open_streams());
        assert!(frames.last().is_some_and(|f| f.retry.is_some()), "stream {i} ends with a retry hint: {frames:?}");
        ended.push(frames.last().and_then(|f| f.retry));
        if published.len() < 3 {
            let receipt = app.publish("s", "chapter", json!(published.len())).await;
            published.push(receipt["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ended.len(), STREAMS);
    assert!(
        open_when_one_ended.iter().filter(|open| **open > 0).count() >= STREAMS / 2,
        "streams did not end in one wave (streams open at each end: {open_when_one_ended:?})"
    );
    let hints: HashSet<_> = ended.iter().collect();
    assert!(hints.len() > 1, "the retry hints are jittered: {ended:?}");
    assert_eq!(published.len(), 3, "publishing worked throughout the drain");
    assert_eq!(shutdown.open_streams(), 0);
    app.stop().await;
}

async fn streams_of_different_stories_are_independent(kind: Kind) {
    let app = spawn(kind).await;
    let mut a = app.open_stream("a", None).await;
    let mut b = app.open_stream("b", None).await;
    let in_b = app.publish("b", "chapter", json!("b")).await;
    let in_a = app.publish("a", "chapter", json!("a")).await;
    assert_eq!(a.next_event(FRAME).await.id.as_deref(), in_a["id"].as_str());
    assert_eq!(b.next_event(FRAME).await.id.as_deref(), in_b["id"].as_str());
}

async fn a_reader_that_stops_reading_while_retention_trims_gets_a_gap_frame_never_a_silent_hole(kind: Kind) {
    let app = spawn_with(kind, retention(5), test_config()).await;
    let mut stream = app.open_stream("s", None).await;
    let first = app.publish("s", "chapter", json!("first")).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(first.as_str()));
    // Stop reading while far more is published than socket buffers and the log hold (600 x 60 KB, 5 retained).
    let pad = "x".repeat(60_000);
    let publisher = app.publisher();
    let mut ids = Vec::new();
    for n in 0..600 {
        ids.push(
            publisher.publish("s", "chapter", json!({"n": n, "pad": pad})).await["id"].as_str().unwrap().to_owned(),
        );
    }
    // Every event that arrives is the next in append order, unless a gap frame says what was skipped.
    let (mut expected, mut gaps) = (0, 0);
    while expected < ids.len() {
        let frame = stream.next_event(FRAME).await;
        if frame.event.as_deref() == Some("gap") {
            gaps += 1;
            let gap = frame.json();
            let at = if expected == 0 { first.clone() } else { ids[expected - 1].clone() };
            assert_eq!(gap["requested"], at.as_str(), "the gap starts at the last delivered event");
            let resumed = gap["resumed_from"].as_str().unwrap();
            expected = ids.iter().position(|id| id == resumed).expect("the gap resumes at a published id");
        } else {
            assert_eq!(frame.id.as_deref(), Some(ids[expected].as_str()), "event {expected}: skipped without a gap");
            expected += 1;
        }
    }
    assert!(gaps > 0, "the reader fell behind retention, so at least one gap frame was due");
}

async fn an_empty_resume_id_means_no_resume_id(kind: Kind) {
    let app = spawn(kind).await;
    app.publish("s", "old", json!(1)).await;
    let by_header =
        app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(app.admin_token()).header("last-event-id", "");
    let mut stream = app.open_stream_request(by_header).await;
    assert_eq!(stream.status, 200);
    let by_query = app.client.get(app.url("/v1/stories/s/stream?last_event_id=")).bearer_auth(app.admin_token());
    let mut stream2 = app.open_stream_request(by_query).await;
    assert_eq!(stream2.status, 200);
    let fresh = app.publish("s", "new", json!(2)).await;
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), fresh["id"].as_str(), "live only (header)");
    assert_eq!(stream2.next_event(FRAME).await.id.as_deref(), fresh["id"].as_str(), "live only (query)");
}

async fn a_resume_id_newer_than_the_story_gets_a_gap_and_the_retained_history(kind: Kind) {
    let app = spawn(kind).await;
    let only = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    let mut stream = app.open_stream("s", Some("99999999999999-0")).await;
    let gap = stream.next_event(FRAME).await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.json(), json!({"requested": "99999999999999-0", "resumed_from": only}));
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(only.as_str()), "then the retained history");
}

async fn a_reader_whose_socket_stops_draining_is_disconnected_and_loses_nothing_on_resume(kind: Kind) {
    let config = storyline_server::ServerConfig {
        heartbeat: Duration::from_millis(100),
        slow_consumer_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let mut stream = app.open_stream("s", None).await;
    let first = app.publish("s", "chapter", json!("first")).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(first.as_str()));
    // Stop reading while far more is published than the socket buffers hold.
    let pad = "x".repeat(60_000);
    let publisher = app.publisher();
    for n in 0..400 {
        publisher.publish("s", "chapter", json!({"n": n, "pad": pad})).await;
    }
    // The server cuts the stalled stream off. Waiting for that before reading again keeps the test from racing
    // the sweeper: a reader that resumed reading first could catch up and never be cut.
    assert_counted_close(&app, "slow_consumer").await;
    // Reading now drains what the sockets buffered, then the stream ends (cleanly or with a reset).
    let mut received = vec![first];
    loop {
        match tokio::time::timeout(FRAME, stream.try_next_frame()).await {
            Err(_) => panic!("the stream was counted as cut but is still open ({} events read)", received.len()),
            Ok(Ok(Some(frame))) => received.extend(frame.id),
            Ok(Ok(None) | Err(_)) => break,
        }
    }
    let all = app.all_ids("s").await;
    assert!(received.len() < all.len(), "the reader was cut off before the end ({} of {})", received.len(), all.len());
    assert_eq!(received[..], all[..received.len()], "what arrived before the cut is the log's prefix");
    // Resuming with the last id it saw, it gets exactly the rest. The resumed reader must itself keep up: on a
    // loaded machine it can be cut again, and then it resumes again, as EventSource would.
    let mut rest: Vec<String> = Vec::new();
    let mut opened = 0;
    while received.len() + rest.len() < all.len() {
        opened += 1;
        assert!(opened <= 20, "{opened} resumes and still {} of {} events", rest.len(), all.len() - received.len());
        let last = rest.last().or(received.last()).cloned();
        let mut resumed = app.open_stream("s", last.as_deref()).await;
        assert_eq!(resumed.status, 200);
        while received.len() + rest.len() < all.len() {
            match tokio::time::timeout(FRAME, resumed.try_next_frame()).await {
                Err(_) => panic!("no frame within {FRAME:?} on a resumed stream ({} events so far)", rest.len()),
                Ok(Ok(Some(frame))) => rest.extend(frame.id),
                Ok(Ok(None) | Err(_)) => break,
            }
        }
    }
    assert_eq!(rest[..], all[received.len()..], "nothing lost or repeated across the slow-consumer disconnect");
}

async fn a_stream_ends_with_a_token_expired_frame_when_its_token_expires_and_a_new_token_resumes_it(kind: Kind) {
    let config = storyline_server::ServerConfig { heartbeat: Duration::from_millis(300), ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let opened_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let short = app.token_with("reader", "read:*", None, Duration::from_secs(2));
    let request = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&short);
    let mut stream = app.open_stream_request(request).await;
    assert_eq!(stream.status, 200);
    let before = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next_event(FRAME).await.id.as_deref(), Some(before.as_str()));

    // The server closes the stream itself, at a frame boundary, right after telling the client why.
    let rest = stream.until_end(FRAME).await;
    let last = rest.last().expect("a final frame");
    assert_eq!(last.event.as_deref(), Some("token-expired"), "the last frame says why: {rest:?}");
    assert_eq!(last.id, None, "it moves no Last-Event-ID");
    let expired_at = last.json()["expired_at"].as_u64().expect("data says when the token expired");
    let ended_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((opened_at..=ended_at).contains(&expired_at), "expired_at {expired_at} within the stream's life");
    assert!(stream.raw.ends_with(b"\n\n"), "the stream ended at a frame boundary");

    // Events posted meanwhile are not lost: a new token and Last-Event-ID pick up exactly after the last one seen.
    let after = app.publish("s", "chapter", json!(2)).await["id"].as_str().unwrap().to_owned();
    let fresh = app.token_with("reader", "read:*", None, Duration::from_secs(600));
    let request = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(&fresh).header("last-event-id", &before);
    let mut resumed = app.open_stream_request(request).await;
    assert_eq!(resumed.next_event(FRAME).await.id.as_deref(), Some(after.as_str()));
    assert_counted_close(&app, "token_expired").await;
}

async fn past_the_instance_stream_limit_a_new_stream_gets_503_and_a_freed_place_is_reusable(kind: Kind) {
    let config = storyline_server::ServerConfig {
        heartbeat: Duration::from_millis(200),
        max_streams: std::num::NonZeroUsize::new(2),
        ..test_config()
    };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let mut first = app.open_stream("s", None).await;
    let second = app.open_stream("t", None).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));

    let refused = app.client.get(app.url("/v1/stories/s/stream")).bearer_auth(app.admin_token()).send().await.unwrap();
    assert!(refused.headers().get("retry-after").is_some(), "tells the client when to come back");
    let problem = assert_problem(refused, 503, "third stream").await;
    assert_eq!(problem["type"], "urn:storyline:problem:at-capacity");

    // Publishers are not affected, and open streams keep working.
    let id = app.publish("s", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(first.next_event(FRAME).await.id.as_deref(), Some(id.as_str()));

    // A closed stream gives its place back.
    drop(second);
    storyline_testkit::poll_until("a place frees up once a stream closes", FRAME, || async {
        let response =
            app.client.get(app.url("/v1/stories/t/stream")).bearer_auth(app.admin_token()).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

/// The close was counted under its reason. The series exist from the start at 0 and the registry is
/// process-wide, so this waits for a non-zero count (the reader's tier is `member`; only these tests cause these
/// reasons).
async fn assert_counted_close(app: &storyline_testkit::TestApp, reason: &str) {
    let series = format!("storyline_connections_closed_total{{tier=\"member\",reason=\"{reason}\"}}");
    storyline_testkit::poll_until(&format!("the close is counted as {reason}"), FRAME, || async {
        (app.metric(&series).await >= 1.0).then_some(())
    })
    .await;
}

/// With a story TTL, a story left alone expires; a reader resuming from one of its ids gets a `gap` frame first,
/// whether the story is still empty (the id is newer than anything in it) or has started afresh, and then the new
/// story's events. A live-only reader of the new story gets no gap.
async fn a_reader_resuming_a_story_that_expired_gets_a_gap_frame_never_a_silent_hole(kind: Kind) {
    let ttl = storyline_core::Retention { story_ttl: Some(Duration::from_millis(300)), ..retention(10_000) };
    let app = spawn_with(kind, ttl, test_config()).await;
    let first = app.publish("fading", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    let last = app.publish("fading", "chapter", json!(2)).await["id"].as_str().unwrap().to_owned();
    storyline_testkit::poll_until("the story to expire", FRAME, || async {
        app.all_ids("fading").await.is_empty().then_some(())
    })
    .await;

    let mut while_empty = app.open_stream("fading", Some(&last)).await;
    let gap = while_empty.next_event(FRAME).await;
    assert_eq!(gap.event.as_deref(), Some("gap"), "resumed while the story is empty: {gap:?}");
    let mut live_only = app.open_stream("fading", None).await;
    let new = app.publish("fading", "chapter", json!(3)).await["id"].as_str().unwrap().to_owned();
    let mut after_restart = app.open_stream("fading", Some(&first)).await;

    assert_eq!(while_empty.next_event(FRAME).await.id.as_deref(), Some(new.as_str()), "then the new event");
    let gap = after_restart.next_event(FRAME).await;
    assert_eq!(gap.event.as_deref(), Some("gap"), "resumed after the story started afresh: {gap:?}");
    assert_eq!(gap.json()["requested"], json!(first), "the gap starts at the resume id");
    assert_eq!(after_restart.next_event(FRAME).await.id.as_deref(), Some(new.as_str()), "then the new event");
    let frame = live_only.next_event(FRAME).await;
    assert_eq!(frame.id.as_deref(), Some(new.as_str()), "a live-only reader gets the new event, no gap: {frame:?}");
}
