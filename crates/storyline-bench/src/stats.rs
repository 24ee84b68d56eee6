//! Delivery accounting: which sequence numbers each stream saw, what was lost or duplicated, latency
//! histograms, and merging the results of several processes.
//!
//! Definitions (also in the report):
//! - *expected* = Σ over stories of (events published OK to the story × streams of the story that stayed open
//!   from the end of the connect phase to the end of the drain);
//! - *delivered* = every event carrying marks received on any stream, duplicates included;
//! - *lost* = expected − distinct (stream, seq) pairs received on those whole-run streams for events published OK;
//! - *duplicated* = receptions of a seq a stream had already seen;
//! - *unexpected* = receptions of a seq that was never published OK (out of range, or its POST failed).

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use anyhow::Context as _;
use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2Serializer},
};
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
#[allow(
    clippy::expect_used,
    reason = "constant bounds that hdrhistogram accepts: low >= 1, high >= 2 * low, sigfig <= 5"
)]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant histogram bounds")
}

/// Which sequence numbers a stream has received: one bit per event its story can get.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    limit: u64,
}

/// What [`SeqSet::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    /// A seq at or beyond the number of events the story can get.
    OutOfRange,
}

impl SeqSet {
    /// A set for seqs `0..limit`; memory grows only as high seqs arrive.
    pub fn new(limit: u64) -> SeqSet {
        SeqSet { bits: Vec::new(), limit }
    }

    pub fn insert(&mut self, seq: u64) -> Seen {
        if seq >= self.limit {
            return Seen::OutOfRange;
        }
        let Ok(word) = usize::try_from(seq / 64) else { return Seen::OutOfRange };
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (seq % 64);
        if self.bits[word] & mask != 0 {
            Seen::Duplicate
        } else {
            self.bits[word] |= mask;
            Seen::New
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        usize::try_from(seq / 64)
            .ok()
            .and_then(|word| self.bits.get(word))
            .is_some_and(|bits| bits & (1u64 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one subscriber stream saw, from connect to close.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    pub story: usize,
    pub opened: bool,
    /// Open from the end of the connect phase until the stop signal.
    pub survived: bool,
    /// Why the stream failed to open or ended early.
    pub failure: Option<String>,
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_range: u64,
    pub seen: SeqSet,
}

/// The publisher's outcome that subscribers need for their accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTally {
    /// Events published OK, per story.
    pub ok_per_story: Vec<u64>,
    /// Seqs whose POST failed, per story.
    pub failed_seqs: Vec<Vec<u64>>,
}

/// Subscriber-side results of one process (or, merged, of all).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriberResult {
    pub wanted: u64,
    pub open: u64,
    pub failed: u64,
    /// Why streams failed to open, with counts.
    pub failures: BTreeMap<String, u64>,
    /// Streams that opened but ended before the stop signal.
    pub dropped: u64,
    pub drop_reasons: BTreeMap<String, u64>,
    /// Streams per story that stayed open for the whole run.
    pub whole_run_per_story: Vec<u64>,
    pub delivered: u64,
    /// Distinct (stream, seq) pairs received on whole-run streams for events published OK.
    pub delivered_unique: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    #[serde(with = "histogram_base64")]
    pub latency_us: Histogram<u64>,
}

impl SubscriberResult {
    pub fn empty(stories: usize) -> SubscriberResult {
        SubscriberResult {
            wanted: 0,
            open: 0,
            failed: 0,
            failures: BTreeMap::new(),
            dropped: 0,
            drop_reasons: BTreeMap::new(),
            whole_run_per_story: vec![0; stories],
            delivered: 0,
            delivered_unique: 0,
            duplicated: 0,
            unexpected: 0,
            latency_us: new_histogram(),
        }
    }

    /// Folds stream results in, using the publisher's tally to tell published-OK seqs from the rest.
    pub fn add_streams(&mut self, streams: &[StreamResult], tally: &PublishTally) {
        for stream in streams {
            self.wanted += 1;
            if !stream.opened {
                self.failed += 1;
                *self.failures.entry(stream.failure.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
                continue;
            }
            self.open += 1;
            self.delivered += stream.delivered;
            self.duplicated += stream.duplicated;
            let failed = tally.failed_seqs.get(stream.story).map(Vec::as_slice).unwrap_or_default();
            let failed_seen = failed.iter().filter(|seq| stream.seen.contains(**seq)).count() as u64;
            self.unexpected += stream.out_of_range + failed_seen;
            if stream.survived {
                if self.whole_run_per_story.len() <= stream.story {
                    self.whole_run_per_story.resize(stream.story + 1, 0);
                }
                self.whole_run_per_story[stream.story] += 1;
                self.delivered_unique += stream.seen.len() - failed_seen;
            } else {
                self.dropped += 1;
                *self.drop_reasons.entry(stream.failure.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
            }
        }
    }

    /// Adds another process's results.
    pub fn merge(&mut self, other: &SubscriberResult) -> anyhow::Result<()> {
        self.wanted += other.wanted;
        self.open += other.open;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.delivered += other.delivered;
        self.delivered_unique += other.delivered_unique;
        self.duplicated += other.duplicated;
        self.unexpected += other.unexpected;
        for (reason, n) in &other.failures {
            *self.failures.entry(reason.clone()).or_default() += n;
        }
        for (reason, n) in &other.drop_reasons {
            *self.drop_reasons.entry(reason.clone()).or_default() += n;
        }
        if self.whole_run_per_story.len() < other.whole_run_per_story.len() {
            self.whole_run_per_story.resize(other.whole_run_per_story.len(), 0);
        }
        for (mine, theirs) in self.whole_run_per_story.iter_mut().zip(&other.whole_run_per_story) {
            *mine += theirs;
        }
        self.latency_us.add(&other.latency_us).context("merging latency histograms")?;
        Ok(())
    }

    /// Σ over stories of published-OK events × whole-run streams.
    pub fn expected(&self, tally: &PublishTally) -> u64 {
        self.whole_run_per_story.iter().zip(&tally.ok_per_story).map(|(streams, ok)| streams * ok).sum()
    }

    pub fn lost(&self, tally: &PublishTally) -> u64 {
        self.expected(tally).saturating_sub(self.delivered_unique)
    }
}

/// Histograms shared by many stream tasks: a few mutex-guarded shards, each locked once per socket read.
#[derive(Debug)]
pub struct LatencyShards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencyShards {
    pub fn new(count: usize) -> LatencyShards {
        LatencyShards { shards: (0..count.max(1)).map(|_| Mutex::new(new_histogram())).collect() }
    }

    pub fn record(&self, shard: usize, latencies_us: &[u64]) {
        if latencies_us.is_empty() {
            return;
        }
        let mut histogram = self.shards[shard % self.shards.len()].lock().unwrap_or_else(PoisonError::into_inner);
        for latency in latencies_us {
            histogram.saturating_record(*latency);
        }
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

/// Serde for histograms: the HdrHistogram V2 format, base64 encoded.
pub mod histogram_base64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(histogram: &Histogram<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(histogram).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    pub fn encode(histogram: &Histogram<u64>) -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(histogram, &mut bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("histogram is not base64")?;
        let decoded: Histogram<u64> =
            Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // Re-home into the standard bounds so that merging never meets mismatched histograms.
        let mut histogram = new_histogram();
        histogram.add(&decoded).context("histogram bounds")?;
        Ok(histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(story: usize, survived: bool, seqs: &[u64]) -> StreamResult {
        let mut result = StreamResult { story, opened: true, survived, seen: SeqSet::new(10), ..Default::default() };
        for seq in seqs {
            match result.seen.insert(*seq) {
                Seen::New => {}
                Seen::Duplicate => result.duplicated += 1,
                Seen::OutOfRange => result.out_of_range += 1,
            }
            result.delivered += 1;
        }
        if !survived {
            result.failure = Some("closed by server".into());
        }
        result
    }

    #[test]
    fn seq_set_tells_new_duplicate_and_out_of_range_apart() {
        let mut set = SeqSet::new(100);
        assert_eq!(set.insert(0), Seen::New);
        assert_eq!(set.insert(99), Seen::New);
        assert_eq!(set.insert(0), Seen::Duplicate);
        assert_eq!(set.insert(100), Seen::OutOfRange);
        assert_eq!(set.len(), 2);
        assert!(set.contains(99) && !set.contains(98) && !set.contains(1_000));
    }

    #[test]
    fn lost_and_duplicated_are_counted_per_whole_run_stream() {
        // Story 0 got seqs 0..4 published OK; story 1 got 0..2 OK and seq 2 failed.
        let tally = PublishTally { ok_per_story: vec![4, 2], failed_seqs: vec![vec![], vec![2]] };
        let streams = [
            stream(0, true, &[0, 1, 2, 3]), // complete
            stream(0, true, &[0, 1, 1, 3]), // lost 2, one duplicate
            stream(1, true, &[0, 1, 2]),    // seq 2 was reported failed but arrived: unexpected
            stream(1, false, &[0]),         // dropped: not expected, deliveries still counted
            StreamResult { story: 1, failure: Some("connect: refused".into()), ..Default::default() },
        ];
        let mut result = SubscriberResult::empty(2);
        result.add_streams(&streams, &tally);
        assert_eq!((result.wanted, result.open, result.failed, result.dropped), (5, 4, 1, 1));
        assert_eq!(result.whole_run_per_story, vec![2, 1]);
        assert_eq!(result.expected(&tally), 2 * 4 + 2);
        assert_eq!(result.delivered, 12);
        assert_eq!(result.delivered_unique, 4 + 3 + 2);
        assert_eq!(result.lost(&tally), 1);
        assert_eq!(result.duplicated, 1);
        assert_eq!(result.unexpected, 1);
        assert_eq!(result.failures.get("connect: refused"), Some(&1));
        assert_eq!(result.drop_reasons.get("closed by server"), Some(&1));
    }

    #[test]
    fn out_of_range_seqs_are_unexpected_not_delivered_unique() {
        let tally = PublishTally { ok_per_story: vec![10], failed_seqs: vec![vec![]] };
        let mut result = SubscriberResult::empty(1);
        result.add_streams(&[stream(0, true, &[3, 12])], &tally);
        assert_eq!((result.delivered, result.delivered_unique, result.unexpected), (2, 1, 1));
        assert_eq!(result.lost(&tally), 9);
    }

    #[test]
    fn results_merge_and_survive_a_json_round_trip() {
        let tally = PublishTally { ok_per_story: vec![4, 4], failed_seqs: vec![vec![], vec![]] };
        let mut a = SubscriberResult::empty(2);
        a.add_streams(&[stream(0, true, &[0, 1, 2, 3])], &tally);
        a.latency_us.record(1_000).unwrap();
        let mut b = SubscriberResult::empty(1);
        b.add_streams(&[stream(1, true, &[0, 1]), stream(0, true, &[0, 0])], &tally);
        b.latency_us.record(5_000).unwrap();
        b.latency_us.record(9_000).unwrap();
        let b: SubscriberResult = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();

        a.merge(&b).unwrap();
        assert_eq!(a.whole_run_per_story, vec![2, 1]);
        assert_eq!(a.expected(&tally), 12);
        assert_eq!(a.delivered_unique, 4 + 2 + 1);
        assert_eq!(a.lost(&tally), 5);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.latency_us.len(), 3);
        assert_eq!(a.latency_us.max(), b.latency_us.max());
        assert!(a.latency_us.value_at_quantile(0.0) <= 1_001);
    }

    #[test]
    fn shards_merge_into_one_histogram() {
        let shards = LatencyShards::new(4);
        shards.record(0, &[10, 20]);
        shards.record(7, &[30]);
        shards.record(2, &[]);
        let merged = shards.merged();
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.max(), 30);
    }
}
