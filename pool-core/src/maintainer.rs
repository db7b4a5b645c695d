//! The background maintainer: one task per pool that keeps the idle set full and fresh, and
//! the passes it runs (refresh marking, pruning, surplus trim, the adaptive target).

use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};

use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::TargetReason;
use crate::in_flight::TaskRunning;
use crate::manager::Manager;
use crate::pool::Inner;
use crate::tier::Tier;

/// Spawns the maintainer on the pool's task tracker. It holds a strong reference only
/// during a pass and a `Weak` one while it sleeps or waits for a wake-up, so it never keeps
/// a dropped pool alive, and it stops on the pool's cancellation token (shutdown or drop of
/// the last handle).
pub(crate) fn spawn<M: Manager>(inner: &Arc<Inner<M>>) {
    let weak = Arc::downgrade(inner);
    let stop = inner.stop.clone();
    let interval = inner.config.refresh_interval;
    let wake = inner.maintainer_wake.clone();
    let adaptive = inner.config.adaptive_warm_target;
    let readiness = inner.manager.readiness_signal();
    inner.maintainer_running.store(true, Relaxed);
    let running = TaskRunning::new(weak.clone(), |inner: &Inner<M>| {
        inner.maintainer_running.store(false, Relaxed);
    });
    inner.tasks.spawn(async move {
        let _running = running;
        let mut next_housekeeping = Instant::now() + interval;
        let mut wake_at = Instant::now();
        // The adaptive target is re-estimated once a second.
        let mut last_estimate = Instant::now();
        loop {
            let woken_early = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(wake_at) => false,
                () = wake.notified() => true,
                // A resource went bad on its own: prune and refill now (the pass below
                // starts with the prune).
                () = readiness_changed(readiness.as_deref()) => true,
            };
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let now = Instant::now();
            if !woken_early && now >= next_housekeeping {
                inner.stats.warmup_cycles.fetch_add(1, Relaxed);
                inner.evict_stale_sessions(now);
                inner.trim_surplus();
                next_housekeeping = now + interval;
            }
            let seconds_since_estimate = now.saturating_duration_since(last_estimate).as_secs();
            if adaptive && seconds_since_estimate >= 1 {
                inner.update_warm_target(seconds_since_estimate as usize);
                last_estimate += Duration::from_secs(seconds_since_estimate);
            }
            let next_estimate = adaptive.then(|| last_estimate + Duration::from_secs(1));
            // Dead idle resources first, so this pass's refill replaces them.
            inner.prune_unusable_idle();
            let next_refresh = inner.mark_expiring(now);
            let _ = inner.start_refill(crate::pool::RefillLimits::All);
            wake_at = [
                Some(next_housekeeping),
                next_refresh,
                inner.backoff_until(),
                inner.ramp_next(),
                next_estimate,
            ]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            .min()
            .unwrap_or(next_housekeeping);
            inner.plan_maintenance(wake_at);
        }
    });
}

/// Starts the maintainer again if it went down with the runtime it ran on (a pool used
/// from one runtime after another): one relaxed load when it is running, and a
/// compare-and-swap so that two callers racing here start one maintainer, not two.
pub(crate) fn ensure_running<M: Manager>(inner: &Arc<Inner<M>>) {
    if inner.config.background_warmup
        && !inner.maintainer_running.load(Relaxed)
        && !inner.stop.is_cancelled()
        && tokio::runtime::Handle::try_current().is_ok()
        && inner
            .maintainer_running
            .compare_exchange(false, true, AcqRel, Relaxed)
            .is_ok()
    {
        spawn(inner);
    }
}

/// Resolves when the backend signals that an idle resource may no longer be ready; never,
/// when it has no signal.
async fn readiness_changed(signal: Option<&tokio::sync::Notify>) {
    match signal {
        Some(s) => s.notified().await,
        None => std::future::pending().await,
    }
}

/// The maintainer's passes.
impl<M: Manager> Inner<M> {
    /// Closes idle resources that stayed above the target for a whole housekeeping period
    /// (the idle set never dipped below `target + surplus` since the last pass), oldest
    /// first, and starts a new period.
    pub(crate) fn trim_surplus(self: &Arc<Self>) {
        let mut surplus = Vec::new();
        {
            let mut st = self.lock();
            let unused = st.idle_low_water.saturating_sub(st.warm_target);
            let mut index = 0;
            while surplus.len() < unused && index < st.idle.len() {
                if st.idle[index].replacing {
                    index += 1;
                } else if let Some(removed) = st.idle.remove(index) {
                    let closing = st.begin_close(removed.entry.resource);
                    surplus.push(closing);
                }
            }
            st.idle_low_water = st.idle.len();
        }
        if !surplus.is_empty() {
            tracing::debug!(pool = %self.config.name, count = surplus.len(), "closed idle surplus unused for a housekeeping period");
        }
        for closing in surplus {
            self.close(closing);
        }
    }

    /// Idle entries due for refresh are marked `replacing` (a replacement create starts in
    /// `start_refill`); when there is no room for a replacement, they are closed at once.
    /// Returns the earliest future refresh moment, for the maintainer's next wake-up.
    pub(crate) fn mark_expiring(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut to_close = Vec::new();
        let mut next = None::<Instant>;
        {
            let mut st = self.lock();
            let mut headroom = self.config.max_size.saturating_sub(st.live());
            let mut index = 0;
            while index < st.idle.len() {
                let idle = &mut st.idle[index];
                match idle.refresh_at {
                    Some(at) if at <= now && !idle.replacing => {
                        if headroom > 0 {
                            idle.replacing = true;
                            headroom -= 1;
                            st.replacing += 1;
                            index += 1;
                        } else if let Some(removed) = st.idle.remove(index) {
                            let closing = st.begin_close(removed.entry.resource);
                            to_close.push(closing);
                        }
                    }
                    Some(at) if at > now => {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        index += 1;
                    }
                    _ => index += 1,
                }
            }
        }
        for closing in to_close {
            self.close(closing);
        }
        next
    }

    /// Closes idle entries that are no longer usable (the server closed the connection, or
    /// it outlived `max_age`), freeing their slots so the refill that follows replaces
    /// them. Without this a dead idle resource is noticed only when an acquire pops it:
    /// until then the pool counts it as warm, and with no traffic it is never replaced.
    pub(crate) fn prune_unusable_idle(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let mut index = 0;
            while index < st.idle.len() {
                if self.usable(&st.idle[index].entry) {
                    index += 1;
                } else if let Some(removed) = st.idle.remove(index) {
                    if removed.replacing {
                        // Its replacement, already under way, just lands in the idle set.
                        st.replacing -= 1;
                    }
                    let closing = st.begin_close(removed.entry.resource);
                    dead.push(closing);
                }
            }
        }
        if !dead.is_empty() {
            tracing::debug!(pool = %self.config.name, count = dead.len(), "closed idle resources that are no longer ready");
        }
        for closing in dead {
            self.close(closing);
        }
    }

    /// Feeds the adaptive estimator the hand-outs of the last `seconds` seconds and sets
    /// the idle target it asks for.
    pub(crate) fn update_warm_target(self: &Arc<Self>, seconds: usize) {
        let handed_out = self.stats.allocations[Tier::Warm.index()].load(Relaxed)
            + self.stats.allocations[Tier::Cold.index()].load(Relaxed);
        let floor = self.config.warm_target;
        let current = self.lock().warm_target;
        let wanted = self
            .estimator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick(handed_out, seconds, current, floor, self.config.max_size);
        let mut st = self.lock();
        st.warm_target = wanted;
        st.target_reason = match st.target_reason {
            _ if wanted <= floor => TargetReason::Floor,
            TargetReason::RampLimited => TargetReason::RampLimited,
            _ => TargetReason::Demand,
        };
        if wanted != current {
            tracing::debug!(pool = %self.config.name, from = current, to = wanted, "adaptive warm target changed");
        }
    }

    /// When the create ramp next allows a refill, if it held one back.
    pub(crate) fn ramp_next(&self) -> Option<Instant> {
        self.lock().ramp_next
    }

    /// The moment the failure backoff ends, if one is running.
    pub(crate) fn backoff_until(&self) -> Option<Instant> {
        self.lock().backoff_until
    }

    /// Records when the maintainer will wake next (see `State::next_maintenance`).
    pub(crate) fn plan_maintenance(&self, at: Instant) {
        self.lock().next_maintenance = Some(at);
    }
}
