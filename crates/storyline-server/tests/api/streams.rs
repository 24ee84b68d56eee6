//! `GET /v1/streams?stories=a,b,c`: several stories on one stream, resumable with a composite cursor.

use std::{collections::HashMap, time::Duration};

use serde_json::json;
use storyline_testkit::{Frame, SseStream, TestApp, test_config};

use crate::helpers::{FRAME, Kind, assert_problem, both_brokers, retention, spawn, spawn_with};

both_brokers!(
    several_stories_interleave_and_each_keeps_its_exact_order,
    the_first_frame_after_retry_is_an_id_only_frame_naming_every_story_start,
    a_resume_with_the_cursor_is_exact_for_every_story_including_stories_without_events,
    a_resume_from_the_id_only_frame_loses_nothing,
    a_story_past_retention_gets_its_own_gap_and_the_gap_cursor_does_not_report_it_again,
    a_stream_ends_with_token_expired_and_a_new_token_resumes_every_story,
    bad_story_lists_and_cursors_are_400_before_anything_opens,
    one_unreadable_story_is_403_naming_it_and_nothing_opens,
    a_draining_instance_ends_open_streams_with_a_retry_hint_and_refuses_new_ones_with_503,
);

/// Opens `GET /v1/streams?stories=<stories>` with the admin token and, if given, a cursor in `Last-Event-ID`.
async fn open(app: &TestApp, stories: &str, cursor: Option<&str>) -> SseStream {
    let mut request = app.client.get(app.url(&format!("/v1/streams?stories={stories}"))).bearer_auth(app.admin_token());
    if let Some(cursor) = cursor {
        request = request.header("last-event-id", cursor);
    }
    let stream = app.open_stream_request(request).await;
    assert_eq!(stream.status, 200, "GET /v1/streams?stories={stories}");
    stream
}

/// The `retry:` frame, then the id-only frame: returns the cursor it names.
async fn start(stream: &mut SseStream) -> String {
    let retry = stream.next_frame(FRAME).await.expect("a first frame");
    assert!(retry.retry.is_some() && retry.id.is_none(), "first the retry hint: {retry:?}");
    let first = stream.next_frame(FRAME).await.expect("a second frame");
    assert!(first.data.is_none() && first.event.is_none(), "an id-only frame: {first:?}");
    first.id.expect("the id-only frame has an id")
}

/// An event frame's story (from its envelope) and id.
fn story_and_id(frame: &Frame) -> (String, String) {
    let envelope = frame.json();
    (envelope["story"].as_str().unwrap().to_owned(), envelope["id"].as_str().unwrap().to_owned())
}

async fn publish_ids(app: &TestApp, story: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.publish(story, "chapter", json!(i)).await["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Reads `n` events, checking every frame's cursor as it goes: each event's story position is that event's id and
/// every other story keeps the position it had. Returns the events' ids per story, and the last cursor.
async fn read_events(
    stream: &mut SseStream,
    stories: &[&str],
    mut cursor: Vec<String>,
    n: usize,
) -> (HashMap<String, Vec<String>>, Vec<String>) {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..n {
        let frame = stream.next_event(FRAME).await;
        let (story, id) = story_and_id(&frame);
        let at = stories.iter().position(|s| *s == story).unwrap_or_else(|| panic!("an unasked story {story}"));
        cursor[at] = id.clone();
        assert_eq!(frame.id.as_deref(), Some(cursor.join(",").as_str()), "the cursor of the event {id} of {story}");
        seen.entry(story).or_default().push(id);
    }
    (seen, cursor)
}

fn split(cursor: &str) -> Vec<String> {
    cursor.split(',').map(str::to_owned).collect()
}

async fn several_stories_interleave_and_each_keeps_its_exact_order(kind: Kind) {
    let app = spawn(kind).await;
    let stories = ["a", "b:1", "c"];
    let mut stream = open(&app, &stories.join(","), None).await;
    let cursor = start(&mut stream).await;
    assert_eq!(cursor, "0,0,0", "three empty stories");
    let publishers = stories.iter().map(|story| {
        let (publisher, story) = (app.publisher(), (*story).to_owned());
        tokio::spawn(async move {
            for n in 0..20 {
                publisher.publish(&story, "chapter", json!(n)).await;
            }
        })
    });
    for publisher in futures::future::join_all(publishers).await {
        publisher.unwrap();
    }
    let (seen, _) = read_events(&mut stream, &stories, split(&cursor), 60).await;
    for story in stories {
        assert_eq!(seen.get(story), Some(&app.all_ids(story).await), "{story}: every event once, in log order");
    }
}

async fn the_first_frame_after_retry_is_an_id_only_frame_naming_every_story_start(kind: Kind) {
    let app = spawn(kind).await;
    let a = publish_ids(&app, "a", 2).await;
    let c = publish_ids(&app, "c", 1).await;
    let mut stream = open(&app, "a,b,c", None).await;
    assert_eq!(start(&mut stream).await, format!("{},0,{}", a[1], c[0]), "each story's newest id at open, 0 if none");
    let fresh = app.publish("b", "chapter", json!(1)).await["id"].as_str().unwrap().to_owned();
    let event = stream.next_event(FRAME).await;
    assert_eq!(event.id, Some(format!("{},{fresh},{}", a[1], c[0])), "only new events, with the full cursor");
    assert_eq!(event.event.as_deref(), Some("chapter"));
    assert_eq!(event.json()["story"], "b", "the envelope names its story");
}

async fn a_resume_with_the_cursor_is_exact_for_every_story_including_stories_without_events(kind: Kind) {
    let app = spawn(kind).await;
    let stories = ["a", "b", "quiet"];
    let mut stream = open(&app, &stories.join(","), None).await;
    let cursor = start(&mut stream).await;
    publish_ids(&app, "a", 5).await;
    publish_ids(&app, "b", 5).await;
    let (before, cursor) = read_events(&mut stream, &stories, split(&cursor), 6).await;
    drop(stream);
    // While disconnected: more in every story, the one that had none included.
    publish_ids(&app, "a", 3).await;
    publish_ids(&app, "quiet", 2).await;
    let mut resumed = open(&app, &stories.join(","), Some(&cursor.join(","))).await;
    assert_eq!(start(&mut resumed).await, cursor.join(","), "the id-only frame names the cursor resumed from");
    let total: usize = [8, 5, 2].iter().sum();
    let (after, _) = read_events(&mut resumed, &stories, cursor, total - 6).await;
    for story in stories {
        let mut got = before.get(story).cloned().unwrap_or_default();
        got.extend(after.get(story).cloned().unwrap_or_default());
        assert_eq!(got, app.all_ids(story).await, "{story}: no loss and no duplicate across the reconnect");
    }
}

async fn a_resume_from_the_id_only_frame_loses_nothing(kind: Kind) {
    let app = spawn(kind).await;
    publish_ids(&app, "a", 2).await;
    let mut stream = open(&app, "a,b", None).await;
    let cursor = start(&mut stream).await;
    drop(stream);
    let a = publish_ids(&app, "a", 2).await;
    let b = publish_ids(&app, "b", 2).await;
    // The query parameter carries the cursor as well as the header does.
    let request = app
        .client
        .get(app.url(&format!("/v1/streams?stories=a,b&last_event_id={cursor}")))
        .bearer_auth(app.admin_token());
    let mut resumed = app.open_stream_request(request).await;
    assert_eq!(start(&mut resumed).await, cursor);
    let (seen, _) = read_events(&mut resumed, &["a", "b"], split(&cursor), 4).await;
    assert_eq!((seen.get("a"), seen.get("b")), (Some(&a), Some(&b)), "exactly the events after the first frame");
}

async fn a_story_past_retention_gets_its_own_gap_and_the_gap_cursor_does_not_report_it_again(kind: Kind) {
    let app = spawn_with(kind, retention(5), test_config()).await;
    let first = publish_ids(&app, "old", 1).await;
    publish_ids(&app, "old", 40).await;
    let fresh = publish_ids(&app, "fresh", 3).await;
    let retained = app.all_ids("old").await;
    assert!(retained.len() < 41, "retention trimmed the log: {} kept", retained.len());
    let cursor = format!("{},0", first[0]);
    let mut stream = open(&app, "old,fresh", Some(&cursor)).await;
    assert_eq!(start(&mut stream).await, cursor);
    let mut old = Vec::new();
    let mut got_fresh = Vec::new();
    let mut gap_cursor = None;
    while old.len() < retained.len() || got_fresh.len() < fresh.len() {
        let frame = stream.next_event(FRAME).await;
        if frame.event.as_deref() == Some("gap") {
            assert!(gap_cursor.is_none() && old.is_empty(), "one gap, before the story's events: {frame:?}");
            assert_eq!(frame.json(), json!({"story": "old", "requested": first[0], "resumed_from": retained[0]}));
            gap_cursor = Some(frame.id.clone().expect("a gap on a many-story stream has a cursor"));
            continue;
        }
        let (story, id) = story_and_id(&frame);
        match story.as_str() {
            "old" => old.push(id),
            _ => got_fresh.push(id),
        }
    }
    assert_eq!((old, got_fresh), (retained.clone(), fresh.clone()), "then every retained event, per story in order");
    // The gap's cursor moved "old" just before where delivery resumed: resuming from it is exact, with no gap.
    let gap_cursor = gap_cursor.expect("a gap frame for the trimmed story");
    let mut again = open(&app, "old,fresh", Some(&gap_cursor)).await;
    start(&mut again).await;
    let next_old = loop {
        let next = again.next_event(FRAME).await;
        assert_ne!(next.event.as_deref(), Some("gap"), "the gap is not reported again: {next:?}");
        let (story, id) = story_and_id(&next);
        if story == "old" {
            break id;
        }
    };
    assert_eq!(next_old, retained[0], "delivery of the trimmed story resumes where the gap said");
}

async fn a_stream_ends_with_token_expired_and_a_new_token_resumes_every_story(kind: Kind) {
    let config = storyline_server::ServerConfig { heartbeat: Duration::from_millis(300), ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let short = app.token_with("reader", "read:*", None, Duration::from_secs(2));
    let request = app.client.get(app.url("/v1/streams?stories=a,b")).bearer_auth(&short);
    let mut stream = app.open_stream_request(request).await;
    let cursor = start(&mut stream).await;
    publish_ids(&app, "a", 1).await;
    let (_, cursor) = read_events(&mut stream, &["a", "b"], split(&cursor), 1).await;
    let rest = stream.until_end(FRAME).await;
    let last = rest.last().expect("a final frame");
    assert_eq!(last.event.as_deref(), Some("token-expired"), "the last frame says why: {rest:?}");
    assert_eq!(last.id, None, "it moves no cursor");
    assert!(last.json()["expired_at"].as_u64().is_some());
    assert!(stream.raw.ends_with(b"\n\n"), "the stream ended at a frame boundary");

    let (a, b) = (publish_ids(&app, "a", 1).await, publish_ids(&app, "b", 1).await);
    let fresh = app.token_with("reader", "read:*", None, Duration::from_secs(600));
    let request = app
        .client
        .get(app.url("/v1/streams?stories=a,b"))
        .bearer_auth(&fresh)
        .header("last-event-id", cursor.join(","));
    let mut resumed = app.open_stream_request(request).await;
    start(&mut resumed).await;
    let (seen, _) = read_events(&mut resumed, &["a", "b"], cursor, 2).await;
    assert_eq!((seen.get("a"), seen.get("b")), (Some(&a), Some(&b)), "what was posted meanwhile, once");
}

async fn bad_story_lists_and_cursors_are_400_before_anything_opens(kind: Kind) {
    let config = storyline_server::ServerConfig { max_stories_per_stream: 3, ..test_config() };
    let app = spawn_with(kind, storyline_core::Retention::default(), config).await;
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("/v1/streams", None, "bad-query", "no stories parameter"),
        ("/v1/streams?stories=", None, "bad-query", "an empty list"),
        ("/v1/streams?stories=a,b,a", None, "bad-query", "a story twice"),
        ("/v1/streams?stories=a,b%20c", None, "bad-story-id", "a bad id"),
        ("/v1/streams?stories=a,,b", None, "bad-story-id", "an empty id"),
        ("/v1/streams?stories=a,b,c,d", None, "too-many-stories", "more than the limit"),
        ("/v1/streams?stories=a,b", Some("0"), "bad-cursor", "a cursor with too few positions"),
        ("/v1/streams?stories=a,b", Some("0,0,0"), "bad-cursor", "a cursor with too many positions"),
        ("/v1/streams?stories=a,b", Some("0,abc"), "bad-event-id", "a bad position"),
        ("/v1/streams?stories=a,b", Some("1-0,"), "bad-event-id", "an empty position"),
        ("/v1/streams?stories=a,b&last_event_id=0", None, "bad-cursor", "a short cursor in the query"),
        ("/v1/streams?stories=a,b&last_event_id=1-0,x", None, "bad-event-id", "a bad position in the query"),
    ];
    for (path, cursor, slug, case) in cases {
        let mut request = app.client.get(app.url(path)).bearer_auth(app.admin_token());
        if let Some(cursor) = cursor {
            request = request.header("last-event-id", *cursor);
        }
        let problem = assert_problem(request.send().await.unwrap(), 400, case).await;
        assert_eq!(problem["type"], format!("urn:storyline:problem:{slug}"), "case {case}: {problem}");
        if *slug == "too-many-stories" {
            assert!(problem["detail"].as_str().unwrap().contains("at most 3"), "case {case}: the limit: {problem}");
        }
    }
    assert_eq!(app.shutdown_signal().open_streams(), 0, "no refused request opened a stream");
}

async fn one_unreadable_story_is_403_naming_it_and_nothing_opens(kind: Kind) {
    let app = spawn(kind).await;
    let token = app.token("reader", "read:public:*");
    let request = app.client.get(app.url("/v1/streams?stories=public:a,secret,public:b")).bearer_auth(&token);
    let problem = assert_problem(request.send().await.unwrap(), 403, "one story not readable").await;
    assert_eq!(problem["type"], "urn:storyline:problem:forbidden");
    assert!(problem["detail"].as_str().unwrap().contains("secret"), "names the story: {problem}");
    assert_eq!(app.shutdown_signal().open_streams(), 0, "nothing was opened");
    // The stories it may read open as one stream.
    let request = app.client.get(app.url("/v1/streams?stories=public:a,public:b")).bearer_auth(&token);
    let mut stream = app.open_stream_request(request).await;
    assert_eq!(start(&mut stream).await, "0,0");
    assert_eq!(app.shutdown_signal().open_streams(), 1, "two stories, one stream");
}

async fn a_draining_instance_ends_open_streams_with_a_retry_hint_and_refuses_new_ones_with_503(kind: Kind) {
    let app = spawn(kind).await;
    let mut stream = open(&app, "a,b", None).await;
    start(&mut stream).await;
    app.shutdown_signal().trigger();
    let rest = stream.until_end(FRAME).await;
    assert!(rest.iter().all(|f| !f.is_event()), "no further events: {rest:?}");
    assert!(rest.last().is_some_and(|f| f.retry.is_some()), "the last frame is a fresh retry hint: {rest:?}");
    assert!(stream.raw.ends_with(b"\n\n"), "the stream ended at a frame boundary");
    let refused = app.client.get(app.url("/v1/streams?stories=a,b")).bearer_auth(app.admin_token()).send().await;
    let refused = refused.unwrap();
    assert!(refused.headers().get("retry-after").is_some(), "draining says when to come back");
    let problem = assert_problem(refused, 503, "new stream while draining").await;
    assert_eq!(problem["type"], "urn:storyline:problem:draining");
    app.stop().await;
}
