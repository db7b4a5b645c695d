//! The background maintainer: one task per pool that keeps the idle set full and fresh.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use crate::manager::Manager;
use crate::pool::Inner;

/// Spawns the maintainer on the pool's task tracker. It holds a strong reference only
/// during a pass and a `Weak` one while it sleeps or waits for a wake-up, so it never keeps
/// a dropped pool alive, and it stops on the pool's cancellation token (shutdown or drop of
/// the last handle).
pub(crate) fn spawn<M: Manager>(inner: &Arc<Inner<M>>) {
    let weak = Arc::downgrade(inner);
    let stop = inner.stop.clone();
    let interval = inner.config.refresh_interval;
    let wake = inner.maintainer_wake.clone();
    inner.tasks.spawn(async move {
        let mut next_housekeeping = Instant::now() + interval;
        let mut wake_at = Instant::now();
        loop {
            let woken_early = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(wake_at) => false,
                () = wake.notified() => true,
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
            // Dead idle resources first, so this pass's refill replaces them.
            inner.prune_unusable_idle();
            let next_refresh = inner.mark_expiring(now);
            let _ = inner.start_refill(false);
            wake_at = [Some(next_housekeeping), next_refresh, inner.backoff_until()]
                .into_iter()
                .flatten()
                .filter(|at| *at > now)
                .min()
                .unwrap_or(next_housekeeping);
            inner.plan_maintenance(wake_at);
        }
    });
}
