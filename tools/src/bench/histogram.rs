//! Latencies as a log-linear histogram: memory bounded however long a run lasts (a soak sends
//! millions of calls, and keeping each one grew the load generator by a megabyte a minute),
//! percentiles within 0.4 % of the exact value, the maximum exact.

use std::time::Duration;

use super::report::Percentiles;

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is at most 1/128 of its value wide.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// Call latencies, counted per bucket of nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    /// Grown as slower calls arrive: a few thousand counters at most.
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
}

/// The bucket of `ns`: exact below 128 ns, then 128 per power of two.
fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let shift = (63 - ns.leading_zeros()) - SUB_BITS;
    let sub = (ns >> shift) - SUB;
    ((u64::from(shift) + 1) * SUB + sub) as usize
}

/// The smallest value in bucket `index`, and the bucket's width.
fn bucket(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index, 1);
    }
    let shift = index / SUB - 1;
    ((SUB + index % SUB) << shift, 1 << shift)
}

// === impl LatencyHistogram ===

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let i = index(ns);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Calls recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The latency at rank `p` (0–1) as the sorted samples would give it (the sample at
    /// `round((n - 1) · p)`), from the middle of its bucket; in milliseconds.
    fn at(&self, p: f64) -> f64 {
        let rank = ((self.total - 1) as f64 * p).round() as u64;
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                let (low, width) = bucket(i);
                let middle = (low + width / 2).min(self.max_ns);
                return middle as f64 / 1e6;
            }
        }
        self.max_ns as f64 / 1e6
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        Percentiles {
            p50: self.at(0.50),
            p90: self.at(0.90),
            p99: self.at(0.99),
            max: self.max_ns as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_line() {
        let mut previous_end = 0;
        for i in 0..4000 {
            let (low, width) = bucket(i);
            assert_eq!(low, previous_end, "bucket {i} starts where {} ends", i - 1);
            assert!(
                width * SUB <= low.max(SUB),
                "bucket {i} is at most 1/128 wide"
            );
            assert_eq!(index(low), i);
            assert_eq!(index(low + width - 1), i);
            previous_end = low + width;
        }
        assert!(index(u64::MAX) < 8000, "a bounded number of buckets");
    }

    #[test]
    fn percentiles_are_within_half_a_bucket_of_the_exact_ones() {
        let mut histogram = LatencyHistogram::default();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let p = histogram.percentiles();
        assert_eq!(
            (p.p50.round(), p.p90.round(), p.p99.round(), p.max),
            (51.0, 90.0, 99.0, 100.0)
        );

        // Two halves merged are the whole; a spread of microseconds to seconds stays close.
        let mut halves = [LatencyHistogram::default(), LatencyHistogram::default()];
        let mut whole = LatencyHistogram::default();
        let mut exact = Vec::new();
        for i in 0..100_000u64 {
            let latency = Duration::from_nanos(1_000 + i * i * 97);
            exact.push(latency);
            whole.record(latency);
            halves[(i % 2) as usize].record(latency);
        }
        let [mut merged, other] = halves;
        merged.merge(&other);
        assert_eq!(merged.count(), 100_000);
        exact.sort();
        for p in [0.5, 0.9, 0.99] {
            let exact_ms =
                exact[((exact.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
            let got = merged.at(p);
            assert!(
                (got - exact_ms).abs() <= exact_ms / 256.0,
                "p{p}: {got} vs {exact_ms}"
            );
            assert_eq!(got, whole.at(p));
        }
        assert_eq!(LatencyHistogram::default().percentiles().max, 0.0);
    }
}
