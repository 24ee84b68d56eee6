//! `Client::history`: pages oldest first, `next` to follow, on both brokers.

use serde_json::json;
use storyline_client::{Event, EventType, HistoryQuery};

use crate::support::{Env, Kind, both_brokers, story};

both_brokers!(history_pages_follow_next_through_the_whole_story);

async fn history_pages_follow_next_through_the_whole_story(kind: Kind) {
    let env = Env::start(kind).await;
    let client = env.client();
    let story = story("hist-pages");
    let mut published = Vec::new();
    for n in 0..25 {
        let event = Event::new(EventType::parse("line").unwrap(), json!({"n": n}));
        published.push(client.publish(&story, &event).await.unwrap().id);
    }
    let (mut read, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = client.history(&story, HistoryQuery { after, limit: Some(10) }).await.expect("a page");
        pages += 1;
        read.extend(page.events.iter().map(|e| (e.id, e.data["n"].as_u64())));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3, "10 + 10 + 5");
    assert_eq!(read.iter().map(|(id, _)| *id).collect::<Vec<_>>(), published, "every event once, oldest first");
    assert_eq!(read.iter().map(|(_, n)| n.unwrap()).collect::<Vec<_>>(), (0..25).collect::<Vec<_>>());
}
