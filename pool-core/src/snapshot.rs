//! A serialisable, point-in-time view of a pool.

#[cfg(feature = "serde")]
use serde::Serialize;

use crate::adaptive::TargetReason;
use crate::tier::Tier;

/// Everything a dashboard or health endpoint needs about one pool. Keeps the field names
/// of the Python `WarmableResourcePool`'s `PoolMetrics` this crate replaces (dashboards
/// built on it read them), plus the figures that pool lacked.
///
/// Gauges (`warm_pool_size`, `in_use`, …) are read together under the pool's lock, so they
/// are mutually consistent; counters are read one by one and may be a few operations apart.
///
/// New fields are added over time, so the struct is `#[non_exhaustive]`; to build one (in
/// a test of a health endpoint, say), start from `PoolSnapshot::default()` and set fields.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// The pool's name.
    pub name: String,
    /// True once the idle set first reached its target, until shutdown.
    pub ready: bool,
    /// Idle, ready resources now.
    pub warm_pool_size: usize,
    /// The idle target in force: the configured `warm_target`, or more when the adaptive
    /// target measured more demand.
    pub warm_pool_target: usize,
    /// The configured `warm_target`, the adaptive target's floor.
    pub warm_target_floor: usize,
    /// Why `warm_pool_target` has its value.
    pub warm_target_reason: TargetReason,
    /// Moving average of create+warm latency, milliseconds (measured only with the
    /// adaptive target on; `None` before the first create).
    pub create_latency_ms: Option<f64>,
    /// Whether session binding is on.
    pub session_awareness: bool,
    /// Sessions currently known to the pool.
    pub active_sessions: usize,
    /// Whether the background maintainer runs.
    pub background_warmup: bool,
    /// All acquires that returned a resource.
    pub allocations_total: u64,
    /// Acquires served by the session's own resource.
    pub allocations_dedicated: u64,
    /// Acquires served from the warm set (or by a returned resource) without a connect.
    pub allocations_warm: u64,
    /// Acquires that paid a create.
    pub allocations_cold: u64,
    /// Passes of the background maintainer.
    pub warmup_cycles: u64,
    /// Parked session resources taken back (reset and handed over) for callers waiting on
    /// a full pool. Zero unless `reclaim_idle_sessions` is on.
    pub reclaims_total: u64,
    /// Warm-ups that failed (those resources were closed, never handed out).
    pub warmup_failures: u64,
    /// Bound on live resources.
    pub max_size: usize,
    /// Live resources, the quantity `max_size` bounds: idle + in use + being created +
    /// being closed.
    pub size: usize,
    /// Resources handed out, including those bound to sessions.
    pub in_use: usize,
    /// Resources bound to sessions (in use or parked in their session).
    pub dedicated: usize,
    /// Callers queued for a resource: those waiting for room or a returned resource, and
    /// those creating their own (COLD) while racing for a returned one.
    pub waiting: usize,
    /// Resources being created (for callers or by the maintainer).
    pub creating: usize,
    /// Resources whose close has not finished: the backend still counts them, and so does
    /// `size`.
    pub closing: usize,
    /// Resources ever created successfully.
    pub created_total: u64,
    /// Resources whose `Manager::close` finished.
    pub closed_total: u64,
    /// Creates that failed or timed out.
    pub create_failures: u64,
    /// The most recent create or warm failure.
    pub last_error: Option<String>,
    /// Acquire latency per tier.
    pub acquire_latency: TierLatencies,
    /// Acquires that found nothing idle, waited, and were handed a resource another caller
    /// gave back. They are also counted in `allocations_warm` (no connect was paid), but a
    /// growing share here means the pool is too small for its load.
    pub waited_total: u64,
    /// How long those acquires waited (every one is timed).
    pub wait_latency: LatencySummary,
}

/// Acquire latency percentiles per tier.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct TierLatencies {
    /// Latency of DEDICATED acquires.
    pub dedicated: LatencySummary,
    /// Latency of WARM acquires.
    pub warm: LatencySummary,
    /// Latency of COLD acquires.
    pub cold: LatencySummary,
}

impl TierLatencies {
    /// The summary for one tier.
    pub fn get(&self, tier: Tier) -> &LatencySummary {
        match tier {
            Tier::Dedicated => &self.dedicated,
            Tier::Warm => &self.warm,
            Tier::Cold => &self.cold,
        }
    }
}

/// Percentiles of one tier's acquire latency, in microseconds. COLD acquires are all timed;
/// WARM and DEDICATED acquires are sampled (one in [`LATENCY_SAMPLE_EVERY`](crate::LATENCY_SAMPLE_EVERY))
/// because reading the clock would cost more than the acquire itself.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct LatencySummary {
    /// Timed acquires behind these figures.
    pub samples: u64,
    /// Median, or `None` before the first sample.
    pub p50_us: Option<f64>,
    /// 99th percentile, or `None` before the first sample.
    pub p99_us: Option<f64>,
}

/// The pool's gauges, read together under its lock: what [`Pool::counts`](crate::Pool::counts)
/// returns without the cost of a full [`PoolSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct PoolCounts {
    /// Idle resources (including any that stopped being ready and await pruning).
    pub idle: usize,
    /// Resources handed out, including those bound to sessions.
    pub in_use: usize,
    /// Resources bound to sessions, in use or parked.
    pub dedicated: usize,
    /// Resources being created.
    pub creating: usize,
    /// Resources being closed.
    pub closing: usize,
    /// Callers queued for a resource.
    pub waiting: usize,
    /// Live resources, the quantity `max_size` bounds.
    pub size: usize,
    /// Sessions holding or binding a resource (read just after the other gauges).
    pub sessions: usize,
}
