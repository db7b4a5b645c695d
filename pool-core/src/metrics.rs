//! Lock-free counters and latency histograms behind [`PoolSnapshot`](crate::PoolSnapshot).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::tier::Tier;

/// Counters updated on the hot path with single relaxed atomic adds: they are exact
/// totals, and a snapshot reads each one independently.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Allocations per tier, indexed by [`Tier::index`]; the total is their sum, so the
    /// per-tier figures always add up.
    pub allocations: [AtomicU64; 3],
    /// Acquire latency per tier, indexed by [`Tier::index`].
    pub latency: [LatencyHistogram; 3],
    /// Resources whose `create` (and `warm`) succeeded.
    pub created_total: AtomicU64,
    /// Resources passed to `Manager::close`.
    pub closed_total: AtomicU64,
    /// `create` calls that failed or timed out.
    pub create_failures: AtomicU64,
    /// `warm` calls that failed (the resource was closed, never handed out).
    pub warmup_failures: AtomicU64,
    /// Passes of the background maintainer.
    pub warmup_cycles: AtomicU64,
    /// Session resources reclaimed for waiting callers.
    pub reclaims_total: AtomicU64,
}

impl Stats {
    pub fn record_allocation(&self, tier: Tier) {
        self.allocations[tier.index()].fetch_add(1, Relaxed);
    }

    pub fn record_latency(&self, tier: Tier, elapsed: Duration) {
        self.latency[tier.index()].record(elapsed);
    }
}

/// Sub-buckets per power of two: four gives a worst-case error of 25 % per bucket, plenty
/// to tell 50 ns from 500 ms.
const SUB_BUCKET_BITS: u32 = 2;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Values below this many nanoseconds get a bucket each.
const LINEAR_LIMIT: u64 = 16;
const BUCKETS: usize = LINEAR_LIMIT as usize + (64 - 4) * SUB_BUCKETS;

/// A fixed-size log-linear histogram of nanosecond values. Recording is one relaxed atomic
/// add, so it can sit on the acquire path.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

fn bucket_index(nanos: u64) -> usize {
    if nanos < LINEAR_LIMIT {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros();
    let sub = (nanos >> (exponent - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    LINEAR_LIMIT as usize + (exponent as usize - 4) * SUB_BUCKETS + sub
}

/// The largest value that lands in bucket `index`: percentiles report this upper bound,
/// so they never understate a latency.
fn bucket_upper_bound(index: usize) -> u64 {
    if index < LINEAR_LIMIT as usize {
        return index as u64;
    }
    let offset = index - LINEAR_LIMIT as usize;
    let exponent = (offset / SUB_BUCKETS) as u32 + 4;
    let sub = (offset % SUB_BUCKETS) as u64;
    let base = 1u64 << exponent;
    let step = base >> SUB_BUCKET_BITS;
    base.saturating_add((sub + 1) * step - 1)
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_index(nanos)].fetch_add(1, Relaxed);
    }

    /// Count of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), as the upper bound of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_upper_bound(index)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_bound_covers_it() {
        for nanos in (0..5000u64).chain([u64::MAX / 2, u64::MAX]) {
            let index = bucket_index(nanos);
            assert!(index < BUCKETS, "{nanos} -> {index}");
            assert!(bucket_upper_bound(index) >= nanos, "{nanos}");
            if index > 0 {
                assert!(bucket_upper_bound(index - 1) < nanos, "{nanos}");
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_quarter_of_the_true_value() {
        let histogram = LatencyHistogram::default();
        for micros in 1..=100u64 {
            histogram.record(Duration::from_micros(micros));
        }
        assert_eq!(histogram.count(), 100);
        let p50 = histogram.quantile(0.5).unwrap().as_nanos() as f64;
        let p99 = histogram.quantile(0.99).unwrap().as_nanos() as f64;
        assert!((50_000.0..=62_500.0).contains(&p50), "{p50}");
        assert!((99_000.0..=123_750.0).contains(&p99), "{p99}");
        assert!(LatencyHistogram::default().quantile(0.5).is_none());
    }
}
