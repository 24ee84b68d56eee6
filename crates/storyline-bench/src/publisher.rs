//! The paced publisher: event `i` is sent at `start + i / rate`, round-robin over stories, over a small pool of
//! keep-alive HTTP/1.1 connections.
//!
//! Pacing is by absolute deadlines, never by counting ticks: a late send does not shift the ones after it, and
//! nothing is sent in a burst to "catch up" beyond what the deadlines allow. When every connection of the pool
//! is busy the next send waits; how late each send was is recorded (`lag`) so that a publisher that could not
//! keep the rate is visible in the report instead of silently lowering the load.
//!
//! Runs on its own thread with its own single-threaded runtime (see [`spawn`]) so that subscriber work in the
//! same process cannot delay the schedule.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};

use crate::{
    config::Plan,
    stats::{PublishTally, histogram_base64, new_histogram},
    system::now_us,
    template::Values,
};

/// How long one POST may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Events sent in a run: `floor(rate × duration)`.
pub fn total_events(rate: f64, duration_secs: f64) -> u64 {
    let total = (rate * duration_secs).floor();
    #[allow(clippy::cast_possible_truncation, reason = "clamped to the u64 range first; fractions are floored")]
    if total.is_finite() && total > 0.0 { total.min(u64::MAX as f64) as u64 } else { 0 }
}

/// When event `i` is due, relative to the start.
pub fn send_offset(i: u64, rate: f64) -> Duration {
    Duration::try_from_secs_f64(i as f64 / rate).unwrap_or(Duration::MAX)
}

/// The story and per-story sequence number of event `i`: round-robin over stories.
pub fn target(i: u64, stories: usize) -> (usize, u64) {
    let stories = stories.max(1) as u64;
    (usize::try_from(i % stories).unwrap_or(0), i / stories)
}

/// The publisher's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResult {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub tally: PublishTally,
    /// Time from the first deadline until the last POST was answered.
    pub window_secs: f64,
    /// POST round trips (µs).
    #[serde(with = "histogram_base64")]
    pub latency_us: Histogram<u64>,
    /// How late each send left compared with its deadline (µs).
    #[serde(with = "histogram_base64")]
    pub lag_us: Histogram<u64>,
}

struct Shared {
    result: PublishResult,
}

/// Runs [`publish`] on a dedicated thread; the answer arrives on the returned channel.
pub fn spawn(plan: Arc<Plan>, start: Instant) -> anyhow::Result<oneshot::Receiver<anyhow::Result<PublishResult>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("publisher runtime")
                .and_then(|runtime| runtime.block_on(publish(plan, start)));
            let _ = tx.send(result);
        })
        .context("starting the publisher thread")?;
    Ok(rx)
}

/// Publishes every event of the plan on schedule and waits for the last answer.
pub async fn publish(plan: Arc<Plan>, start: Instant) -> anyhow::Result<PublishResult> {
    let config = &plan.config;
    let client = storyline_client::http1_client_builder()
        .context("publisher HTTP client TLS")?
        .pool_max_idle_per_host(config.publishers)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("publisher HTTP client")?;
    let stories: Vec<String> = (0..config.stories).map(|s| plan.story_name(s)).collect();
    let mut urls = Vec::with_capacity(config.stories);
    let mut headers = Vec::with_capacity(config.stories);
    for story in &stories {
        let values = Values { story, token: &config.token, ..Values::default() };
        urls.push(plan.publish_url.url(&values));
        let mut map = HeaderMap::new();
        for header in &plan.publish_headers {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .with_context(|| format!("--publish-header: bad name {:?}", header.name))?;
            let value = HeaderValue::from_str(&header.value.fill(&values))
                .with_context(|| format!("--publish-header: bad value for {:?}", header.name))?;
            map.append(name, value);
        }
        headers.push(map);
    }

    let total = plan.total_events();
    let shared = Arc::new(Mutex::new(Shared {
        result: PublishResult {
            attempted: 0,
            ok: 0,
            failed: 0,
            failures: BTreeMap::new(),
            tally: PublishTally {
                ok_per_story: vec![0; config.stories],
                failed_seqs: vec![Vec::new(); config.stories],
            },
            window_secs: 0.0,
            latency_us: new_histogram(),
            lag_us: new_histogram(),
        },
    }));
    let permits = u32::try_from(config.publishers).context("--publishers is too large")?;
    let pool = Arc::new(Semaphore::new(config.publishers));
    for i in 0..total {
        let due = start + send_offset(i, config.rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = Arc::clone(&pool).acquire_owned().await.context("publisher pool closed")?;
        let (story, seq) = target(i, config.stories);
        let sent_us = now_us();
        let lag_us = u64::try_from(Instant::now().saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        let values = Values { story: &stories[story], token: &config.token, seq, sent_us, ..Values::default() };
        let body = plan.publish_body.fill_padded(&values, config.payload_bytes);
        let request = client.post(&urls[story]).headers(headers[story].clone()).body(body);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let began = Instant::now();
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    // Read the answer so the connection goes back to the pool.
                    response.bytes().await.map(|_| ()).map_err(|e| describe(&e))
                }
                Ok(response) => Err(format!("status {}", response.status().as_u16())),
                Err(e) => Err(describe(&e)),
            };
            let took_us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
            let result = &mut shared.result;
            result.attempted += 1;
            result.lag_us.saturating_record(lag_us);
            match outcome {
                Ok(()) => {
                    result.ok += 1;
                    result.tally.ok_per_story[story] += 1;
                    result.latency_us.saturating_record(took_us);
                }
                Err(reason) => {
                    result.failed += 1;
                    result.tally.failed_seqs[story].push(seq);
                    *result.failures.entry(reason).or_default() += 1;
                }
            }
            drop(permit);
        });
    }
    // Every permit back = every request answered (each is bounded by REQUEST_TIMEOUT).
    let _all = pool.acquire_many(permits).await.context("publisher pool closed")?;
    let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    shared.result.window_secs = start.elapsed().as_secs_f64();
    Ok(shared.result.clone())
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect error".into()
    } else {
        format!("request error: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_is_rate_times_duration_floored() {
        assert_eq!(total_events(200.0, 15.0), 3000);
        assert_eq!(total_events(2.5, 3.0), 7);
        assert_eq!(total_events(0.0, 3.0), 0);
        assert_eq!(total_events(f64::NAN, 3.0), 0);
    }

    #[test]
    fn deadlines_are_absolute_and_evenly_spaced() {
        assert_eq!(send_offset(0, 200.0), Duration::ZERO);
        assert_eq!(send_offset(1, 200.0), Duration::from_millis(5));
        // No drift after many events: the 3000th deadline is exactly 15 s in.
        assert_eq!(send_offset(3000, 200.0), Duration::from_secs(15));
        assert_eq!(send_offset(1, 3.0).as_nanos(), 333_333_333);
        // The schedule fits in the run: the last event is due before `duration` ends.
        let (rate, duration) = (7.0, 2.0);
        let last = total_events(rate, duration) - 1;
        assert!(send_offset(last, rate) < Duration::from_secs_f64(duration));
    }

    #[test]
    fn events_go_round_robin_with_per_story_seqs() {
        let targets: Vec<_> = (0..7).map(|i| target(i, 3)).collect();
        assert_eq!(targets, vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]);
        assert_eq!(target(5, 1), (0, 5));
    }
}
