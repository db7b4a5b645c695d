//! `GET /api/v1/pools`: pool health in the service's own schema.
//!
//! The field names are an HTTP contract of this service (dashboards and alerts read them),
//! so they are defined here and built from pool-core's [`PoolSnapshot`] rather than being
//! whatever pool-core's structs are called.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use pool_core::{LatencySummary, PoolSnapshot};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every pool is ready.
    Healthy,
    /// Some pool is not ready (still warming, or shut down).
    Degraded,
    /// There are no pools.
    Unhealthy,
}

/// Allocations per tier, summed over the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
pub struct TierBreakdown {
    /// Served by the session's own connection.
    pub dedicated: u64,
    /// Served from the pre-warmed set.
    pub warm: u64,
    /// Paid a connect.
    pub cold: u64,
}

/// Figures over all pools.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolsSummary {
    /// Idle, pre-warmed connections over all pools.
    pub total_warm: usize,
    /// Sessions over all pools.
    pub total_active_sessions: usize,
    /// Acquires over all pools.
    pub allocations_total: u64,
    /// (dedicated + warm) / total × 100, rounded to one decimal; 0.0 before any acquire.
    pub hit_rate_percent: f64,
    /// Acquires per tier.
    pub tier_breakdown: TierBreakdown,
}

/// Percentiles of one tier's acquire latency, in microseconds. COLD acquires are all
/// timed; WARM and DEDICATED acquires are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LatencyPercentiles {
    /// Timed acquires behind these figures.
    pub samples: u64,
    /// Median, or `null` before the first sample.
    pub p50_us: Option<f64>,
    /// 99th percentile, or `null` before the first sample.
    pub p99_us: Option<f64>,
}

impl From<&LatencySummary> for LatencyPercentiles {
    fn from(summary: &LatencySummary) -> Self {
        Self {
            samples: summary.samples,
            p50_us: summary.p50_us,
            p99_us: summary.p99_us,
        }
    }
}

/// Acquire latency per tier.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AcquireLatency {
    /// DEDICATED acquires: the session's own connection.
    pub dedicated: LatencyPercentiles,
    /// WARM acquires: a pre-warmed connection.
    pub warm: LatencyPercentiles,
    /// COLD acquires: a connect on the request's path.
    pub cold: LatencyPercentiles,
}

/// One pool's state.
///
/// Gauges (`warm_pool_size`, `in_use`, …) were read together and are mutually consistent;
/// counters may be a few operations apart.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolStatus {
    /// The pool's name (`speech-tts` or `speech-stt`).
    pub name: String,
    /// True once the idle set first reached its target, until shutdown.
    pub ready: bool,
    /// Idle, pre-warmed connections now.
    pub warm_pool_size: usize,
    /// The idle target in force now: the configured floor, or more when demand asks for
    /// it (adaptive target).
    pub warm_pool_target: usize,
    /// The configured idle target (`WARM_POOL_TTS_SIZE` / `WARM_POOL_STT_SIZE`), the
    /// floor of the adaptive target.
    pub warm_target_floor: usize,
    /// Why the target is what it is: `floor`, `demand` or `ramp_limited`.
    pub warm_target_reason: String,
    /// Measured create + warm-up time, in milliseconds, or `null` before the first create.
    pub create_latency_ms: Option<f64>,
    /// Whether a session's turns reuse its connection (always true in this service).
    pub session_awareness: bool,
    /// Sessions currently known to the pool.
    pub active_sessions: usize,
    /// Whether the background maintainer runs.
    pub background_warmup: bool,
    /// All acquires that returned a connection.
    pub allocations_total: u64,
    /// Acquires served by the session's own connection.
    pub allocations_dedicated: u64,
    /// Acquires served without a connect.
    pub allocations_warm: u64,
    /// Acquires that paid a connect.
    pub allocations_cold: u64,
    /// Passes of the background maintainer.
    pub warmup_cycles: u64,
    /// Warm-ups that failed (those connections were closed, never handed out).
    pub warmup_failures: u64,
    /// Bound on open connections.
    pub max_size: usize,
    /// Open connections: idle + in use + being created + being closed.
    pub size: usize,
    /// Connections handed out, including those bound to sessions.
    pub in_use: usize,
    /// Connections bound to sessions.
    pub dedicated: usize,
    /// Requests queued for a connection.
    pub waiting: usize,
    /// Connections being created.
    pub creating: usize,
    /// Connections being closed: the backend still counts them, so `max_size` does too.
    pub closing: usize,
    /// Parked session connections handed to a waiting request because the pool was full.
    pub reclaims_total: u64,
    /// Acquires that queued for a returned connection (counted as WARM too).
    pub waited_total: u64,
    /// How long those acquires waited.
    pub wait_latency: LatencyPercentiles,
    /// Connections ever created successfully.
    pub created_total: u64,
    /// Connections ever closed.
    pub closed_total: u64,
    /// Connects that failed or timed out.
    pub create_failures: u64,
    /// The most recent connect or warm-up failure, or `null`.
    pub last_error: Option<String>,
    /// Acquire latency per tier.
    pub acquire_latency: AcquireLatency,
}

impl From<&PoolSnapshot> for PoolStatus {
    fn from(s: &PoolSnapshot) -> Self {
        Self {
            name: s.name.clone(),
            ready: s.ready,
            warm_pool_size: s.warm_pool_size,
            warm_pool_target: s.warm_pool_target,
            warm_target_floor: s.warm_target_floor,
            warm_target_reason: s.warm_target_reason.as_str().to_owned(),
            create_latency_ms: s.create_latency_ms,
            session_awareness: s.session_awareness,
            active_sessions: s.active_sessions,
            background_warmup: s.background_warmup,
            allocations_total: s.allocations_total,
            allocations_dedicated: s.allocations_dedicated,
            allocations_warm: s.allocations_warm,
            allocations_cold: s.allocations_cold,
            warmup_cycles: s.warmup_cycles,
            warmup_failures: s.warmup_failures,
            max_size: s.max_size,
            size: s.size,
            in_use: s.in_use,
            dedicated: s.dedicated,
            waiting: s.waiting,
            creating: s.creating,
            closing: s.closing,
            reclaims_total: s.reclaims_total,
            waited_total: s.waited_total,
            wait_latency: (&s.wait_latency).into(),
            created_total: s.created_total,
            closed_total: s.closed_total,
            create_failures: s.create_failures,
            last_error: s.last_error.clone(),
            acquire_latency: AcquireLatency {
                dedicated: (&s.acquire_latency.dedicated).into(),
                warm: (&s.acquire_latency.warm).into(),
                cold: (&s.acquire_latency.cold).into(),
            },
        }
    }
}

/// The response of `GET /api/v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolsHealthResponse {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: HealthStatus,
    /// When the figures were taken (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// Each pool by name (`speech-tts`, `speech-stt`).
    pub pools: BTreeMap<String, PoolStatus>,
    /// Totals.
    pub summary: PoolsSummary,
    /// Which backend serves the pools (`mock` or `azure`).
    pub backend: String,
    /// Whether the service is shutting down.
    pub draining: bool,
}

/// Rounds to one decimal, as Python's `round(x, 1)` does for the values it sees (the
/// dashboards built on the Python service expect that precision).
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Builds the response from snapshots.
pub fn pools_health(
    snapshots: Vec<PoolSnapshot>,
    now: SystemTime,
    backend: &str,
    draining: bool,
) -> PoolsHealthResponse {
    let status = if snapshots.is_empty() {
        HealthStatus::Unhealthy
    } else if snapshots.iter().all(|s| s.ready) {
        HealthStatus::Healthy
    } else {
        HealthStatus::Degraded
    };
    let mut tiers = TierBreakdown::default();
    let (mut total_warm, mut total_sessions, mut total) = (0, 0, 0);
    for s in &snapshots {
        tiers.dedicated += s.allocations_dedicated;
        tiers.warm += s.allocations_warm;
        tiers.cold += s.allocations_cold;
        total_warm += s.warm_pool_size;
        total_sessions += s.active_sessions;
        total += s.allocations_total;
    }
    let hit_rate_percent = if total == 0 {
        0.0
    } else {
        // Counts stay far below 2^53 so the f64 conversion is exact.
        round1((tiers.dedicated + tiers.warm) as f64 / total as f64 * 100.0)
    };
    PoolsHealthResponse {
        status,
        timestamp: speech_core::rfc3339_millis(now),
        pools: snapshots
            .iter()
            .map(|s| (s.name.clone(), PoolStatus::from(s)))
            .collect(),
        summary: PoolsSummary {
            total_warm,
            total_active_sessions: total_sessions,
            allocations_total: total,
            hit_rate_percent,
            tier_breakdown: tiers,
        },
        backend: backend.to_owned(),
        draining,
    }
}

/// `GET /api/v1/pools`.
#[utoipa::path(
    get,
    path = "/api/v1/pools",
    tag = "pools",
    responses(
        (status = 200, description = "Pool health", body = PoolsHealthResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn pools(State(state): State<AppState>) -> Json<PoolsHealthResponse> {
    Json(pools_health(
        state.snapshots(),
        SystemTime::now(),
        &state.options().backend,
        state.is_draining(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, ready: bool, d: u64, w: u64, c: u64) -> PoolSnapshot {
        let mut s = PoolSnapshot::default();
        s.name = name.into();
        s.ready = ready;
        s.warm_pool_size = 2;
        s.warm_pool_target = 3;
        s.session_awareness = true;
        s.active_sessions = 1;
        s.background_warmup = true;
        s.allocations_total = d + w + c;
        s.allocations_dedicated = d;
        s.allocations_warm = w;
        s.allocations_cold = c;
        s.max_size = 8;
        s.size = 3;
        s.in_use = 1;
        s.dedicated = 1;
        s.created_total = 3;
        s
    }

    #[test]
    fn status_rules() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            pools_health(vec![], now, "mock", false).status,
            HealthStatus::Unhealthy
        );
        let r = pools_health(vec![snap("a", true, 0, 0, 0)], now, "mock", false);
        assert_eq!(r.status, HealthStatus::Healthy);
        assert_eq!(r.summary.hit_rate_percent, 0.0);
        let r = pools_health(
            vec![snap("a", true, 0, 0, 0), snap("b", false, 0, 0, 0)],
            now,
            "mock",
            false,
        );
        assert_eq!(r.status, HealthStatus::Degraded);
    }

    #[test]
    fn summary_sums_and_rounds() {
        // 1 dedicated + 1 warm of 3 = 66.666… → 66.7
        let r = pools_health(
            vec![
                snap("speech-tts", true, 1, 0, 1),
                snap("speech-stt", true, 0, 1, 0),
            ],
            SystemTime::UNIX_EPOCH,
            "mock",
            false,
        );
        assert_eq!(r.summary.hit_rate_percent, 66.7);
        assert_eq!(r.summary.allocations_total, 3);
        assert_eq!(r.summary.total_warm, 4);
        assert_eq!(r.summary.total_active_sessions, 2);
        assert_eq!(
            r.summary.tier_breakdown,
            TierBreakdown {
                dedicated: 1,
                warm: 1,
                cold: 1
            }
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["status"], "healthy");
        assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["pools"]["speech-tts"]["warm_pool_target"], 3);
    }
}
