//! A fixed-bucket histogram of atomics, rendered in the Prometheus text format. Cheap
//! enough for hot paths (one bucket search over a dozen bounds and two relaxed atomic
//! adds per observation) and free of locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket bounds, in µs: 0.5 ms to 30 s (long-polls hold requests up to 30 s).
const LATENCY_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Queue-depth bucket bounds, in frames (the agent queue holds 4,096).
const DEPTH: &[u64] = &[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// One histogram: counts per bucket, their sum and their number.
pub struct Histogram {
    /// Upper bounds (inclusive) of the buckets, in raw units; one more bucket is +Inf.
    bounds: &'static [u64],
    /// Raw units per rendered unit (1e6 for µs → seconds, 1 for frames).
    per_unit: f64,
    /// Observations per bucket (not cumulative; rendering accumulates).
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, in raw units.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64], per_unit: f64) -> Histogram {
        Histogram {
            bounds,
            per_unit,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Durations, rendered in seconds.
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_US, 1e6)
    }

    /// Queue depths, in frames.
    pub fn depth() -> Histogram {
        Histogram::new(DEPTH, 1.0)
    }

    /// Records one observation in raw units.
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration (for [`Histogram::latency`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",…` or empty.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format!("{}", *b as f64 / self.per_unit),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.per_unit;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let h = Histogram::depth();
        for v in [0, 1, 3, 4, 5000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "q", "");
        assert!(out.contains("q_bucket{le=\"0\"} 1\n"), "{out}");
        assert!(out.contains("q_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("q_bucket{le=\"4\"} 4\n"), "{out}");
        assert!(out.contains("q_bucket{le=\"4096\"} 4\n"), "{out}");
        assert!(out.contains("q_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("q_sum 5008\nq_count 5\n"), "{out}");
        let l = Histogram::latency();
        l.observe_duration(Duration::from_millis(3));
        let mut out = String::new();
        l.render(&mut out, "t", "route=\"/x\"");
        assert!(
            out.contains("t_bucket{route=\"/x\",le=\"0.0025\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("t_bucket{route=\"/x\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("t_sum{route=\"/x\"} 0.003\n"), "{out}");
    }
}
