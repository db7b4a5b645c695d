//! Creating resources: a caller's own create racing returned resources, background
//! refills with their concurrency bound, ramp and failure backoff, and create + warm.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::accounting::CreatePermit;
use crate::adaptive::TargetReason;
use crate::error::PoolError;
use crate::in_flight::{InFlight, Unwarmed};
use crate::manager::Manager;
use crate::pool::{CreateFor, Entry, Inner, Lent, Origin, RefillLimits};
use crate::tier::Tier;
use crate::waiters::{Handoff, WaiterGuard};

/// What a caller's own create delivers.
pub(crate) type Delivery<M> =
    Result<Lent<<M as Manager>::Resource>, PoolError<<M as Manager>::Error>>;

/// The receiving end of a caller's own create. Dropping it before the create finished is
/// fine (the task places the resource); dropping it after a resource arrived but before it
/// was taken gives that resource back.
pub(crate) struct DeliveryGuard<M: Manager> {
    pub(crate) inner: Arc<Inner<M>>,
    pub(crate) rx: Option<oneshot::Receiver<Delivery<M>>>,
}

impl<M: Manager> DeliveryGuard<M> {
    pub(crate) async fn recv(&mut self) -> Option<Delivery<M>> {
        let rx = self.rx.as_mut()?;
        let received = rx.await.ok();
        self.rx = None;
        received
    }
}

impl<M: Manager> Drop for DeliveryGuard<M> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Ok((entry, permit))) = rx.try_recv() {
                self.inner.return_entry(entry, permit);
            }
        }
    }
}

impl<M: Manager> Inner<M> {
    /// Creates a resource for this caller (counted by `permit`) in a tracked task,
    /// and takes whichever comes first: the new resource (COLD) or one returned by another
    /// caller (WARM). The loser goes to the idle set. Dropping this future loses nothing: the
    /// task finishes and places its resource.
    pub(crate) async fn create_racing(
        self: &Arc<Self>,
        mut waiter: WaiterGuard<M>,
        permit: CreatePermit,
        waited: Duration,
    ) -> Result<(Lent<M::Resource>, Tier), PoolError<M::Error>> {
        let created = self.spawn_create(permit);
        let mut created = DeliveryGuard {
            inner: self.clone(),
            rx: Some(created),
        };
        tokio::select! {
            biased;
            outcome = created.recv() => {
                drop(waiter);
                match outcome {
                    Some(Ok(lent)) => Ok((lent, Tier::Cold)),
                    Some(Err(error)) => Err(error),
                    None => Err(PoolError::Closed),
                }
            }
            received = waiter.recv() => match received {
                Handoff::Resource(entry, permit) => Ok(((entry, permit), Tier::Warm)),
                Handoff::TimedOut => Err(self.timeout_error(waited)),
                Handoff::Slot(permit) => {
                    // A racer is registered as `ReturnedOnly`, so no slot is ever offered
                    // to it; should one arrive, its count is handed back, not leaked.
                    let mut st = self.lock();
                    st.counts.end_create(permit);
                    self.slot_freed(&mut st);
                    Err(PoolError::Closed)
                }
                Handoff::Closed => Err(PoolError::Closed),
            },
        }
    }

    /// Starts background creates toward the idle target, honouring `create_concurrency`,
    /// `max_size` and the failure backoff (unless `ignore_backoff`). Returns a receiver per
    /// create so [`Pool::prepare`] can wait for them.
    pub(crate) fn start_refill(
        self: &Arc<Self>,
        limits: RefillLimits,
    ) -> Vec<oneshot::Receiver<Result<(), PoolError<M::Error>>>> {
        crate::maintainer::ensure_running(self);
        let mut started = Vec::new();
        let mut st = self.lock();
        if st.closed {
            return started;
        }
        if limits == RefillLimits::All
            && let Some(until) = st.backoff_until
            && Instant::now() < until
        {
            return started;
        }
        if st.target_reason == TargetReason::RampLimited {
            st.target_reason = TargetReason::Demand;
        }
        loop {
            let effective_idle = st.idle.len() - st.replacing;
            let wanted = st.warm_target.saturating_sub(effective_idle);
            let deficit = wanted.saturating_sub(st.counts.refilling());
            // Entries being replaced do not count toward the target, so their replacements
            // are part of the deficit.
            if deficit == 0
                || st.counts.refilling() >= self.config.create_concurrency
                || st.live() >= self.config.max_size
                || st.has_slot_waiter()
            {
                break;
            }
            if limits == RefillLimits::All
                && let Some(ramp) = st.ramp.as_mut()
                && !ramp.try_take(Instant::now())
            {
                // The maintainer wakes at `ramp_next` to try again.
                st.ramp_next = Some(ramp.next_token_at());
                if st.warm_target > self.config.warm_target {
                    st.target_reason = TargetReason::RampLimited;
                }
                break;
            }
            st.ramp_next = None;
            let permit = st.counts.start_create(true);
            let (tx, rx) = oneshot::channel();
            started.push(rx);
            self.spawn_refill(tx, permit);
        }
        started
    }

    pub(crate) fn spawn_refill(
        self: &Arc<Self>,
        done: oneshot::Sender<Result<(), PoolError<M::Error>>>,
        permit: CreatePermit,
    ) {
        let creating = InFlight::new(self, permit, Self::create_cut_off);
        let inner = self.clone();
        self.tasks.spawn(async move {
            let outcome = inner.create_and_warm(CreateFor::IdleSet).await;
            let permit = creating.finish();
            let reported = match outcome {
                Ok(entry) => {
                    let mut st = inner.lock();
                    st.counts.end_create(permit);
                    st.failure_streak = 0;
                    st.backoff_until = None;
                    let surplus = inner.place(&mut st, entry, Origin::Fresh);
                    drop(st);
                    if let Some(surplus) = surplus {
                        inner.close(surplus);
                    }
                    if inner.config.background_warmup {
                        // Keep the pipeline full: the next refill starts as soon as this one
                        // lands, still bounded by `create_concurrency`.
                        let _ = inner.start_refill(RefillLimits::All);
                        if inner.ramp_next().is_some() {
                            // Held back by the ramp: the maintainer must plan to retry.
                            inner.maintainer_wake.notify_one();
                        }
                    }
                    Ok(())
                }
                Err(error) => {
                    let mut st = inner.lock();
                    st.counts.end_create(permit);
                    st.failure_streak = st.failure_streak.saturating_add(1);
                    let delay = inner.backoff_delay(st.failure_streak);
                    st.backoff_until = Some(Instant::now() + delay);
                    inner.slot_freed(&mut st);
                    drop(st);
                    tracing::warn!(
                        pool = %inner.config.name,
                        error = %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "background create failed"
                    );
                    inner.maintainer_wake.notify_one();
                    Err(error)
                }
            };
            let _ = done.send(reported);
        });
    }

    /// A create whose task was dropped before it ended (its runtime shut down): the slot
    /// is free again, for a waiting caller or a later refill.
    fn create_cut_off(&self, permit: CreatePermit) {
        let mut st = self.lock();
        st.counts.end_create(permit);
        self.slot_freed(&mut st);
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so retries from
    /// many pools never synchronise yet never retry immediately.
    pub(crate) fn backoff_delay(&self, streak: u32) -> Duration {
        let exponent = streak.saturating_sub(1).min(20);
        let full = self
            .config
            .backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.config.backoff_max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub(crate) fn spawn_create(
        self: &Arc<Self>,
        permit: CreatePermit,
    ) -> oneshot::Receiver<Delivery<M>> {
        let (tx, rx) = oneshot::channel();
        let creating = InFlight::new(self, permit, Self::create_cut_off);
        let inner = self.clone();
        self.tasks.spawn(async move {
            let outcome = inner.create_and_warm(CreateFor::Caller).await;
            let permit = creating.finish();
            match outcome {
                Ok(entry) => {
                    let permit = inner.lock().counts.created_for_caller(permit);
                    if let Err(Ok((entry, permit))) = tx.send(Ok((entry, permit))) {
                        // The caller gave up (timed out, was cancelled, or took a returned
                        // resource): the new resource is the race's loser and is placed.
                        inner.return_entry(entry, permit);
                    }
                }
                Err(error) => {
                    {
                        let mut st = inner.lock();
                        st.counts.end_create(permit);
                        inner.slot_freed(&mut st);
                    }
                    let _ = tx.send(Err(error));
                }
            }
        });
        rx
    }

    /// `create` then `warm`, together bounded by `create_timeout`, with the counters and the
    /// last error recorded. A resource whose warm-up fails is closed here, never handed out.
    pub(crate) async fn create_and_warm(
        self: &Arc<Self>,
        purpose: CreateFor,
    ) -> Result<Entry<M::Resource>, PoolError<M::Error>> {
        let timeout = self.config.create_timeout;
        let began = Instant::now();
        let deadline = began + timeout;
        let resource = match tokio::time::timeout_at(deadline, self.manager.create()).await {
            Ok(Ok(resource)) => resource,
            Ok(Err(error)) => return Err(self.record_create_failure(PoolError::Create(error))),
            Err(_) => return Err(self.record_create_failure(PoolError::CreateTimeout(timeout))),
        };
        self.stats.created_total.fetch_add(1, Relaxed);
        let mut unwarmed = Unwarmed::new(&self.stats.closed_total, resource);
        let warming = async {
            let resource = unwarmed.resource_mut();
            match purpose {
                CreateFor::Caller => self.manager.warm_for_caller(resource).await,
                CreateFor::IdleSet => self.manager.warm(resource).await,
            }
        };
        let warmed = tokio::time::timeout_at(deadline, warming).await;
        let resource = unwarmed.warmed();
        let error = match warmed {
            Ok(Ok(())) => {
                if self.config.adaptive_warm_target {
                    self.estimator
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record_create(began.elapsed());
                }
                let jitter = self.config.refresh_jitter.mul_f64(fastrand::f64());
                return Ok(Entry {
                    resource,
                    created_at: Instant::now(),
                    jitter,
                });
            }
            Ok(Err(error)) => PoolError::Warm(error),
            Err(_) => PoolError::CreateTimeout(timeout),
        };
        self.stats.warmup_failures.fetch_add(1, Relaxed);
        let closing = {
            let mut st = self.lock();
            st.last_error = Some(error.to_string());
            st.begin_close(resource)
        };
        self.close(closing);
        Err(error)
    }

    pub(crate) fn record_create_failure(&self, error: PoolError<M::Error>) -> PoolError<M::Error> {
        self.stats.create_failures.fetch_add(1, Relaxed);
        self.lock().last_error = Some(error.to_string());
        error
    }
}
