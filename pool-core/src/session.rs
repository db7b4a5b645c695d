//! Sessions: the per-session slot, the DEDICATED fast path, binding, eviction, release,
//! and the [`SessionHandle`] that skips the session map.
//!
//! Lock order: a session's async mutex, then the sessions map, then the state mutex. Code
//! that holds the sessions map only ever `try_lock`s a session's mutex, so it never waits
//! behind a session user.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::error::{PoolError, SessionBusyDetails};
use crate::guard::Pooled;
use crate::manager::Manager;
use crate::pool::{Entry, Holder, Inner, sample_start};
use crate::tier::Tier;

/// A session's binding. The async mutex around it is what serialises concurrent users of
/// one session (a websocket serves one turn at a time) and what makes concurrent *first*
/// acquires create exactly one resource: the second caller waits for the first.
pub(crate) type SessionSlot<R> = tokio::sync::Mutex<SessionState<R>>;

#[derive(Debug)]
pub(crate) struct SessionState<R> {
    /// The session id, shared with the map key so forgetting the session needs no copy.
    pub id: Arc<str>,
    /// The session's resource, absent while its user holds it or before the first bind.
    pub entry: Option<Entry<R>>,
    /// Set on every use; the maintainer clears it and stamps `last_seen`, so the hot path
    /// never reads the clock.
    pub touched: bool,
    /// When the maintainer last saw this session used (or when it was created).
    pub last_seen: Instant,
    /// Position in the pool's use order, stamped when a turn ends: the smallest parked
    /// value is the least recently used session, the first one reclaimed.
    pub last_use: u64,
    /// The slot was released, evicted, reclaimed or shut down, or its first bind failed;
    /// a caller that queued on it starts over with a fresh slot.
    pub evicted: bool,
}

/// Holds a session's slot while its first resource is being bound. If the bind fails or
/// the acquire future is dropped, the slot is marked evicted and leaves the map, so a
/// failed or refused acquire never leaves a session behind.
struct Binding<M: Manager> {
    inner: Arc<Inner<M>>,
    state: Option<OwnedMutexGuard<SessionState<M::Resource>>>,
}

impl<M: Manager> Binding<M> {
    fn bound(mut self) -> OwnedMutexGuard<SessionState<M::Resource>> {
        match self.state.take() {
            Some(state) => state,
            None => unreachable!("a binding holds its slot until bound or dropped"),
        }
    }
}

impl<M: Manager> Drop for Binding<M> {
    fn drop(&mut self) {
        if let Some(mut state) = self.state.take() {
            self.inner.forget_session(&mut state);
        }
    }
}

impl<M: Manager> Inner<M> {
    /// Marks a slot evicted and removes it from the map, unless another slot already
    /// replaced it there. Called with the slot locked, so callers queued on it see the mark
    /// and start over.
    pub(crate) fn forget_session(&self, state: &mut OwnedMutexGuard<SessionState<M::Resource>>) {
        state.evicted = true;
        let slot = OwnedMutexGuard::mutex(state);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions
            .get(&*state.id)
            .is_some_and(|mapped| Arc::ptr_eq(mapped, slot))
        {
            sessions.remove(&*state.id);
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
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        if let Some(slot) = sessions.get(session_id) {
            return Ok(slot.clone());
        }
        let id: Arc<str> = Arc::from(session_id);
        let slot = Arc::new(tokio::sync::Mutex::new(SessionState {
            id: id.clone(),
            entry: None,
            touched: true,
            last_seen: Instant::now(),
            last_use: 0,
            evicted: false,
        }));
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
        let mut state = slot.try_lock_owned().ok()?;
        let entry = state.entry.as_ref()?;
        if state.evicted || !self.usable(entry) {
            return None;
        }
        let entry = state.entry.take()?;
        state.touched = true;
        self.record_hand_out(Tier::Dedicated, started);
        Some(Pooled::session(self.clone(), state, entry, Tier::Dedicated))
    }

    /// Waits for the session's current user to let go, bounded by the deadline and cut
    /// short by shutdown.
    async fn wait_for_session(
        &self,
        slot: &Arc<SessionSlot<M::Resource>>,
        session_id: &str,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<OwnedMutexGuard<SessionState<M::Resource>>, PoolError<M::Error>> {
        let locked = slot.clone().lock_owned();
        let bounded = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, locked).await.ok(),
                None => Some(locked.await),
            }
        };
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Err(PoolError::Closed),
            locked = bounded => locked.ok_or_else(|| {
                PoolError::SessionBusy(Box::new(SessionBusyDetails {
                    pool: self.config.name.clone(),
                    session: session_id.to_owned(),
                    waited: timeout.unwrap_or_default(),
                }))
            }),
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
            let mut state = match slot.clone().try_lock_owned() {
                Ok(state) => state,
                Err(_) => {
                    self.wait_for_session(&slot, session_id, deadline, timeout)
                        .await?
                }
            };
            if state.evicted {
                // Released, evicted or reclaimed while we queued for it: start over with a
                // fresh slot.
                continue;
            }
            state.touched = true;
            if let Some(entry) = state.entry.take() {
                if self.usable(&entry) {
                    self.record_hand_out(Tier::Dedicated, started);
                    return Ok(Pooled::session(self.clone(), state, entry, Tier::Dedicated));
                }
                // Its connection died or expired: close it and bind a new one, reporting
                // the tier the replacement really came from.
                self.discard(entry, Holder::Session);
            }
            let binding = Binding {
                inner: self.clone(),
                state: Some(state),
            };
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let (entry, tier) = match self.try_take_idle(started) {
                Some(entry) => (entry, Tier::Warm),
                None => self.take(started, remaining).await?,
            };
            {
                let mut st = self.lock();
                st.checked_out -= 1;
                st.dedicated += 1;
            }
            return Ok(Pooled::session(self.clone(), binding.bound(), entry, tier));
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
        let mut state = slot.lock_owned().await;
        state.evicted = true;
        if let Some(mut entry) = state.entry.take() {
            drop(state);
            let reset_ok = self.manager.reset(&mut entry.resource).await.is_ok();
            let ready = reset_ok && self.manager.is_ready(&entry.resource);
            let mut st = self.lock();
            st.dedicated -= 1;
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
                let Ok(mut state) = slot.try_lock() else {
                    return true;
                };
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
        for entry in evicted {
            self.discard(entry, Holder::Session);
        }
    }

    /// Takes back parked session resources, least recently used first, one for each caller
    /// waiting for room that no reclaim is already serving. Each is reset in a tracked task
    /// and then handed to the first waiter (or, if its reset fails, closed, which frees a
    /// slot for a waiter to create in).
    pub(crate) fn reclaim_for_waiters(self: &Arc<Self>) {
        let needed = {
            let st = self.lock();
            let needed = st.slot_waiters().saturating_sub(st.reclaiming);
            if needed == 0 || st.closed {
                self.reclaim_wanted
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            needed
        };
        // Candidates: sessions not in a turn with a resource parked. The map is held only
        // while the slots are tried (never awaited), per the lock order.
        let mut candidates: Vec<(u64, Arc<SessionSlot<M::Resource>>)> = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .values()
                .filter_map(|slot| {
                    let state = slot.try_lock().ok()?;
                    (state.entry.is_some() && !state.evicted)
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
            let Ok(mut state) = slot.try_lock_owned() else {
                continue;
            };
            if state.evicted {
                continue;
            }
            let Some(entry) = state.entry.take() else {
                continue;
            };
            self.forget_session(&mut state);
            drop(state);
            self.lock().reclaiming += 1;
            taken += 1;
            self.spawn_reclaim(entry);
        }
    }

    fn spawn_reclaim(self: &Arc<Self>, mut entry: Entry<M::Resource>) {
        if tokio::runtime::Handle::try_current().is_err() {
            let mut st = self.lock();
            st.reclaiming -= 1;
            st.dedicated -= 1;
            let closing = st.begin_close(entry.resource);
            drop(st);
            self.close(closing);
            return;
        }
        let inner = self.clone();
        self.tasks.spawn(async move {
            // The next session must not see this one's state.
            let reset_ok = inner.manager.reset(&mut entry.resource).await.is_ok();
            let ready = reset_ok && inner.usable(&entry);
            inner.stats.reclaims_total.fetch_add(1, Relaxed);
            tracing::debug!(pool = %inner.config.name, ready, "reclaimed a parked session resource for a waiting caller");
            let mut st = inner.lock();
            st.reclaiming -= 1;
            st.dedicated -= 1;
            inner.give_back(st, entry, ready);
        });
    }

    /// The next position in the use order (see `SessionState::last_use`).
    pub(crate) fn next_use(&self) -> u64 {
        self.use_counter.fetch_add(1, Relaxed)
    }
}

/// One session of a pool, kept by a caller that serves many turns of one call. It
/// remembers the session's slot, so a DEDICATED acquire through it skips the session map;
/// otherwise it behaves exactly like the string API with the same id. Cheap to clone;
/// clones share nothing but the pool and the id.
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
            if let Some(entry) = inner.try_take_idle(started) {
                return Ok(Pooled::plain(inner.clone(), entry, Tier::Warm));
            }
            let (entry, tier) = Box::pin(inner.take(started, timeout)).await?;
            return Ok(Pooled::plain(inner.clone(), entry, tier));
        }
        let started = sample_start();
        let cached = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
            slot: Mutex::new(self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone()),
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
