//! The log follower: reads each story's log through `GET /v1/stories/{story}/events?after=&limit=`, page by
//! page, every `--follow-interval-ms` while the run lasts and to its end when the run stops. Reading as the log
//! grows (instead of once at the end) lets the soak run with a small retention, so that the in-memory broker
//! reaches a steady state and the leak bounds measure storyline rather than a log filling up.
//!
//! It checks the log itself: ids strictly increasing, and no idempotency key (the `key` the publishers put in
//! each event's data) stored twice, which would mean a retried POST was appended again.

use std::{collections::HashSet, time::Duration};

use serde::Deserialize;
use tokio::{sync::watch, task::JoinSet};

use super::{EventId, Minter, Target};

/// Most events asked for per page (the endpoint's maximum).
const PAGE: u32 = 1000;
/// Pages read per poll at most, so one poll is bounded even if the log grows faster than it is read.
const MAX_PAGES_PER_POLL: u32 = 1000;

/// One story's log as the follower read it.
#[derive(Debug, Clone, Default)]
pub struct StoryLog {
    /// Ids in log order, each with the idempotency key found in its data.
    pub events: Vec<(EventId, Option<String>)>,
    /// Keys found on more than one event.
    pub duplicate_keys: u64,
    /// Events whose id was not after the previous one.
    pub out_of_order: u64,
    /// Failed history reads (retried at the next poll), with the first error.
    pub read_failures: u64,
    pub first_error: Option<String>,
    /// The final read reached the end of the log (`next` null).
    pub complete: bool,
}

impl StoryLog {
    pub fn last(&self) -> Option<EventId> {
        self.events.last().map(|(id, _)| *id)
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    events: Vec<Envelope>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// The followers of every story.
#[derive(Debug)]
pub struct Follower {
    tasks: JoinSet<(usize, StoryLog)>,
    stop: watch::Sender<bool>,
    stories: usize,
}

impl Follower {
    pub fn start(
        http: reqwest::Client,
        target: &Target,
        stories: &[String],
        minter: Minter,
        interval: Duration,
    ) -> Follower {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (index, story) in stories.iter().enumerate() {
            let url = format!("{}/v1/stories/{story}/events", target.base);
            let (http, minter, mut stop_rx) = (http.clone(), minter.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let mut follow = Follow { http, url, minter, seen: HashSet::new(), log: StoryLog::default() };
                loop {
                    let stopping = tokio::time::timeout(interval, stop_rx.wait_for(|s| *s)).await.is_ok();
                    let reached_end = follow.poll().await;
                    if stopping {
                        // One more read to the end after the stop, so the last events are in.
                        follow.log.complete = reached_end;
                        break;
                    }
                }
                (index, follow.log)
            });
        }
        Follower { tasks, stop, stories: stories.len() }
    }

    /// Reads every log to its end and returns them in story order.
    pub async fn finish(mut self) -> Vec<StoryLog> {
        let _ = self.stop.send(true);
        let mut logs = vec![StoryLog::default(); self.stories];
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((index, log)) => {
                    if let Some(slot) = logs.get_mut(index) {
                        *slot = log;
                    }
                }
                Err(e) => {
                    // The story's slot stays incomplete, which fails the verdict.
                    super::say(&format!("soak-readers: a log follower failed: {e}"));
                }
            }
        }
        logs
    }
}

struct Follow {
    http: reqwest::Client,
    url: String,
    minter: Minter,
    seen: HashSet<String>,
    log: StoryLog,
}

impl Follow {
    /// Reads from the last id onwards until `next` is null; whether it got there.
    async fn poll(&mut self) -> bool {
        for _ in 0..MAX_PAGES_PER_POLL {
            match self.page().await {
                Ok(true) => {}
                Ok(false) => return true,
                Err(e) => {
                    self.log.read_failures += 1;
                    self.log.first_error.get_or_insert(e);
                    return false;
                }
            }
        }
        false
    }

    /// One page; whether there is more.
    async fn page(&mut self) -> Result<bool, String> {
        let (token, _) = self.minter.mint("soak-log-follower").map_err(|e| format!("{e:#}"))?;
        // Ids are `<digits>-<digits>`: nothing in the query needs escaping.
        let url = match self.log.last() {
            Some(last) => format!("{}?limit={PAGE}&after={last}", self.url),
            None => format!("{}?limit={PAGE}", self.url),
        };
        let response = self.http.get(url).bearer_auth(token).send().await.map_err(|e| format!("history: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("history: status {}", response.status()));
        }
        let page: Page = response.json().await.map_err(|e| format!("history: {e}"))?;
        for event in page.events {
            let id: EventId = event.id.parse()?;
            let key = event.data.get("key").and_then(|k| k.as_str()).map(str::to_owned);
            self.push(id, key);
        }
        Ok(page.next.is_some())
    }

    fn push(&mut self, id: EventId, key: Option<String>) {
        if self.log.last().is_some_and(|last| id <= last) {
            self.log.out_of_order += 1;
            return;
        }
        if let Some(key) = &key
            && !self.seen.insert(key.clone())
        {
            self.log.duplicate_keys += 1;
        }
        self.log.events.push((id, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_notices_repeated_keys_and_ids_going_backwards() {
        let mut follow = Follow {
            http: storyline_client::http_client_builder().unwrap().build().unwrap(),
            url: String::new(),
            minter: Minter::new("0123456789abcdef", "read:*".into(), 60),
            seen: HashSet::new(),
            log: StoryLog::default(),
        };
        let id = |ms, seq| EventId { ms, seq };
        follow.push(id(1, 0), Some("k1".into()));
        follow.push(id(1, 1), Some("k2".into()));
        follow.push(id(2, 0), Some("k1".into()));
        follow.push(id(1, 5), Some("k3".into()));
        follow.push(id(3, 0), None);
        assert_eq!(follow.log.events.len(), 4);
        assert_eq!((follow.log.duplicate_keys, follow.log.out_of_order), (1, 1));
        assert_eq!(follow.log.last(), Some(id(3, 0)));
    }
}
