//! `GET /api/v1/pools`: the seed's `PoolsHealthResponse`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use pool_core::PoolSnapshot;
use serde::Serialize;

use crate::state::AppState;

/// Overall health, as the seed defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TierBreakdown {
    /// Served by the session's own connection.
    pub dedicated: u64,
    /// Served from the pre-warmed set.
    pub warm: u64,
    /// Paid a connect.
    pub cold: u64,
}

/// Figures over all pools.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// The response of `GET /api/v1/pools`: the seed's schema, whose per-pool `PoolMetrics`
/// fields are all in [`PoolSnapshot`] under their original names, followed by the fields
/// the seed lacked (sizes, waiters, create failures, latency percentiles).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolsHealthResponse {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: HealthStatus,
    /// When the figures were taken (RFC 3339, UTC).
    pub timestamp: String,
    /// Each pool by name (`speech-tts`, `speech-stt`).
    pub pools: BTreeMap<String, PoolSnapshot>,
    /// Totals.
    pub summary: PoolsSummary,
    /// Which backend serves the pools (`mock` or `azure`). Not in the seed.
    pub backend: String,
    /// Whether the service is shutting down. Not in the seed.
    pub draining: bool,
}

/// Rounds to one decimal, as the seed's `round(x, 1)` does for the values it sees.
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
        pools: snapshots.into_iter().map(|s| (s.name.clone(), s)).collect(),
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
        for field in [
            "name",
            "ready",
            "warm_pool_size",
            "warm_pool_target",
            "session_awareness",
            "active_sessions",
            "background_warmup",
            "allocations_total",
            "allocations_dedicated",
            "allocations_warm",
            "allocations_cold",
            "warmup_cycles",
            "warmup_failures",
        ] {
            assert!(
                json["pools"]["speech-tts"].get(field).is_some(),
                "missing {field}"
            );
        }
    }
}
