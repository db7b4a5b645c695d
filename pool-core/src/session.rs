//! Sessions: the per-session slot, the DEDICATED fast path, binding, eviction, release,
//! and the [`SessionHandle`] that skips the session map.
//!
//! A slot's state sits behind a `std::sync::Mutex` that is held only for a few moves and
//! never across an await; whether the session is in a turn is the `in_use` flag inside it,
//! set by whoever claims the slot ([`SessionClaim`]) and cleared only when that claim ends.
//! A DEDICATED hit is therefore one uncontended lock and unlock to take the parked
//! resource and one to park it again; callers that find the session in use wait on the
//! pool's session `Notify`, which only a turn that ends with someone queued touches.
//!
//! Lock order: the sessions map, then a slot's state, then the pool state. A slot's state is
//! never held while the map is taken (a slot is marked evicted under its own lock first and
//! leaves the map afterwards), so code that holds the map may lock slots.

use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::accounting::{Dedicated, ReclaimPermit};
use crate::error::{PoolError, SessionBusyDetails};
use crate::guard::Pooled;
use crate::in_flight::InFlight;
use crate::manager::Manager;
use crate::pool::{Entry, Holder, Inner, sample_start};
use crate::tier::Tier;

/// One session: its id, its state, and the pool's session wake-up.
#[derive(Debug)]
pub(crate) struct SessionSlot<R> {
    /// The session id, shared with the map key so forgetting the session needs no copy.
    pub(crate) id: Arc<str>,
    /// Wakes callers queued behind a session's user: shared by every slot of a pool, since
    /// a second user of one session is rare and a per-slot `Notify` would cost every live
    /// session its memory.
    released: Arc<Notify>,
    state: Mutex<SessionState<R>>,
}

#[derive(Debug)]
pub(crate) struct SessionState<R> {
    /// The session's resource, absent while its user holds it or before the first bind.
    pub entry: Option<Bound<R>>,
    /// A claim holds the slot: a turn, a first bind, or a release in progress.
    pub in_use: bool,
    /// Callers waiting for the claim to end, oldest first; absent (and costing a live
    /// session one pointer) while nobody waits. The claim's end wakes them only if there
    /// are any, so a DEDICATED hit never touches the `Notify`; only the oldest may then
    /// claim, and nobody overtakes the queue, so a busy session is served first-in,
    /// first-out.
    pub queue: Option<Box<WaitQueue>>,
    /// Set on every use; the maintainer clears it and stamps `last_seen`, so the hot path
    /// never reads the clock.
    pub touched: bool,
    /// When the maintainer last saw this session used (or when it was created).
    pub last_seen: Instant,
    /// Position in the pool's use order, stamped when a turn ends: the smallest parked
    /// value is the least recently used session, the first one reclaimed. Stamped only when
    /// `reclaim_idle_sessions` is on, the only reader.
    pub last_use: u64,
    /// The slot was released, evicted, reclaimed or shut down, or its first bind failed;
    /// a caller that queued on it starts over with a fresh slot.
    pub evicted: bool,
}

/// The callers queued behind a session's current user.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    /// Their tickets, in arrival order.
    tickets: std::collections::VecDeque<u64>,
    /// The next ticket to hand out.
    next: u64,
}

impl<R> SessionState<R> {
    /// Whether a caller holding `ticket` (or, with `None`, a caller not yet queued) may
    /// claim the slot now: it is free and nobody is ahead in the queue.
    fn may_claim(&self, ticket: Option<u64>) -> bool {
        if self.in_use {
            return false;
        }
        match (&self.queue, ticket) {
            (None, _) => true,
            (Some(queue), Some(ticket)) => queue.tickets.front() == Some(&ticket),
            (Some(_), None) => false,
        }
    }

    /// Queues a caller at the back; returns its ticket.
    fn enqueue(&mut self) -> u64 {
        let queue = self.queue.get_or_insert_with(Box::default);
        let ticket = queue.next;
        queue.next += 1;
        queue.tickets.push_back(ticket);
        ticket
    }

    /// Takes `ticket` out of the queue, dropping the queue when it empties. Returns whether
    /// callers are still queued.
    fn dequeue(&mut self, ticket: u64) -> bool {
        let Some(queue) = self.queue.as_mut() else {
            return false;
        };
        queue.tickets.retain(|&t| t != ticket);
        if queue.tickets.is_empty() {
            self.queue = None;
            return false;
        }
        true
    }

    /// Whether callers are queued for the slot.
    pub(crate) fn has_waiters(&self) -> bool {
        self.queue.is_some()
    }
}

impl<R> SessionSlot<R> {
    pub(crate) fn new(id: Arc<str>, released: Arc<Notify>, now: Instant) -> Self {
        Self {
            id,
            released,
            state: Mutex::new(SessionState {
                entry: None,
                in_use: false,
                queue: None,
                touched: true,
                last_seen: now,
                last_use: 0,
                evicted: false,
            }),
        }
    }

    /// Locks the slot's state. No user code but the synchronous `is_ready` runs under it,
    /// so a poisoned lock still guards a consistent state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The exclusive use of a session slot: made only by setting the slot's `in_use` flag, and
/// the only way to clear it, either through [`finish`](SessionClaim::finish) or on drop. So
/// a slot can never stay claimed after its holder is gone, and a waiting caller is always
/// woken when a claim ends.
#[derive(Debug)]
#[must_use = "dropping a claim at once ends it"]
pub(crate) struct SessionClaim<R> {
    slot: Option<Arc<SessionSlot<R>>>,
}

impl<R> SessionClaim<R> {
    /// Claims `slot`, whose state the caller has locked and found not in use.
    fn claim(slot: Arc<SessionSlot<R>>, state: &mut SessionState<R>) -> Self {
        Self::mark(state).into_claim(slot)
    }

    /// Sets the `in_use` flag of a locked slot that is not in use. The mark must become a
    /// claim once the lock is released (so the fast path can move its `Arc` into the claim
    /// rather than clone it while the state borrows it).
    fn mark(state: &mut SessionState<R>) -> ClaimMark {
        debug_assert!(!state.in_use, "claiming a slot already in use");
        state.in_use = true;
        state.touched = true;
        ClaimMark(())
    }

    pub(crate) fn slot(&self) -> &Arc<SessionSlot<R>> {
        match &self.slot {
            Some(slot) => slot,
            None => unreachable!("a claim holds its slot until finished"),
        }
    }

    /// Ends the claim after running `f` on the slot's state, under one lock, and wakes the
    /// session's waiters if there are any. Returns the slot and what `f` returned.
    pub(crate) fn finish<T>(
        mut self,
        f: impl FnOnce(&mut SessionState<R>) -> T,
    ) -> (Arc<SessionSlot<R>>, T) {
        let Some(slot) = self.slot.take() else {
            unreachable!("a claim is finished once")
        };
        let out = release(&slot, f);
        (slot, out)
    }
}

impl<R> Drop for SessionClaim<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            release(&slot, |_| ());
        }
    }
}

/// A slot's `in_use` flag was set; only [`into_claim`](ClaimMark::into_claim) consumes it.
#[must_use = "a marked slot stays in use until its claim ends"]
pub(crate) struct ClaimMark(());

impl ClaimMark {
    fn into_claim<R>(self, slot: Arc<SessionSlot<R>>) -> SessionClaim<R> {
        SessionClaim { slot: Some(slot) }
    }
}

/// Clears `in_use` after `f`, and wakes the waiters (who re-check the slot) if any.
fn release<R, T>(slot: &SessionSlot<R>, f: impl FnOnce(&mut SessionState<R>) -> T) -> T {
    let (out, wake) = {
        let mut state = slot.lock();
        let out = f(&mut state);
        state.in_use = false;
        (out, state.has_waiters())
    };
    if wake {
        slot.released.notify_waiters();
    }
    out
}

/// A caller's place in a slot's queue. Dropping it (timed out, cancelled, or the slot
/// evicted) leaves the queue; if that caller was first and the slot is free, the others
/// are woken so the new first claims it. A caller that claims the slot leaves the queue
/// under the slot's lock instead ([`served`](Queued::served)).
struct Queued<'a, R> {
    slot: &'a SessionSlot<R>,
    ticket: Option<u64>,
}

impl<R> Queued<'_, R> {
    /// The caller claimed the slot and left the queue: nothing left to undo.
    fn served(mut self, state: &mut SessionState<R>) {
        if let Some(ticket) = self.ticket.take() {
            state.dequeue(ticket);
        }
    }
}

impl<R> Drop for Queued<'_, R> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let wake = {
            let mut state = self.slot.lock();
            state.dequeue(ticket) && !state.in_use
        };
        if wake {
            self.slot.released.notify_waiters();
        }
    }
}

/// Why waiting for a session's claim ended without one.
enum WaitEnd {
    /// The slot was released, evicted or reclaimed: start over with a fresh slot.
    Evicted,
    /// The deadline passed with the session still in use.
    Busy,
}

/// Holds a session's claim while its first resource is being bound. If the bind fails or
/// the acquire future is dropped, the slot is marked evicted and leaves the map, so a
/// failed or refused acquire never leaves a session behind.
struct Binding<M: Manager> {
    inner: Arc<Inner<M>>,
    claim: Option<SessionClaim<M::Resource>>,
}

impl<M: Manager> Binding<M> {
    fn bound(mut self) -> SessionClaim<M::Resource> {
        match self.claim.take() {
            Some(claim) => claim,
            None => unreachable!("a binding holds its claim until bound or dropped"),
        }
    }
}

impl<M: Manager> Drop for Binding<M> {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            let (slot, ()) = claim.finish(|state| state.evicted = true);
            self.inner.detach_session(&slot);
        }
    }
}

impl<M: Manager> Inner<M> {
    /// Removes a slot already marked evicted from the map, unless another slot already
    /// replaced it there. Takes the map lock, so it must not be called with the slot's
    /// state locked.
    pub(crate) fn detach_session(&self, slot: &Arc<SessionSlot<M::Resource>>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions
            .get(&*slot.id)
            .is_some_and(|mapped| Arc::ptr_eq(mapped, slot))
        {
            sessions.remove(&*slot.id);
        }
    }

    /// The session's slot, created if absent; `Closed` after shutdown, so nothing is added
    /// to the map once shutdown has drained it.
    fn session_slot(
        &self,
        session_id: &str,
    ) -> Result<Arc<SessionSlot<M::Resource>>, PoolError<M::Error>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the map lock: shutdown sets the flag before draining the map.
        if self.closed.load(Acquire) {
            return Err(PoolError::Closed);
        }
        if let Some(slot) = sessions.get(session_id) {
            return Ok(slot.clone());
        }
        let id: Arc<str> = Arc::from(session_id);
        let slot = Arc::new(SessionSlot::new(
            id.clone(),
            self.session_released.clone(),
            Instant::now(),
        ));
        sessions.insert(id, slot.clone());
        Ok(slot)
    }

    /// The DEDICATED fast path through the map.
    pub(crate) fn try_dedicated(
        self: &Arc<Self>,
        session_id: &str,
        started: Option<Instant>,
    ) -> Option<Pooled<M>> {
        let slot = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session_id)?
            .clone();
        self.try_dedicated_slot(slot, started)
    }

    /// The DEDICATED fast path on a known slot: nobody is using it and its resource is
    /// ready. Anything else (first use, contention, a dead resource) takes the slow path.
    pub(crate) fn try_dedicated_slot(
        self: &Arc<Self>,
        slot: Arc<SessionSlot<M::Resource>>,
        started: Option<Instant>,
    ) -> Option<Pooled<M>> {
        let (mark, entry) = {
            let mut state = slot.state.try_lock().ok()?;
            if !state.may_claim(None) || state.evicted || !self.usable(&state.entry.as_ref()?.0) {
                return None;
            }
            let entry = state.entry.take()?;
            (SessionClaim::mark(&mut state), entry)
        };
        let claim = mark.into_claim(slot);
        self.record_hand_out(Tier::Dedicated, started);
        Some(Pooled::session(self.clone(), claim, entry, Tier::Dedicated))
    }

    /// Claims `slot`, waiting for its current user to let go, bounded by the deadline and
    /// cut short by shutdown. Returns the claim and the session's parked resource.
    async fn claim_session(
        &self,
        slot: &Arc<SessionSlot<M::Resource>>,
        deadline: Option<Instant>,
    ) -> Result<Result<ClaimedSlot<M::Resource>, WaitEnd>, PoolError<M::Error>> {
        // This caller's place in the queue, taken the first time it finds the slot busy
        // and kept across wake-ups, so those who came first are served first.
        let mut queued: Option<Queued<'_, M::Resource>> = None;
        loop {
            let mut notified = std::pin::pin!(self.session_released.notified());
            {
                let mut state = slot.lock();
                if state.evicted {
                    // Leaving the queue of an evicted slot wakes nobody who matters: they
                    // all find it evicted.
                    if let Some(queued) = queued.take() {
                        queued.served(&mut state);
                    }
                    return Ok(Err(WaitEnd::Evicted));
                }
                if state.may_claim(queued.as_ref().and_then(|q| q.ticket)) {
                    if let Some(queued) = queued.take() {
                        queued.served(&mut state);
                    }
                    let entry = state.entry.take();
                    return Ok(Ok((SessionClaim::claim(slot.clone(), &mut state), entry)));
                }
                if queued.is_none() {
                    let ticket = state.enqueue();
                    queued = Some(Queued {
                        slot,
                        ticket: Some(ticket),
                    });
                }
                // Registered before the lock is released: the claim's end, which reads the
                // queue under this lock, then wakes this future for certain.
                Pin::as_mut(&mut notified).enable();
            }
            let woken = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, notified).await.is_ok(),
                    None => {
                        notified.await;
                        true
                    }
                }
            };
            let woken = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(PoolError::Closed),
                woken = woken => woken,
            };
            if !woken {
                return Ok(Err(WaitEnd::Busy));
            }
        }
    }

    /// The session slow path: queue for the session, then reuse, replace or bind its
    /// resource, all within `timeout`.
    pub(crate) async fn acquire_session_slow(
        self: &Arc<Self>,
        session_id: &str,
        started: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slot = self.session_slot(session_id)?;
            let (claim, parked) = match self.claim_session(&slot, deadline).await? {
                Ok(claimed) => claimed,
                // Released, evicted or reclaimed while we queued for it: start over with a
                // fresh slot.
                Err(WaitEnd::Evicted) => continue,
                Err(WaitEnd::Busy) => {
                    return Err(PoolError::SessionBusy(Box::new(SessionBusyDetails {
                        pool: self.config.name.clone(),
                        session: session_id.to_owned(),
                        waited: timeout.unwrap_or_default(),
                    })));
                }
            };
            if let Some((entry, permit)) = parked {
                if self.usable(&entry) {
                    self.record_hand_out(Tier::Dedicated, started);
                    return Ok(Pooled::session(
                        self.clone(),
                        claim,
                        (entry, permit),
                        Tier::Dedicated,
                    ));
                }
                // Its connection died or expired: close it and bind a new one, reporting
                // the tier the replacement really came from.
                self.discard(entry, Holder::Session(permit));
            }
            let binding = Binding {
                inner: self.clone(),
                claim: Some(claim),
            };
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ((entry, permit), tier) = match self.try_take_idle(started) {
                Some(lent) => (lent, Tier::Warm),
                None => self.take(started, remaining).await?,
            };
            let permit = self.lock().counts.dedicate(permit);
            return Ok(Pooled::session(
                self.clone(),
                binding.bound(),
                (entry, permit),
                tier,
            ));
        }
    }

    /// Ends a session: see [`Pool::release_for_session`](crate::Pool::release_for_session).
    pub(crate) async fn release_session(self: &Arc<Self>, session_id: &str) -> bool {
        if session_id.is_empty() {
            return false;
        }
        let removed = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session_id);
        let Some(slot) = removed else {
            return false;
        };
        // Waits for a user in a turn to finish, without a bound, as documented; shutdown
        // ends such a turn's claim too (its guard's drop sees the pool closed).
        let parked = loop {
            match self.claim_session(&slot, None).await {
                Ok(Ok((claim, entry))) => {
                    let (_, ()) = claim.finish(|state| state.evicted = true);
                    break entry;
                }
                Ok(Err(WaitEnd::Evicted)) => break None,
                Ok(Err(WaitEnd::Busy)) => continue,
                Err(_closed) => {
                    // Shutdown: the session's resource is closed by shutdown or by its
                    // guard; the session existed.
                    return true;
                }
            }
        };
        if let Some((mut entry, permit)) = parked {
            let reset_ok = self.manager.reset(&mut entry.resource).await.is_ok();
            // `usable`, like every other return path: a resource past `max_age` is closed
            // here, not handed to a waiter (`place` does not look at its age).
            let ready = reset_ok && self.usable(&entry);
            let mut st = self.lock();
            st.counts.undedicate(permit);
            self.give_back(st, entry, ready);
        }
        true
    }

    /// Evicts sessions unused for `session_max_age`, closing their resources. A session in
    /// use right now is never evicted. Use is noticed through the `touched` flag, so the
    /// session hot path never reads the clock.
    pub(crate) fn evict_stale_sessions(self: &Arc<Self>, now: Instant) {
        let mut evicted = Vec::new();
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|_, slot| {
                let mut state = slot.lock();
                if state.in_use {
                    return true;
                }
                if state.touched {
                    state.touched = false;
                    state.last_seen = now;
                    return true;
                }
                if now.saturating_duration_since(state.last_seen) < self.config.session_max_age {
                    return true;
                }
                state.evicted = true;
                if let Some(entry) = state.entry.take() {
                    evicted.push(entry);
                }
                false
            });
        }
        if evicted.is_empty() {
            return;
        }
        tracing::debug!(pool = %self.config.name, count = evicted.len(), "evicted stale sessions");
        for (entry, permit) in evicted {
            self.discard(entry, Holder::Session(permit));
        }
    }

    /// Takes back parked session resources, least recently used first, one for each caller
    /// waiting for room that no reclaim is already serving. Each is reset in a tracked task
    /// and then handed to the first waiter (or, if its reset fails, closed, which frees a
    /// slot for a waiter to create in).
    pub(crate) fn reclaim_for_waiters(self: &Arc<Self>) {
        let needed = {
            let st = self.lock();
            let needed = st.slot_waiters().saturating_sub(st.counts.reclaiming());
            if needed == 0 || st.closed {
                self.reclaim_wanted.store(false, SeqCst);
                return;
            }
            needed
        };
        // Candidates: sessions not in a turn with a resource parked. The map is held only
        // while the slots are read (never awaited), per the lock order.
        let mut candidates: Vec<(u64, Arc<SessionSlot<M::Resource>>)> = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .values()
                .filter_map(|slot| {
                    let state = slot.lock();
                    (!state.in_use
                        && !state.has_waiters()
                        && state.entry.is_some()
                        && !state.evicted)
                        .then(|| (state.last_use, slot.clone()))
                })
                .collect()
        };
        candidates.sort_unstable_by_key(|(last_use, _)| *last_use);
        let mut taken = 0;
        for (_, slot) in candidates {
            if taken == needed {
                break;
            }
            // Re-checked: the session may have started a turn since the scan.
            let entry = {
                let mut state = slot.lock();
                if state.in_use || state.has_waiters() || state.evicted {
                    continue;
                }
                let Some(entry) = state.entry.take() else {
                    continue;
                };
                state.evicted = true;
                entry
            };
            self.detach_session(&slot);
            let (entry, permit) = entry;
            let permit = self.lock().counts.start_reclaim(permit);
            taken += 1;
            self.spawn_reclaim(entry, permit);
        }
    }

    fn spawn_reclaim(self: &Arc<Self>, mut entry: Entry<M::Resource>, permit: ReclaimPermit) {
        if tokio::runtime::Handle::try_current().is_err() {
            let mut st = self.lock();
            st.counts.end_reclaim(permit);
            let closing = st.begin_close(entry.resource);
            drop(st);
            self.close(closing);
            return;
        }
        let reclaiming = InFlight::new(self, permit, Self::reclaim_cut_off);
        let inner = self.clone();
        self.tasks.spawn(async move {
            // The next session must not see this one's state.
            let reset_ok = inner.manager.reset(&mut entry.resource).await.is_ok();
            let permit = reclaiming.finish();
            let ready = reset_ok && inner.usable(&entry);
            inner.stats.reclaims_total.fetch_add(1, Relaxed);
            tracing::debug!(pool = %inner.config.name, ready, "reclaimed a parked session resource for a waiting caller");
            let mut st = inner.lock();
            st.counts.end_reclaim(permit);
            inner.give_back(st, entry, ready);
        });
    }

    /// A reset whose task was dropped (its runtime shut down): the resource went with the
    /// task, unclosed, so it counts as closed and its slot is free.
    fn reclaim_cut_off(&self, permit: ReclaimPermit) {
        self.stats.closed_total.fetch_add(1, Relaxed);
        let mut st = self.lock();
        st.counts.end_reclaim(permit);
        self.slot_freed(&mut st);
    }

    /// Shutdown's part for sessions: every slot leaves the map and is marked evicted; the
    /// resources of sessions not in a turn are closed (one in a turn is closed by its
    /// guard's drop, which sees the pool closed), and every caller queued behind a
    /// session's user is woken to find the pool closed.
    pub(crate) fn close_sessions(self: &Arc<Self>) {
        let parked: Vec<_> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .drain()
                .filter_map(|(_, slot)| {
                    let mut state = slot.lock();
                    state.evicted = true;
                    if state.in_use {
                        None
                    } else {
                        state.entry.take()
                    }
                })
                .collect()
        };
        self.session_released.notify_waiters();
        for (entry, permit) in parked {
            self.discard(entry, Holder::Session(permit));
        }
    }

    /// The next position in the use order (see `SessionState::last_use`).
    pub(crate) fn next_use(&self) -> u64 {
        self.use_counter.fetch_add(1, Relaxed)
    }
}

/// A claimed slot and the resource that was parked in it, if any.
type ClaimedSlot<R> = (SessionClaim<R>, Option<Bound<R>>);

/// A session's resource with the permit that counts it as dedicated.
pub(crate) type Bound<R> = (Entry<R>, Dedicated);

/// One session of a pool, kept by a caller that serves many turns of one call. It
/// remembers the session's slot, so a DEDICATED acquire through it skips the session map
/// (the id's hash and the map's lock); otherwise it behaves exactly like the string API with
/// the same id. Cheap to clone; clones share nothing but the pool and the id.
///
/// ```
/// # use pool_core::{Manager, Pool, Tier};
/// # struct Conn;
/// # impl Manager for Conn {
/// #     type Resource = u32;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u32, std::io::Error> { Ok(1) }
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let pool = Pool::builder(Conn).session_awareness(true).build().unwrap();
/// let call = pool.session("call-42");
/// drop(call.acquire().await.unwrap()); // first turn binds a resource
/// assert_eq!(call.acquire().await.unwrap().tier(), Tier::Dedicated);
/// assert!(call.release().await);
/// # });
/// ```
pub struct SessionHandle<M: Manager> {
    inner: Arc<Inner<M>>,
    id: Arc<str>,
    /// The slot this handle last acquired through. A stale slot (the session was released,
    /// evicted or reclaimed since) is noticed by its `evicted` mark and replaced.
    slot: Mutex<Option<Arc<SessionSlot<M::Resource>>>>,
}

impl<M: Manager> SessionHandle<M> {
    pub(crate) fn new(inner: Arc<Inner<M>>, session_id: &str) -> Self {
        Self {
            inner,
            id: Arc::from(session_id),
            slot: Mutex::new(None),
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the session's resource: the same guard and rules as
    /// [`Pool::acquire_for_session`](crate::Pool::acquire_for_session).
    pub async fn acquire(&self) -> Result<Pooled<M>, PoolError<M::Error>> {
        self.acquire_within(self.inner.config.acquire_timeout).await
    }

    /// Like [`acquire`](SessionHandle::acquire), waiting at most `timeout`.
    pub async fn acquire_with_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        self.acquire_within(Some(timeout)).await
    }

    async fn acquire_within(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        let inner = &self.inner;
        if self.id.is_empty() || !inner.config.session_awareness {
            let started = sample_start();
            if let Some(lent) = inner.try_take_idle(started) {
                return Ok(Pooled::plain(inner.clone(), lent, Tier::Warm));
            }
            let (lent, tier) = Box::pin(inner.take(started, timeout)).await?;
            return Ok(Pooled::plain(inner.clone(), lent, tier));
        }
        let started = sample_start();
        let cached = self.cached_slot();
        if let Some(slot) = cached
            && let Some(guard) = inner.try_dedicated_slot(slot, started)
        {
            return Ok(guard);
        }
        let guard = Box::pin(inner.acquire_session_slow(&self.id, started, timeout)).await?;
        if let Some(slot) = guard.session_slot() {
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot.clone());
        }
        Ok(guard)
    }

    fn cached_slot(&self) -> Option<Arc<SessionSlot<M::Resource>>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ends the session: the same as
    /// [`Pool::release_for_session`](crate::Pool::release_for_session). The handle stays
    /// usable; its next acquire starts a new session with the same id.
    pub async fn release(&self) -> bool {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.inner.release_session(&self.id).await
    }
}

impl<M: Manager> Clone for SessionHandle<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            id: self.id.clone(),
            slot: Mutex::new(self.cached_slot()),
        }
    }
}

impl<M: Manager> std::fmt::Debug for SessionHandle<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("pool", &self.inner.config.name)
            .field("session", &self.id)
            .finish_non_exhaustive()
    }
}
