//! Slots held by spawned work, handed back even when the work never finishes.
//!
//! A create, a close or a reclaim runs in a task that owns the permit counting its slot.
//! If that task's runtime shuts down first (a pool kept in a `static` and used from many
//! `#[tokio::test]` runtimes, or a runtime dropped with the pool still alive), the task is
//! dropped at its await point and never reaches the line that hands the permit back. The
//! guard here does it on drop instead, so the slot returns and `max_size` stays exact: the
//! same job deadpool's `UnreadyObject` does for its `size`.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::manager::Manager;
use crate::pool::Inner;

/// A permit owned by spawned work. [`finish`](InFlight::finish) takes it back out when the
/// work completes and hands it back itself; dropping the guard while it still holds the
/// permit means the work was cut off, and `cut_off` hands it back.
pub(crate) struct InFlight<M: Manager, P> {
    inner: Arc<Inner<M>>,
    /// `Some` until the work finishes or the guard is dropped.
    permit: Option<P>,
    /// What a cut-off task's permit means for the counts (a create that never ended, a
    /// resource dropped instead of closed).
    cut_off: fn(&Inner<M>, P),
}

impl<M: Manager, P> InFlight<M, P> {
    pub(crate) fn new(inner: &Arc<Inner<M>>, permit: P, cut_off: fn(&Inner<M>, P)) -> Self {
        Self {
            inner: inner.clone(),
            permit: Some(permit),
            cut_off,
        }
    }

    /// The work completed: its permit, for the work to hand back as it ends.
    pub(crate) fn finish(mut self) -> P {
        match self.permit.take() {
            Some(permit) => permit,
            None => unreachable!("a guard holds its permit until finished or dropped"),
        }
    }
}

impl<M: Manager, P> Drop for InFlight<M, P> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            tracing::debug!(pool = %self.inner.config.name, "pool work cut off (its runtime shut down): its slot is handed back");
            (self.cut_off)(&self.inner, permit);
        }
    }
}

/// A resource created but not yet warmed, owned by a create task. If the task is dropped
/// during the warm-up, the resource goes with it, unclosed: it is counted as closed, so
/// `created_total = closed_total + size` still holds.
pub(crate) struct Unwarmed<'a, R> {
    closed_total: &'a AtomicU64,
    /// `Some` until the warm-up ends or the guard is dropped.
    resource: Option<R>,
}

impl<'a, R> Unwarmed<'a, R> {
    pub(crate) fn new(closed_total: &'a AtomicU64, resource: R) -> Self {
        Self {
            closed_total,
            resource: Some(resource),
        }
    }

    pub(crate) fn resource_mut(&mut self) -> &mut R {
        match &mut self.resource {
            Some(resource) => resource,
            None => unreachable!("a guard holds its resource until the warm-up ends"),
        }
    }

    /// The warm-up ended (either way): the resource, for its caller to place or close.
    pub(crate) fn warmed(mut self) -> R {
        match self.resource.take() {
            Some(resource) => resource,
            None => unreachable!("a guard holds its resource until the warm-up ends"),
        }
    }
}

impl<R> Drop for Unwarmed<'_, R> {
    fn drop(&mut self) {
        if self.resource.take().is_some() {
            self.closed_total.fetch_add(1, Relaxed);
        }
    }
}

/// Owned by a long-running pool task (the maintainer, the timeout reaper): when the task
/// ends, however it ends, `on_end` records that it no longer runs, so the next caller that
/// needs it starts it again in its own runtime instead of relying on a task that went down
/// with an earlier one.
pub(crate) struct TaskRunning<M: Manager> {
    inner: Weak<Inner<M>>,
    on_end: fn(&Inner<M>),
}

impl<M: Manager> TaskRunning<M> {
    pub(crate) fn new(inner: Weak<Inner<M>>, on_end: fn(&Inner<M>)) -> Self {
        Self { inner, on_end }
    }
}

impl<M: Manager> Drop for TaskRunning<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            (self.on_end)(&inner);
        }
    }
}
