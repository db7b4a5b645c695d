//! The demand-driven warm target: how many idle resources cover the hand-outs expected
//! while one new resource is being created.
//!
//! Every second the maintainer counts the hand-outs that took a resource from the idle set
//! or created one (WARM and COLD: each needs a replacement warm resource) and feeds the
//! count here. With `λ` the hand-out rate and `L` the measured create+warm latency, the
//! demand during one create is `λL` (Little's law); arrivals are bursty (Poisson), so the
//! target adds three standard deviations, `3√(λL)`. Two windows, as in Knative's
//! autoscaler: a 60 s stable window decides normally, so the target falls slowly; a 6 s
//! panic window takes over when it asks for at least twice what the stable window asks
//! for (a rise in progress), and while panicking (until 60 s after the last tick that saw
//! the rise) the target never falls.

use std::collections::VecDeque;
use std::time::Duration;

/// Why the effective warm target has its current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum TargetReason {
    /// The configured `warm_target`: demand asks for no more (or adaptation is off).
    #[default]
    Floor,
    /// Measured demand asks for more than the floor.
    Demand,
    /// Demand asks for more, but the create ramp limit holds the refill back.
    RampLimited,
}

impl TargetReason {
    /// The snake_case name used in snapshots and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetReason::Floor => "floor",
            TargetReason::Demand => "demand",
            TargetReason::RampLimited => "ramp_limited",
        }
    }
}

impl std::fmt::Display for TargetReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The short window that reacts to a burst.
pub(crate) const PANIC_WINDOW_SECS: usize = 6;
/// The long window that decides when there is no burst, and how long panic lasts.
pub(crate) const STABLE_WINDOW_SECS: usize = 60;
/// The panic window takes over when it asks for this many times the stable window's target.
const PANIC_THRESHOLD: f64 = 2.0;
/// Standard deviations of Poisson headroom above the mean demand during one create.
const HEADROOM_SIGMAS: f64 = 3.0;
/// Weight of the newest create latency in its moving average.
const LATENCY_WEIGHT: f64 = 0.2;

/// The estimator's memory. Only the maintainer updates it, once a second.
#[derive(Debug)]
pub(crate) struct Estimator {
    /// Hand-outs per second, newest last, at most `STABLE_WINDOW_SECS` long.
    per_second: VecDeque<u64>,
    /// The hand-out counter at the previous tick.
    last_total: u64,
    /// Ticks left in panic mode.
    panic_ticks_left: usize,
    /// Moving average of create+warm latency, seconds; `None` before the first create.
    create_latency: Option<f64>,
}

impl Estimator {
    pub(crate) fn new() -> Self {
        Self {
            per_second: VecDeque::with_capacity(STABLE_WINDOW_SECS),
            last_total: 0,
            panic_ticks_left: 0,
            create_latency: None,
        }
    }

    /// Records one successful create+warm.
    pub(crate) fn record_create(&mut self, took: Duration) {
        let took = took.as_secs_f64();
        self.create_latency = Some(match self.create_latency {
            Some(average) => average + LATENCY_WEIGHT * (took - average),
            None => took,
        });
    }

    /// The moving average of create+warm latency.
    pub(crate) fn create_latency(&self) -> Option<Duration> {
        self.create_latency.map(Duration::from_secs_f64)
    }

    /// Feeds `seconds` seconds (at least one) that ended with the hand-out counter at
    /// `total`, and returns the wanted target, clamped to `floor..=max`.
    pub(crate) fn tick(
        &mut self,
        total: u64,
        seconds: usize,
        current: usize,
        floor: usize,
        max: usize,
    ) -> usize {
        let seconds = seconds.max(1);
        let handed_out = total.saturating_sub(self.last_total);
        self.last_total = total;
        // Spread a late tick's count over the seconds it covers.
        let share = handed_out / seconds as u64;
        let mut rest = handed_out % seconds as u64;
        for _ in 0..seconds.min(STABLE_WINDOW_SECS) {
            let extra = u64::from(rest > 0);
            rest = rest.saturating_sub(1);
            if self.per_second.len() == STABLE_WINDOW_SECS {
                self.per_second.pop_front();
            }
            self.per_second.push_back(share + extra);
        }
        let rate = |window: usize| {
            let sum: u64 = self.per_second.iter().rev().take(window).sum();
            sum as f64 / window as f64
        };
        // Before any create was measured, assume a second: a typical TLS + websocket setup
        // is well under that, so the guess errs on the warm side.
        let latency = self.create_latency.unwrap_or(1.0);
        let desired = |rate: f64| {
            let during_one_create = rate * latency;
            if during_one_create <= 0.0 {
                return 0;
            }
            (during_one_create + HEADROOM_SIGMAS * during_one_create.sqrt()).ceil() as usize
        };
        let stable = desired(rate(STABLE_WINDOW_SECS));
        let panic = desired(rate(PANIC_WINDOW_SECS));
        // A rise is in progress while the short window asks for twice what the long one
        // expects. That is compared with the long window's answer, not with the current
        // target: panic raises the current target, so comparing with it would stop
        // re-arming panic in the middle of a rise, and a panic begun earlier would expire
        // there and drop the target back to the long window's lagging answer.
        if panic as f64 >= PANIC_THRESHOLD * stable.max(1) as f64 && panic > current {
            self.panic_ticks_left = STABLE_WINDOW_SECS;
        }
        let wanted = if self.panic_ticks_left > 0 {
            self.panic_ticks_left = self.panic_ticks_left.saturating_sub(seconds);
            current.max(panic).max(stable)
        } else {
            stable
        };
        wanted.clamp(floor, max.max(floor))
    }
}

/// A token bucket for background creates: at most `per_second` on average, with bursts of
/// up to one second's worth.
#[derive(Debug)]
pub(crate) struct Ramp {
    per_second: f64,
    tokens: f64,
    refilled_at: tokio::time::Instant,
}

impl Ramp {
    pub(crate) fn new(per_second: f64) -> Self {
        Self {
            per_second,
            tokens: per_second.max(1.0),
            refilled_at: tokio::time::Instant::now(),
        }
    }

    /// Takes a token if one is available.
    pub(crate) fn try_take(&mut self, now: tokio::time::Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second.max(1.0));
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be available.
    pub(crate) fn next_token_at(&self) -> tokio::time::Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.refilled_at + Duration::from_secs_f64(missing / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_demand_stays_at_the_floor() {
        let mut estimator = Estimator::new();
        for _ in 0..100 {
            assert_eq!(estimator.tick(0, 1, 2, 2, 50), 2);
        }
    }

    #[test]
    fn demand_follows_littles_law_with_poisson_headroom() {
        let mut estimator = Estimator::new();
        estimator.record_create(Duration::from_millis(500));
        let mut total = 0;
        let mut target = 1;
        // 10 hand-outs a second for a full stable window: λL = 5, + 3√5 ≈ 11.7 → 12.
        for _ in 0..STABLE_WINDOW_SECS {
            total += 10;
            target = estimator.tick(total, 1, target, 1, 100);
        }
        assert_eq!(target, 12);
        assert_eq!(
            estimator.tick(total + 10, 1, target, 1, 8),
            8,
            "capped by max"
        );
    }

    /// A panic begun by the first seconds of traffic used to expire 60 s later even when a
    /// rise was under way then, dropping the target mid-rise (12 → 6 in a step-load run).
    #[test]
    fn the_target_never_falls_while_demand_is_rising() {
        let mut estimator = Estimator::new();
        estimator.record_create(Duration::from_millis(800));
        let (mut total, mut target) = (0, 2);
        for _ in 0..60 {
            total += 2;
            target = estimator.tick(total, 1, target, 2, 200);
        }
        let mut during_rise = Vec::new();
        for _ in 0..30 {
            total += 20;
            target = estimator.tick(total, 1, target, 2, 200);
            during_rise.push(target);
        }
        assert!(
            during_rise.windows(2).all(|pair| pair[1] >= pair[0]),
            "the target fell during the rise: {during_rise:?}"
        );
        // 20/s × 0.8 s = 16 during one create, + 3√16 = 28.
        assert_eq!(target, 28);
    }
}
