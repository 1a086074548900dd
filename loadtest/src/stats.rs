//! Measurement primitives: latency histograms in microseconds (hdrhistogram, sharded so
//! thousands of receiver tasks record without contending on one lock), per-sender
//! sequence tracking for loss / duplicate / order checks, and the summaries that end up in
//! tables and JSON.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records (1 hour in µs); larger values saturate.
const MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// A latency histogram split in shards; `record` locks one shard for a few nanoseconds
/// and never across an `.await`.
pub struct Latency {
    /// Shards, chosen by the caller's hint (task index).
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// Eight shards: plenty for two cores, ~1.5 MiB per histogram.
    pub fn new() -> Self {
        Self {
            shards: (0..8).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records one value in microseconds.
    pub fn record(&self, hint: usize, us: u64) {
        let shard = &self.shards[hint % self.shards.len()];
        shard
            .lock()
            .expect("histogram lock")
            .saturating_record(us.max(1));
    }

    /// Forgets everything recorded so far (e.g. set-up traffic).
    pub fn reset(&self) {
        for s in &self.shards {
            s.lock().expect("histogram lock").reset();
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.shards {
            h.add(&*s.lock().expect("histogram lock"))
                .expect("same bounds");
        }
        h
    }

    /// Percentile summary of everything recorded.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.merged())
    }

    /// The recorded values, to ship to a parent process.
    pub fn dump(&self) -> HistDump {
        HistDump::of(&self.merged())
    }
}

/// A histogram as `(value, count)` pairs, so child processes can send theirs to the parent
/// as JSON and the parent can merge them exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistDump(pub Vec<(u64, u64)>);

impl HistDump {
    /// Every recorded value with its count.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Merges several dumps back into a histogram.
    pub fn merge<'a>(dumps: impl IntoIterator<Item = &'a HistDump>) -> Histogram<u64> {
        let mut h = new_histogram();
        for d in dumps {
            for &(v, n) in &d.0 {
                h.saturating_record_n(v, n);
            }
        }
        h
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A growable bitset of sequence numbers (1-based sequences map to bit `seq`).
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    /// 64 sequence numbers per word.
    words: Vec<u64>,
    /// How many bits are set.
    count: u64,
}

impl SeqSet {
    /// Sets `seq`; returns false if it was already set.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let mask = 1u64 << b;
        let fresh = self.words[w] & mask == 0;
        if fresh {
            self.words[w] |= mask;
            self.count += 1;
        }
        fresh
    }

    /// Whether `seq` is set.
    pub fn contains(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        w < self.words.len() && self.words[w] & (1 << (seq % 64)) != 0
    }

    /// How many are set.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many of `expected` are missing here.
    pub fn missing_from(&self, expected: &SeqSet) -> u64 {
        let mut missing = 0u64;
        for (i, &e) in expected.words.iter().enumerate() {
            let have = self.words.get(i).copied().unwrap_or(0);
            missing += u64::from((e & !have).count_ones());
        }
        missing
    }

    /// A set holding 1..=n, for senders whose sends are not acknowledged (baseline).
    pub fn first_n(n: u64) -> SeqSet {
        let mut s = SeqSet::default();
        for seq in 1..=n {
            s.insert(seq);
        }
        s
    }
}

/// What a receiver learned from one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New, and after everything seen before from this sender.
    InOrder,
    /// New, but a later sequence number from this sender arrived first.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// One receiver's view of many senders: which sequence numbers arrived and in what order.
#[derive(Debug, Default)]
pub struct SeqTracker {
    /// Indexed by sender.
    senders: Vec<(SeqSet, u64)>,
}

impl SeqTracker {
    /// Records a delivery of `seq` from `sender`.
    pub fn record(&mut self, sender: u32, seq: u64) -> Arrival {
        let i = sender as usize;
        if i >= self.senders.len() {
            self.senders.resize_with(i + 1, Default::default);
        }
        let (seen, highest) = &mut self.senders[i];
        if !seen.insert(seq) {
            return Arrival::Duplicate;
        }
        if seq < *highest {
            Arrival::OutOfOrder
        } else {
            *highest = seq;
            Arrival::InOrder
        }
    }

    /// How many of each sender's `expected` sequence numbers never arrived.
    pub fn lost(&self, expected: &[SeqSet]) -> u64 {
        let empty = SeqSet::default();
        expected
            .iter()
            .enumerate()
            .map(|(i, e)| self.senders.get(i).map_or(&empty, |s| &s.0).missing_from(e))
            .sum()
    }
}

/// Failure reasons and how often each happened.
#[derive(Debug, Default)]
pub struct Failures(Mutex<BTreeMap<String, u64>>);

impl Failures {
    /// Counts one failure; the reason is truncated so tallies group well.
    pub fn add(&self, reason: impl AsRef<str>) {
        let mut r: String = reason.as_ref().chars().take(120).collect();
        if r.is_empty() {
            r.push_str("unknown");
        }
        *self.0.lock().expect("failures lock").entry(r).or_default() += 1;
    }

    /// A copy of the tallies.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("failures lock").clone()
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.0.lock().expect("failures lock").values().sum()
    }
}

/// Merges failure tallies from several sources.
pub fn merge_failures<'a>(
    all: impl IntoIterator<Item = &'a BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in all {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_loss_duplicates_and_order() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0, 1), Arrival::InOrder);
        assert_eq!(t.record(0, 3), Arrival::InOrder);
        assert_eq!(t.record(0, 2), Arrival::OutOfOrder);
        assert_eq!(t.record(0, 3), Arrival::Duplicate);
        assert_eq!(t.record(2, 1), Arrival::InOrder);
        let expected = vec![SeqSet::first_n(5), SeqSet::first_n(0), SeqSet::first_n(2)];
        // sender 0 misses 4 and 5; sender 2 misses 2.
        assert_eq!(t.lost(&expected), 3);
    }

    #[test]
    fn seqset_counts_and_diffs() {
        let mut a = SeqSet::default();
        assert!(a.insert(200));
        assert!(!a.insert(200));
        assert!(a.contains(200) && !a.contains(199));
        assert_eq!(a.len(), 1);
        assert_eq!(a.missing_from(&SeqSet::first_n(200)), 199);
    }

    #[test]
    fn latency_merges_shards_and_dumps_round_trip() {
        let l = Latency::new();
        for i in 0..1000u64 {
            l.record(i as usize, 1000 + i);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 1.5).abs() < 0.01, "{s:?}");
        let merged = HistDump::merge([&l.dump(), &l.dump()]);
        assert_eq!(merged.len(), 2000);
    }
}
