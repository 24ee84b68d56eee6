//! The verdict: every check of the soak, on what the run collected, as a [`SoakReport`].
//!
//! Delivery (per story, per reader):
//! - *log* = the story's events as the follower read them from the history endpoint;
//! - *acked* = the events k6 got a 200/201 for (its ack log); each must be in the log with its key
//!   (`missing_from_log` otherwise); events in the log that were never acknowledged (a POST whose answer was
//!   lost) are counted, not failed;
//! - per reader: *delivered* = distinct story events received; *lost* = log events it never received; *extra* =
//!   events received that are not in the log; *duplicates* = events at or before the resume point. Every reader
//!   starts at the story's beginning, so `delivered == log`, `lost == 0`, `duplicates == 0` is the pass.
//!
//! Stream ends: the server's planned causes (drain, token expiry, slow consumer) and the readers' own timers are
//! fine; anything else fails. A slow-consumer cut carries no frame, so the readers' unexplained closes are
//! matched against the server's `slow_consumer` count; the rest (and every refused open, stall, gap, read error)
//! fails.
//!
//! Resources (after the warm-up): the least-squares slope of each series per minute, and its growth = median of
//! the last tenth of the samples (at least 3) minus the median of the first tenth. RSS fails past either bound;
//! descriptors, threads and tasks fail past their growth bound.

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{
    EventId, LeakBounds, SoakConfig, follower::StoryLog, reader::ReaderOutcome, sampler::CloseReasons, sampler::Sample,
};
use crate::system::{self, Machine};

/// Post-warm-up samples needed for a slope.
pub const MIN_SAMPLES: usize = 10;

/// One line of k6's ack log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ack {
    pub story: String,
    pub id: String,
    pub key: String,
}

#[derive(Deserialize)]
struct AckLine {
    ack: Ack,
}

/// Reads k6's log: every line that is an ack (other log lines are k6's own messages and are skipped).
pub fn read_acks(path: &Path) -> anyhow::Result<Vec<Ack>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the ack log {}", path.display()))?;
    Ok(text.lines().filter_map(|line| serde_json::from_str::<AckLine>(line).ok()).map(|l| l.ack).collect())
}

/// What `k6/soak.js`'s `handleSummary` writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct K6Summary {
    /// Events attempted (iterations of the publish scenario).
    pub events: u64,
    /// Events acknowledged (201, or 200 for an idempotent repeat).
    pub acked: u64,
    /// Events that failed after their retries.
    pub failed: u64,
    pub failure_rate: f64,
    /// HTTP requests sent (retries included), and the retries among them.
    pub requests: u64,
    pub retries: u64,
    /// Per request, milliseconds.
    pub post_ms: Latency,
    pub dropped_iterations: u64,
    pub thresholds: Vec<Threshold>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub avg: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub metric: String,
    pub threshold: String,
    pub ok: bool,
}

pub fn read_k6_summary(path: &Path) -> anyhow::Result<K6Summary> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading k6's summary {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing k6's summary {}", path.display()))
}

/// A straight line through the samples, and how much the series grew.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub samples: usize,
    pub slope_per_min: f64,
    pub growth: f64,
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
}

/// Least squares of `points` (minutes, value); `None` with fewer than [`MIN_SAMPLES`] points or no time spread.
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    if points.len() < MIN_SAMPLES {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // a sample count
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let k = (points.len() / 10).max(3);
    let median = |values: &[(f64, f64)]| {
        let mut v: Vec<f64> = values.iter().map(|p| p.1).collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len().is_multiple_of(2) { f64::midpoint(v[mid - 1], v[mid]) } else { v[mid] }
    };
    let values = points.iter().map(|p| p.1);
    Some(Fit {
        samples: points.len(),
        slope_per_min: sxy / sxx,
        growth: median(&points[points.len() - k..]) - median(&points[..k]),
        first: points[0].1,
        last: points[points.len() - 1].1,
        min: values.clone().fold(f64::INFINITY, f64::min),
        max: values.fold(f64::NEG_INFINITY, f64::max),
    })
}

/// A resource to judge: name, unit, its value in a sample, slope bound, growth bound.
type ResourceSpec = (&'static str, &'static str, fn(&Sample) -> Option<f64>, Option<f64>, f64);

/// One resource series and its bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub unit: String,
    pub fit: Option<Fit>,
    /// Bound on the slope, per minute (RSS only).
    pub max_slope_per_min: Option<f64>,
    pub max_growth: f64,
    pub ok: bool,
}

/// Per reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderFigures {
    pub reader: usize,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub extra: u64,
    pub connects: u64,
    pub planned_reconnects: u64,
    pub token_expired: u64,
    pub drains: u64,
    pub unexplained_closes: u64,
    /// Refused or failed opens, stalls, gaps, read and protocol errors.
    pub failures: u64,
    pub errors: Vec<String>,
}

/// Per story.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoryFigures {
    pub story: String,
    pub log_events: u64,
    pub acked: u64,
    pub missing_from_log: u64,
    pub unacked_in_log: u64,
    pub duplicate_keys: u64,
    pub out_of_order: u64,
    pub log_complete: bool,
    pub readers: Vec<ReaderFigures>,
}

/// Sums over every story and reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub log_events: u64,
    pub acked: u64,
    pub missing_from_log: u64,
    pub unacked_in_log: u64,
    pub readers: u64,
    /// Σ over readers of their story's log events.
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub extra: u64,
    pub readers_exact: u64,
    pub connects: u64,
    pub planned_reconnects: u64,
    pub token_expired: u64,
    pub drains: u64,
    pub unexplained_closes: u64,
    pub reader_failures: u64,
}

/// The run's parameters, as the report records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub stories: usize,
    pub readers_per_story: usize,
    pub token_ttl_secs: u64,
    pub reconnect_secs: f64,
    pub sample_secs: f64,
    pub warmup_secs: f64,
    pub load_secs: f64,
    pub bounds: LeakBounds,
}

/// Everything the run found (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    pub label: String,
    pub date_utc: String,
    pub machine: Machine,
    pub ok: bool,
    /// One line per failed check.
    pub failures: Vec<String>,
    pub params: Params,
    pub k6: Option<K6Summary>,
    pub totals: Totals,
    pub server_closes: Option<CloseReasons>,
    pub resources: Vec<Resource>,
    pub stories: Vec<StoryFigures>,
}

/// What [`judge`] looks at.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub config: &'a SoakConfig,
    pub stories: &'a [String],
    pub logs: &'a [StoryLog],
    pub outcomes: &'a [ReaderOutcome],
    pub acks: &'a [Ack],
    pub samples: &'a [Sample],
    pub closes: Option<CloseReasons>,
    pub k6: Option<K6Summary>,
    pub stopped_by_signal: bool,
    pub caught_up: bool,
    pub load_secs: f64,
}

/// (lost, extra): log ids the reader lacks, and ids it has that the log lacks. Both lists are increasing.
fn compare(log: &[EventId], received: &[EventId]) -> (u64, u64) {
    let (mut i, mut j, mut lost, mut extra) = (0, 0, 0, 0);
    while i < log.len() && j < received.len() {
        match log[i].cmp(&received[j]) {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                lost += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                extra += 1;
                j += 1;
            }
        }
    }
    (lost + (log.len() - i) as u64, extra + (received.len() - j) as u64)
}

pub fn judge(input: Inputs<'_>) -> SoakReport {
    let config = input.config;
    let mut failures = Vec::new();
    let mut totals = Totals::default();

    let mut acks_by_story: HashMap<&str, Vec<&Ack>> = HashMap::new();
    for ack in input.acks {
        acks_by_story.entry(ack.story.as_str()).or_default().push(ack);
    }
    let known: std::collections::HashSet<&str> = input.stories.iter().map(String::as_str).collect();
    let strays = input.acks.iter().filter(|a| !known.contains(a.story.as_str())).count();
    if strays > 0 {
        failures.push(format!("{strays} acknowledged events name a story the readers did not read"));
    }

    let mut stories = Vec::new();
    for (index, name) in input.stories.iter().enumerate() {
        let empty = StoryLog::default();
        let log = input.logs.get(index).unwrap_or(&empty);
        let ids: Vec<EventId> = log.events.iter().map(|(id, _)| *id).collect();
        let by_id: HashMap<EventId, Option<&str>> = log.events.iter().map(|(id, k)| (*id, k.as_deref())).collect();
        let acked = acks_by_story.get(name.as_str()).map_or(&[][..], Vec::as_slice);
        let mut missing = 0u64;
        let mut acked_ids = std::collections::HashSet::new();
        for ack in acked {
            let found = ack.id.parse::<EventId>().ok().and_then(|id| by_id.get(&id).map(|key| (id, *key)));
            match found {
                Some((id, Some(key))) if key == ack.key => {
                    acked_ids.insert(id);
                }
                _ => missing += 1,
            }
        }
        let unacked = ids.iter().filter(|id| !acked_ids.contains(id)).count() as u64;
        let mut figures = StoryFigures {
            story: name.clone(),
            log_events: ids.len() as u64,
            acked: acked.len() as u64,
            missing_from_log: missing,
            unacked_in_log: unacked,
            duplicate_keys: log.duplicate_keys,
            out_of_order: log.out_of_order,
            log_complete: log.complete,
            readers: Vec::new(),
        };
        if !log.complete {
            failures.push(format!(
                "{name}: the log could not be read to its end ({} failed reads; {})",
                log.read_failures,
                log.first_error.as_deref().unwrap_or("no error recorded")
            ));
        }
        if missing > 0 {
            failures.push(format!("{name}: {missing} acknowledged events are not in the log"));
        }
        if log.duplicate_keys > 0 || log.out_of_order > 0 {
            failures.push(format!(
                "{name}: the log holds {} events stored twice under one idempotency key and {} ids out of order",
                log.duplicate_keys, log.out_of_order
            ));
        }
        for outcome in input.outcomes.iter().filter(|o| o.story == index) {
            let (lost, extra) = compare(&ids, &outcome.received);
            let reader = ReaderFigures {
                reader: outcome.reader,
                delivered: outcome.received.len() as u64,
                lost,
                duplicates: outcome.duplicates,
                extra,
                connects: outcome.connects,
                planned_reconnects: outcome.planned_reconnects,
                token_expired: outcome.token_expired,
                drains: outcome.drains,
                unexplained_closes: outcome.unexplained_closes,
                failures: outcome.unplanned() - outcome.unexplained_closes,
                errors: outcome.errors.clone(),
            };
            if lost > 0 || extra > 0 || reader.duplicates > 0 {
                failures.push(format!(
                    "{name} reader {}: delivered {} of {} log events, {lost} lost, {} duplicated, {extra} not in the log",
                    outcome.reader,
                    reader.delivered,
                    ids.len(),
                    reader.duplicates
                ));
            }
            totals.readers += 1;
            totals.expected_deliveries += ids.len() as u64;
            totals.delivered += reader.delivered;
            totals.lost += lost;
            totals.duplicates += reader.duplicates;
            totals.extra += extra;
            totals.readers_exact += u64::from(lost == 0 && extra == 0 && reader.duplicates == 0);
            totals.connects += reader.connects;
            totals.planned_reconnects += reader.planned_reconnects;
            totals.token_expired += reader.token_expired;
            totals.drains += reader.drains;
            totals.unexplained_closes += reader.unexplained_closes;
            totals.reader_failures += reader.failures;
            figures.readers.push(reader);
        }
        totals.log_events += figures.log_events;
        totals.acked += figures.acked;
        totals.missing_from_log += figures.missing_from_log;
        totals.unacked_in_log += figures.unacked_in_log;
        stories.push(figures);
    }
    if totals.readers == 0 {
        failures.push("no reader reported".into());
    }
    if totals.acked == 0 {
        failures.push("no event was acknowledged: nothing was tested".into());
    }

    // Stream ends.
    if totals.reader_failures > 0 {
        let first = input.outcomes.iter().flat_map(|o| o.errors.first()).next();
        failures.push(format!(
            "{} stream failures (refused or failed opens, stalls, gaps, read or protocol errors); first: {}",
            totals.reader_failures,
            first.map_or("-", String::as_str)
        ));
    }
    match input.closes {
        Some(closes) => {
            #[allow(clippy::cast_precision_loss)] // a count of closes
            let unexplained = totals.unexplained_closes as f64;
            if unexplained > closes.slow_consumer {
                failures.push(format!(
                    "{} streams were ended by the server without a token-expired frame or a drain hint, and the \
                     server counts {} slow-consumer cuts",
                    totals.unexplained_closes, closes.slow_consumer
                ));
            }
        }
        None => failures.push("could not read the server's close reasons from /metrics at the end".into()),
    }
    if !input.stopped_by_signal {
        failures.push("no stop signal within --max-secs".into());
    }
    if !input.caught_up {
        failures.push("some readers had not caught up with the log by the end of the catch-up time".into());
    }

    // k6.
    match &input.k6 {
        Some(k6) => {
            for t in k6.thresholds.iter().filter(|t| !t.ok) {
                failures.push(format!("k6 threshold failed: {} {}", t.metric, t.threshold));
            }
            if k6.acked != totals.acked {
                failures
                    .push(format!("k6 counted {} acknowledged events, its ack log holds {}", k6.acked, totals.acked));
            }
        }
        None if config.k6_summary.is_some() => failures.push("no k6 summary".into()),
        None => {}
    }

    // Resources.
    let after: Vec<&Sample> = input.samples.iter().filter(|s| s.t_secs >= config.warmup_secs).collect();
    let series = |get: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        after.iter().filter_map(|s| get(s).map(|v| (s.t_secs / 60.0, v))).collect()
    };
    let b = config.bounds;
    let specs: [ResourceSpec; 4] = [
        ("rss", "KiB", |s| s.rss_kib, Some(b.rss_slope_kib_per_min), b.rss_growth_kib),
        ("open_fds", "fds", |s| s.fds, None, b.fd_growth),
        ("threads", "threads", |s| s.threads, None, b.thread_growth),
        ("tokio_tasks", "tasks", |s| s.tasks, None, b.task_growth),
    ];
    let mut resources = Vec::new();
    for (name, unit, get, max_slope, max_growth) in specs {
        let fit = fit(&series(get));
        let ok = match &fit {
            None => {
                failures.push(format!(
                    "{name}: fewer than {MIN_SAMPLES} samples after the warm-up ({} samples in all): no slope",
                    input.samples.len()
                ));
                false
            }
            Some(f) => {
                let slope_ok = max_slope.is_none_or(|m| f.slope_per_min <= m);
                let growth_ok = f.growth <= max_growth;
                if !slope_ok || !growth_ok {
                    failures.push(format!(
                        "{name} grew after the warm-up: slope {:.1} {unit}/min (bound {}), growth {:.1} {unit} \
                         (bound {max_growth})",
                        f.slope_per_min,
                        max_slope.map_or_else(|| "none".into(), |m| m.to_string()),
                        f.growth
                    ));
                }
                slope_ok && growth_ok
            }
        };
        resources.push(Resource {
            name: name.into(),
            unit: unit.into(),
            fit,
            max_slope_per_min: max_slope,
            max_growth,
            ok,
        });
    }

    SoakReport {
        label: config.label.clone(),
        date_utc: system::utc_now(),
        machine: system::machine(),
        ok: failures.is_empty(),
        failures,
        params: Params {
            stories: input.stories.len(),
            readers_per_story: config.readers_per_story,
            token_ttl_secs: config.token_ttl_secs,
            reconnect_secs: config.reconnect_secs,
            sample_secs: config.sample_secs,
            warmup_secs: config.warmup_secs,
            load_secs: input.load_secs,
            bounds: b,
        },
        k6: input.k6,
        totals,
        server_closes: input.closes,
        resources,
        stories,
    }
}

impl SoakReport {
    /// The summary printed at the end of a run.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(out, "== soak {} ({}, {:.0} s of load)", self.label, self.date_utc, self.params.load_secs);
        if let Some(k6) = &self.k6 {
            let _ = writeln!(
                out,
                "POSTs: {} events, {} acked, {} failed ({:.4}%), {} requests ({} retries), {} dropped iterations",
                k6.events,
                k6.acked,
                k6.failed,
                k6.failure_rate * 100.0,
                k6.requests,
                k6.retries,
                k6.dropped_iterations
            );
            let l = &k6.post_ms;
            let _ = writeln!(
                out,
                "POST latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  avg {:.2}",
                l.p50, l.p95, l.p99, l.max, l.avg
            );
        }
        let _ = writeln!(
            out,
            "log: {} events in {} stories, {} acked, {} acked but missing, {} stored but not acked",
            t.log_events,
            self.stories.len(),
            t.acked,
            t.missing_from_log,
            t.unacked_in_log
        );
        let _ = writeln!(
            out,
            "deliveries: {} of {} expected to {} readers ({} exact), lost {}, duplicated {}, not in log {}",
            t.delivered, t.expected_deliveries, t.readers, t.readers_exact, t.lost, t.duplicates, t.extra
        );
        let _ = writeln!(
            out,
            "streams: {} opens, {} planned reconnects, {} token-expired, {} drains, {} ended without a reason, {} \
             other failures",
            t.connects, t.planned_reconnects, t.token_expired, t.drains, t.unexplained_closes, t.reader_failures
        );
        if let Some(c) = &self.server_closes {
            let _ = writeln!(
                out,
                "server close reasons: client {} token_expired {} slow_consumer {} shutdown {}",
                c.client, c.token_expired, c.slow_consumer, c.shutdown
            );
        }
        for r in &self.resources {
            match &r.fit {
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "{:<12} {:>6} samples after warm-up: {:.1} -> {:.1} {} (min {:.1}, max {:.1}), slope {:+.2} \
                         {}/min, growth {:+.1} (bound {}{}) {}",
                        r.name,
                        f.samples,
                        f.first,
                        f.last,
                        r.unit,
                        f.min,
                        f.max,
                        f.slope_per_min,
                        r.unit,
                        f.growth,
                        r.max_growth,
                        r.max_slope_per_min.map(|m| format!(", slope {m}/min")).unwrap_or_default(),
                        if r.ok { "ok" } else { "FAIL" }
                    );
                }
                None => {
                    let _ = writeln!(out, "{:<12} no fit (too few samples) FAIL", r.name);
                }
            }
        }
        if self.ok {
            let _ = writeln!(out, "soak: PASS");
        } else {
            let _ = writeln!(out, "soak: FAIL");
            for f in &self.failures {
                let _ = writeln!(out, "  - {f}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn config() -> SoakConfig {
        SoakConfig {
            label: "t".into(),
            url: "http://127.0.0.1:1".into(),
            story_prefix: "s".into(),
            stories: 1,
            readers_per_story: 2,
            jwt_secret: "0123456789abcdef".into(),
            token_ttl_secs: 60,
            reconnect_secs: 10.0,
            idle_timeout_secs: 20.0,
            follow_interval_ms: 500,
            server_pid: None,
            sample_secs: 1.0,
            warmup_secs: 10.0,
            bounds: LeakBounds {
                rss_slope_kib_per_min: 100.0,
                rss_growth_kib: 500.0,
                fd_growth: 5.0,
                thread_growth: 2.0,
                task_growth: 5.0,
            },
            acks: PathBuf::new(),
            k6_summary: None,
            ready_file: PathBuf::new(),
            out_dir: PathBuf::new(),
            plot: None,
            catch_up_secs: 5.0,
            max_secs: 60.0,
        }
    }

    /// Flat resource series from t = 0 to 60 s.
    fn flat_samples() -> Vec<Sample> {
        (0..=60)
            .map(|t| Sample {
                t_secs: f64::from(t),
                rss_kib: Some(10_000.0 + f64::from(t % 3)),
                fds: Some(40.0),
                threads: Some(6.0),
                tasks: Some(30.0),
                streams: Some(2.0),
            })
            .collect()
    }

    struct World {
        stories: Vec<String>,
        logs: Vec<StoryLog>,
        outcomes: Vec<ReaderOutcome>,
        acks: Vec<Ack>,
        samples: Vec<Sample>,
    }

    /// One story with 5 events, all acked, two readers that got all of them.
    fn healthy() -> World {
        let events: Vec<(EventId, Option<String>)> = (1..=5).map(|ms| (id(ms), Some(format!("k{ms}")))).collect();
        let acks = events
            .iter()
            .map(|(i, k)| Ack { story: "s0".into(), id: i.to_string(), key: k.clone().unwrap_or_default() })
            .collect();
        let received: Vec<EventId> = events.iter().map(|(i, _)| *i).collect();
        let outcomes = (0..2)
            .map(|reader| ReaderOutcome { story: 0, reader, received: received.clone(), ..ReaderOutcome::default() })
            .collect();
        World {
            stories: vec!["s0".into()],
            logs: vec![StoryLog { events, complete: true, ..StoryLog::default() }],
            outcomes,
            acks,
            samples: flat_samples(),
        }
    }

    fn judge_world(world: &World, config: &SoakConfig) -> SoakReport {
        judge(inputs_of(world, config))
    }

    #[test]
    fn a_healthy_run_passes() {
        let report = judge_world(&healthy(), &config());
        assert!(report.ok, "{:?}", report.failures);
        assert_eq!(
            (report.totals.delivered, report.totals.expected_deliveries, report.totals.readers_exact),
            (10, 10, 2)
        );
    }

    #[test]
    fn a_reader_missing_one_event_fails_completeness() {
        let mut world = healthy();
        world.outcomes[1].received.remove(2);
        let report = judge_world(&world, &config());
        assert!(!report.ok);
        assert_eq!(report.totals.lost, 1);
        assert!(
            report.failures.iter().any(|f| f.contains("reader 1") && f.contains("1 lost")),
            "{:?}",
            report.failures
        );
    }

    #[test]
    fn an_acked_event_missing_from_the_log_fails() {
        let mut world = healthy();
        world.acks.push(Ack { story: "s0".into(), id: "99-0".into(), key: "k99".into() });
        let report = judge_world(&world, &config());
        assert_eq!(report.totals.missing_from_log, 1);
        assert!(!report.ok);
    }

    #[test]
    fn duplicates_and_unexplained_closes_fail_but_slow_consumer_cuts_do_not() {
        let config = config();
        let mut world = healthy();
        world.outcomes[0].duplicates = 1;
        assert!(!judge_world(&world, &config).ok, "a duplicate");
        let mut world = healthy();
        world.outcomes[0].unexplained_closes = 1;
        assert!(!judge_world(&world, &config).ok, "a close without a cause");
        let slow = Some(CloseReasons { slow_consumer: 1.0, ..CloseReasons::default() });
        assert!(judge(Inputs { closes: slow, ..inputs_of(&world, &config) }).ok, "the server cut a slow consumer");
        world.outcomes[0].stalls = 1;
        assert!(!judge(Inputs { closes: slow, ..inputs_of(&world, &config) }).ok, "a stall");
    }

    fn inputs_of<'a>(world: &'a World, config: &'a SoakConfig) -> Inputs<'a> {
        Inputs {
            config,
            stories: &world.stories,
            logs: &world.logs,
            outcomes: &world.outcomes,
            acks: &world.acks,
            samples: &world.samples,
            closes: Some(CloseReasons::default()),
            k6: None,
            stopped_by_signal: true,
            caught_up: true,
            load_secs: 60.0,
        }
    }

    #[test]
    fn growing_memory_or_descriptors_after_the_warm_up_fail() {
        let config = config();
        let mut world = healthy();
        // 20 KiB per second = 1200 KiB/min, past both RSS bounds; the warm-up's own growth does not count.
        for s in &mut world.samples {
            s.rss_kib = Some(10_000.0 + 20.0 * s.t_secs);
        }
        let report = judge_world(&world, &config);
        let rss = &report.resources[0];
        assert!(!rss.ok && !report.ok);
        let fit = rss.fit.unwrap();
        assert!((fit.slope_per_min - 1200.0).abs() < 1e-6, "{fit:?}");
        let mut world = healthy();
        for s in &mut world.samples {
            if s.t_secs < config.warmup_secs {
                s.rss_kib = Some(1_000.0 + 500.0 * s.t_secs);
            }
            s.fds = Some(40.0 + (s.t_secs / 5.0).floor());
        }
        let report = judge_world(&world, &config);
        assert!(report.resources[0].ok, "growth during the warm-up is not counted: {:?}", report.resources[0]);
        assert!(!report.resources[1].ok, "one more fd every 5 s: {:?}", report.resources[1]);
    }

    #[test]
    fn too_few_samples_is_a_failure_not_a_pass() {
        let mut world = healthy();
        world.samples.truncate(15);
        let report = judge_world(&world, &config());
        assert!(!report.ok);
        assert!(report.resources.iter().all(|r| r.fit.is_none()));
    }

    #[test]
    fn a_failed_k6_threshold_fails_the_verdict() {
        let world = healthy();
        let k6 = K6Summary {
            acked: 5,
            thresholds: vec![Threshold {
                metric: "soak_post_duration".into(),
                threshold: "p(99)<0.001".into(),
                ok: false,
            }],
            ..K6Summary::default()
        };
        let report = judge(Inputs { k6: Some(k6), ..inputs_of(&world, &config()) });
        assert!(report.failures.iter().any(|f| f.contains("p(99)<0.001")), "{:?}", report.failures);
    }

    #[test]
    fn acks_are_read_from_k6_log_lines() {
        let dir = std::env::temp_dir().join(format!("soak-acks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acks.log");
        std::fs::write(
            &path,
            "{\"ack\":{\"story\":\"s0\",\"id\":\"1-0\",\"key\":\"k\"}}\nsome k6 warning\n{\"other\":1}\n",
        )
        .unwrap();
        assert_eq!(read_acks(&path).unwrap(), vec![Ack { story: "s0".into(), id: "1-0".into(), key: "k".into() }]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lost_and_extra_come_from_one_merge() {
        let log: Vec<EventId> = (1..=6).map(id).collect();
        assert_eq!(compare(&log, &log), (0, 0));
        assert_eq!(compare(&log, &[id(1), id(3), id(6), id(7)]), (3, 1));
        assert_eq!(compare(&[], &[id(1)]), (0, 1));
    }
}
