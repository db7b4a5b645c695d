//! The RAII guard that hands a resource to a caller.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::accounting::{CheckedOut, Dedicated};
use crate::manager::Manager;
use crate::pool::{Entry, Holder, Inner, Lent};
use crate::session::{Bound, SessionClaim, SessionSlot};
use crate::tier::Tier;

/// Where the resource goes back to, with the permit that counts it as held.
#[derive(Debug)]
enum Binding<R> {
    /// From a plain acquire: returned to the pool on drop.
    Plain(CheckedOut),
    /// Bound to a session: parked back in the session's slot on drop, which also ends the
    /// claim on the slot.
    Session(SessionClaim<R>, Dedicated),
}

/// A resource handed out by a [`Pool`](crate::Pool). Dereferences to the resource; knows the
/// tier it was served from. Dropping it gives the resource back without blocking: a plain
/// resource returns to the idle set (or is closed when not ready or the set is full), a
/// session's resource is parked for the session's next acquire.
#[must_use = "dropping the guard at once gives the resource straight back"]
pub struct Pooled<M: Manager> {
    inner: Arc<Inner<M>>,
    /// `Some` until drop or [`discard`](Pooled::discard) takes it.
    entry: Option<Entry<M::Resource>>,
    tier: Tier,
    /// `Some` until drop takes it, like `entry`.
    binding: Option<Binding<M::Resource>>,
    /// Set by [`discard`](Pooled::discard): close instead of returning.
    broken: bool,
}

impl<M: Manager> Pooled<M> {
    pub(crate) fn plain(
        inner: Arc<Inner<M>>,
        (entry, permit): Lent<M::Resource>,
        tier: Tier,
    ) -> Self {
        Self {
            inner,
            entry: Some(entry),
            tier,
            binding: Some(Binding::Plain(permit)),
            broken: false,
        }
    }

    pub(crate) fn session(
        inner: Arc<Inner<M>>,
        claim: SessionClaim<M::Resource>,
        (entry, permit): Bound<M::Resource>,
        tier: Tier,
    ) -> Self {
        Self {
            inner,
            entry: Some(entry),
            tier,
            binding: Some(Binding::Session(claim, permit)),
            broken: false,
        }
    }

    /// Where this resource came from.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether this resource is bound to a session.
    pub fn is_dedicated(&self) -> bool {
        matches!(self.binding, Some(Binding::Session(..)))
    }

    /// The session slot this guard holds, for a [`SessionHandle`](crate::SessionHandle) to
    /// remember.
    pub(crate) fn session_slot(&self) -> Option<&Arc<SessionSlot<M::Resource>>> {
        match &self.binding {
            Some(Binding::Session(claim, _)) => Some(claim.slot()),
            Some(Binding::Plain(_)) | None => None,
        }
    }

    /// Closes the resource instead of returning it: for a connection the caller knows is
    /// broken (a failed turn). A session's binding is dropped too; its next acquire binds a
    /// fresh resource.
    pub fn discard(mut self) {
        self.broken = true;
    }
}

impl<M: Manager> std::fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("pool", &self.inner.config.name)
            .field("tier", &self.tier)
            .field("dedicated", &self.is_dedicated())
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Deref for Pooled<M> {
    type Target = M::Resource;

    fn deref(&self) -> &M::Resource {
        match &self.entry {
            Some(entry) => &entry.resource,
            None => unreachable!("a Pooled holds its resource until it is dropped"),
        }
    }
}

impl<M: Manager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Resource {
        match &mut self.entry {
            Some(entry) => &mut entry.resource,
            None => unreachable!("a Pooled holds its resource until it is dropped"),
        }
    }
}

impl<M: Manager> Drop for Pooled<M> {
    fn drop(&mut self) {
        let (Some(entry), Some(binding)) = (self.entry.take(), self.binding.take()) else {
            return;
        };
        let inner = &self.inner;
        match binding {
            Binding::Plain(permit) => {
                if self.broken {
                    inner.discard(entry, Holder::CheckedOut(permit));
                } else {
                    inner.return_entry(entry, permit);
                }
            }
            Binding::Session(claim, permit) => {
                // Decided before the slot is locked: `is_ready` is user code, and a slot's
                // lock is held only for a few moves.
                let ready = !self.broken
                    && !inner.closed.load(std::sync::atomic::Ordering::Acquire)
                    && inner.manager.is_ready(&entry.resource);
                // The use order matters only to reclaim, so only a pool that reclaims pays
                // for the shared counter.
                let last_use = if inner.config.reclaim_idle_sessions {
                    inner.next_use()
                } else {
                    0
                };
                let (slot, dropped) = claim.finish(|state| {
                    state.touched = true;
                    state.last_use = last_use;
                    if ready && !state.evicted {
                        state.entry = Some((entry, permit));
                        None
                    } else {
                        // The session keeps no resource, so it stops existing: its next
                        // acquire binds afresh, and until then it is not counted as active.
                        state.evicted = true;
                        Some((entry, permit))
                    }
                });
                match dropped {
                    None => {
                        // The claim ended before looking: a reclaim pass that ran while this
                        // turn was in progress skipped it, and one that starts after the
                        // flag is read can take it.
                        if inner
                            .reclaim_wanted
                            .load(std::sync::atomic::Ordering::SeqCst)
                        {
                            inner.reclaim_for_waiters();
                        }
                    }
                    Some((entry, permit)) => {
                        inner.detach_session(&slot);
                        inner.discard(entry, Holder::Session(permit));
                    }
                }
            }
        }
    }
}
