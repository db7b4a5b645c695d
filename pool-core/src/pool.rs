//! The pool handle and its shared state: the public API, the idle set, and the return /
//! place / discard / close paths that every hand-out and give-back goes through.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounting::{CheckedOut, ClosePermit, Counts, CreatePermit, Dedicated};
use crate::adaptive::{Estimator, Ramp, TargetReason};
use crate::config::{PoolBuilder, PoolConfig};
use crate::error::PoolError;
use crate::guard::Pooled;
use crate::in_flight::InFlight;
use crate::manager::Manager;
use crate::metrics::Stats;
use crate::session::SessionHandle;
use crate::session::SessionSlot;
use crate::snapshot::{LatencySummary, PoolCounts, PoolSnapshot, TierLatencies};
use crate::tier::Tier;
use crate::waiters::{Handoff, Waiter, WaiterGuard, Wants};

/// WARM and DEDICATED acquires are timed one in this many: reading the clock twice would
/// cost more than the acquire itself. COLD acquires are always timed.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

/// What an acquire's locked step decided, acted on after the lock is released.
pub(crate) enum TakeStep<M: Manager> {
    /// Took an idle entry; the flag says whether the idle set fell below target.
    Idle(Entry<M::Resource>, CheckedOut, bool),
    /// Nothing idle: queued, with a create permit when this caller may create its own.
    Slow(WaiterGuard<M>, Option<CreatePermit>),
}

/// Sessions by id. foldhash is seeded per map, so ids chosen by clients cannot force
/// collisions, and it is far cheaper than SipHash on the DEDICATED hot path.
pub(crate) type SessionMap<R> = HashMap<Arc<str>, Arc<SessionSlot<R>>, foldhash::fast::RandomState>;

/// Decides whether this acquire is one of the timed samples, and if so starts its clock.
pub(crate) fn sample_start() -> Option<Instant> {
    (fastrand::u32(..LATENCY_SAMPLE_EVERY) == 0).then(Instant::now)
}

/// A resource plus what the pool must remember about it between hand-outs.
#[derive(Debug)]
pub(crate) struct Entry<R> {
    pub resource: R,
    /// When `create` finished: the base of `max_age` refreshes.
    pub created_at: Instant,
    /// This resource's share of `refresh_jitter`, fixed at creation so its refresh moment
    /// does not move on every return.
    pub jitter: Duration,
}

/// A resource counted as closing, on its way to `Manager::close`. Made only by
/// [`State::begin_close`]; consumed only by [`Inner::close`], which hands its permit back
/// when the close has finished.
#[must_use = "a counted resource must be passed to Inner::close"]
pub(crate) struct Closing<R> {
    resource: R,
    permit: ClosePermit,
}

/// A resource lent to a caller, with the permit that counts it as checked out.
pub(crate) type Lent<R> = (Entry<R>, CheckedOut);

/// Which limits a refill honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefillLimits {
    /// The failure backoff and the create ramp (background refills).
    All,
    /// Only `create_concurrency` and `max_size`: [`Pool::prepare`], which a caller awaits.
    ConcurrencyOnly,
}

/// Where a resource being placed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Just created by a refill.
    Fresh,
    /// Given back by a caller (or a reclaim, or a lost create race).
    Returned,
}

/// Who a new resource is created for, which decides how it is warmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateFor {
    /// A caller waiting for it (COLD): warmed with `Manager::warm_for_caller`.
    Caller,
    /// The idle set (refill or refresh): warmed with `Manager::warm`.
    IdleSet,
}

/// Who held a resource its holder gives up, with the permit that counted it there.
#[derive(Debug)]
pub(crate) enum Holder {
    /// Handed out by a plain acquire.
    CheckedOut(CheckedOut),
    /// Bound to a session.
    Session(Dedicated),
}

/// An idle resource and the moment the maintainer should replace it.
#[derive(Debug)]
pub(crate) struct IdleEntry<R> {
    pub(crate) entry: Entry<R>,
    /// `None` when neither `max_age` nor `max_idle` is set.
    pub(crate) refresh_at: Option<Instant>,
    /// A replacement is being created; the first fresh resource that arrives retires this one.
    pub(crate) replacing: bool,
}

/// Everything guarded by the pool's one state lock. Held only for a few pointer moves,
/// never across an await.
#[derive(Debug)]
pub(crate) struct State<R> {
    pub(crate) idle: VecDeque<IdleEntry<R>>,
    /// Everything counted against `max_size` outside the idle set: creating, checked out,
    /// dedicated, closing. Changed only by exchanging permits (see [`crate::accounting`]).
    pub(crate) counts: Counts,
    /// Idle entries marked `replacing`.
    pub(crate) replacing: usize,
    /// The idle target in force: the configured `warm_target`, or above it when the
    /// adaptive target asks for more.
    pub(crate) warm_target: usize,
    /// Why `warm_target` has its value.
    pub(crate) target_reason: TargetReason,
    /// The create ramp limit, when one is configured.
    pub(crate) ramp: Option<Ramp>,
    /// When the ramp next allows a create, after it held one back.
    pub(crate) ramp_next: Option<Instant>,
    /// The fewest idle resources seen since the maintainer's last housekeeping pass: what
    /// stayed above the target that whole time is surplus nobody needed.
    pub(crate) idle_low_water: usize,
    /// Callers waiting, oldest first: FIFO fairness.
    pub(crate) waiters: VecDeque<Waiter<R>>,
    pub(crate) next_waiter_id: u64,
    /// Set by shutdown; nothing is handed out or kept after it.
    pub(crate) closed: bool,
    /// Set once the idle set first reaches its target.
    pub(crate) ever_ready: bool,
    pub(crate) last_error: Option<String>,
    /// Consecutive background create failures, for backoff.
    pub(crate) failure_streak: u32,
    /// No background create starts before this moment.
    pub(crate) backoff_until: Option<Instant>,
    /// When the reaper plans to wake next (`None`: it sleeps until notified), so a waiter
    /// with an earlier deadline can wake it.
    pub(crate) reaper_next: Option<Instant>,
    /// When the maintainer plans to wake next (`None` without a maintainer), so a returned
    /// resource due for refresh sooner can wake it.
    pub(crate) next_maintenance: Option<Instant>,
}

impl<R> State<R> {
    /// Live resources, the quantity `max_size` bounds. Derived rather than stored so it can
    /// never drift from its parts.
    pub(crate) fn live(&self) -> usize {
        self.idle.len() + self.counts.total()
    }

    /// Counts a resource as closing and wraps it in the only type [`Inner::close`] accepts,
    /// so no close can skip the count that keeps its slot taken until the close finishes.
    pub(crate) fn begin_close(&mut self, resource: R) -> Closing<R> {
        Closing {
            resource,
            permit: self.counts.start_close(),
        }
    }

    /// Callers waiting for room (not those racing their own create).
    pub(crate) fn slot_waiters(&self) -> usize {
        self.waiters
            .iter()
            .filter(|w| w.wants == Wants::ResourceOrSlot)
            .count()
    }

    pub(crate) fn has_slot_waiter(&self) -> bool {
        self.waiters
            .iter()
            .any(|w| w.wants == Wants::ResourceOrSlot)
    }
}

/// The shared heart of a pool. Guards and background tasks hold an `Arc` of it; the public
/// [`Pool`] handle holds it through [`Handle`], whose drop stops the maintainer.
pub(crate) struct Inner<M: Manager> {
    pub manager: M,
    pub config: PoolConfig,
    pub(crate) state: Mutex<State<M::Resource>>,
    pub sessions: Mutex<SessionMap<M::Resource>>,
    /// Mirrors `State::closed` so a session guard's drop can check it without the lock.
    pub closed: AtomicBool,
    /// Orders session uses, for reclaiming the least recently used parked session.
    pub use_counter: AtomicU64,
    /// Set when a caller queued on a full pool that may reclaim session resources; a
    /// session turn that ends then looks for a resource to reclaim. Cleared by a reclaim
    /// pass that finds no caller left to serve.
    pub reclaim_wanted: AtomicBool,
    /// The adaptive target's demand and latency estimates (updated by the maintainer and
    /// by finished creates, never on the acquire path).
    pub estimator: Mutex<Estimator>,
    /// The acquire-timeout reaper is spawned on the first timed wait, not at build time,
    /// so pools that never wait (and builds outside a runtime) have no such task.
    pub(crate) reaper_started: AtomicBool,
    /// The maintainer runs. Cleared when its task ends, which happens with its runtime's
    /// shutdown too: a pool used from one runtime after another (a `static` shared by
    /// `#[tokio::test]`s) then starts it again on the next refill.
    pub(crate) maintainer_running: AtomicBool,
    /// Wakes the reaper when a waiter's deadline is earlier than its planned wake-up.
    /// Shared with the reaper task, which waits on it holding only a `Weak` to the pool.
    pub(crate) reaper_wake: Arc<Notify>,
    pub stats: Stats,
    /// Every close, create and the maintainer run here, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled by shutdown or by dropping the last [`Pool`] handle.
    pub stop: CancellationToken,
    /// Wakes the maintainer early: the idle set fell below target, or a backoff changed.
    /// Shared with the maintainer task, which waits on it holding only a `Weak` to the pool.
    pub maintainer_wake: Arc<Notify>,
    /// Wakes callers queued behind a session's user when a session's claim ends (every
    /// slot holds a clone; see `SessionSlot`), and at shutdown.
    pub(crate) session_released: Arc<Notify>,
}

/// A cheap-to-clone handle to a pool of `M::Resource`.
///
/// See the crate docs for the tiers and the guarantees.
pub struct Pool<M: Manager> {
    handle: Arc<Handle<M>>,
}

impl<M: Manager> std::fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner().config.name)
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

/// Owns the pool's background work: dropping the last [`Pool`] clone stops the maintainer
/// and closes idle resources, like a mini-redis guard. Guards in flight keep [`Inner`]
/// alive without keeping the maintainer running.
struct Handle<M: Manager> {
    inner: Arc<Inner<M>>,
}

impl<M: Manager> Drop for Handle<M> {
    fn drop(&mut self) {
        self.inner.stop.cancel();
        self.inner.close_everything_now();
    }
}

impl<M: Manager> Pool<M> {
    /// Starts building a pool around `manager`.
    pub fn builder(manager: M) -> PoolBuilder<M> {
        PoolBuilder::new(manager)
    }

    pub(crate) fn from_parts(manager: M, config: PoolConfig) -> Self {
        let ever_ready = config.warm_target == 0;
        let inner = Arc::new(Inner {
            manager,
            state: Mutex::new(State {
                idle: VecDeque::with_capacity(config.warm_target),
                counts: Counts::default(),
                replacing: 0,
                idle_low_water: 0,
                warm_target: config.warm_target,
                target_reason: TargetReason::Floor,
                ramp: config.create_rate_limit.map(Ramp::new),
                ramp_next: None,
                waiters: VecDeque::new(),
                next_waiter_id: 0,
                closed: false,
                ever_ready,
                last_error: None,
                failure_streak: 0,
                backoff_until: None,
                next_maintenance: None,
                reaper_next: None,
            }),
            closed: AtomicBool::new(false),
            use_counter: AtomicU64::new(1),
            reclaim_wanted: AtomicBool::new(false),
            estimator: Mutex::new(Estimator::new()),
            reaper_started: AtomicBool::new(false),
            maintainer_running: AtomicBool::new(false),
            reaper_wake: Arc::new(Notify::new()),
            session_released: Arc::new(Notify::new()),
            sessions: Mutex::new(HashMap::default()),
            stats: Stats::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            maintainer_wake: Arc::new(Notify::new()),
            config,
        });
        if inner.config.background_warmup {
            crate::maintainer::spawn(&inner);
        }
        Self {
            handle: Arc::new(Handle { inner }),
        }
    }

    fn inner(&self) -> &Arc<Inner<M>> {
        &self.handle.inner
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner().config.name
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner().config
    }

    /// The backend manager.
    pub fn manager(&self) -> &M {
        &self.inner().manager
    }

    /// Fills the idle set to its target (creating at most `create_concurrency` at once) and
    /// waits for it. Returns the last create error if the target could not be reached; the
    /// pool stays usable and, with `background_warmup`, keeps retrying.
    pub async fn prepare(&self) -> Result<(), PoolError<M::Error>> {
        let inner = self.inner();
        loop {
            let batch = inner.start_refill(RefillLimits::ConcurrencyOnly);
            if batch.is_empty() {
                let (closed, reached, refilling) = {
                    let st = inner.lock();
                    (
                        st.closed,
                        st.idle.len() >= inner.config.warm_target,
                        st.counts.refilling() > 0,
                    )
                };
                if closed {
                    return Err(PoolError::Closed);
                }
                // Nothing more can start: either the target is reached, or the pool is full
                // of resources in use, or the maintainer's creates are still in flight.
                if reached || !refilling {
                    return Ok(());
                }
                // The maintainer's creates will land shortly; poll rather than add a
                // notification to every place() for this start-up-only path.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let mut failed = None;
            for rx in batch {
                if let Ok(Err(error)) = rx.await {
                    failed = Some(error);
                }
            }
            if let Some(error) = failed {
                return Err(error);
            }
        }
    }

    /// Takes a resource: from the idle set (WARM), else creates one (COLD) while racing
    /// any resource returned meanwhile, else waits FIFO for one while the pool is at
    /// `max_size`, for at most the configured `acquire_timeout`. The guard returns it when
    /// dropped.
    pub async fn acquire(&self) -> Result<Pooled<M>, PoolError<M::Error>> {
        self.acquire_within(self.inner().config.acquire_timeout)
            .await
    }

    /// Like [`acquire`](Pool::acquire), but waits at most `timeout` instead of the
    /// configured `acquire_timeout`.
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
        let inner = self.inner();
        let started = sample_start();
        // The WARM path is synchronous and runs before any future is built; the slow path is
        // boxed so that this future stays a few words and cheap to create on every acquire.
        if let Some(lent) = inner.try_take_idle(started) {
            return Ok(Pooled::plain(inner.clone(), lent, Tier::Warm));
        }
        let (lent, tier) = Box::pin(inner.take(started, timeout)).await?;
        Ok(Pooled::plain(inner.clone(), lent, tier))
    }

    /// Takes the session's own resource (DEDICATED), binding one on first use. Concurrent
    /// callers for one session are served one at a time, in arrival order, with the same
    /// resource, never a duplicate; a caller that finds the session's resource in use waits for it at most
    /// the acquire timeout, then fails with [`PoolError::SessionBusy`]. An empty
    /// `session_id`, or a pool without session awareness, behaves like
    /// [`acquire`](Pool::acquire).
    ///
    /// A session exists (and counts in `active_sessions`) only while it holds a resource
    /// or is binding one: an acquire that fails leaves no session behind.
    pub async fn acquire_for_session(
        &self,
        session_id: &str,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        self.acquire_for_session_within(session_id, self.inner().config.acquire_timeout)
            .await
    }

    /// Like [`acquire_for_session`](Pool::acquire_for_session), but waits at most `timeout`
    /// (for the session's current user and for a resource together) instead of the
    /// configured `acquire_timeout`.
    pub async fn acquire_for_session_with_timeout(
        &self,
        session_id: &str,
        timeout: Duration,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        self.acquire_for_session_within(session_id, Some(timeout))
            .await
    }

    async fn acquire_for_session_within(
        &self,
        session_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        let inner = self.inner();
        if session_id.is_empty() || !inner.config.session_awareness {
            return self.acquire_within(timeout).await;
        }
        let started = sample_start();
        if let Some(guard) = inner.try_dedicated(session_id, started) {
            return Ok(guard);
        }
        Box::pin(inner.acquire_session_slow(session_id, started, timeout)).await
    }

    /// A handle on one session that skips the session map on every acquire after the
    /// first: for a caller that serves many turns of one call. The string API
    /// ([`acquire_for_session`](Pool::acquire_for_session)) stays equivalent; both can be
    /// used for the same session at once. Creating a handle does not create the session:
    /// that happens on its first acquire.
    pub fn session(&self, session_id: &str) -> SessionHandle<M> {
        SessionHandle::new(self.inner().clone(), session_id)
    }

    /// Ends a session: resets its resource and returns it to the idle set (or closes it if
    /// it is not ready or the idle set is full). Waits for a caller currently using the
    /// session's resource to finish. Returns whether the session existed.
    pub async fn release_for_session(&self, session_id: &str) -> bool {
        self.inner().release_session(session_id).await
    }

    /// Stops the maintainer, wakes every waiter with [`PoolError::Closed`], closes every idle
    /// and session resource (in-use ones are closed when their guard drops), and waits up to
    /// `shutdown_timeout` for closes and in-flight creates to finish. Idempotent.
    pub async fn shutdown(&self) {
        let inner = self.inner();
        inner.stop.cancel();
        inner.close_everything_now();
        inner.tasks.close();
        if tokio::time::timeout(inner.config.shutdown_timeout, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pool = %inner.config.name,
                "shutdown timed out waiting for in-flight closes and creates"
            );
        }
    }

    /// A consistent view of the pool's gauges plus its counters.
    pub fn snapshot(&self) -> PoolSnapshot {
        self.inner().snapshot()
    }

    /// The pool's gauges only, read under one lock without building a snapshot: cheap
    /// enough for a per-request check or a tight metrics loop.
    pub fn counts(&self) -> PoolCounts {
        self.inner().counts()
    }

    /// Tasks the pool is running right now: closes, creates, the maintainer, and the
    /// acquire-timeout reaper (started by the first acquire that had to wait). Zero after a
    /// completed [`shutdown`](Pool::shutdown): proof that nothing was left behind.
    pub fn background_tasks(&self) -> usize {
        self.inner().tasks.len()
    }
}

impl<M: Manager> Inner<M> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<M::Resource>> {
        // A panic while holding this lock can only come from a bug in this crate (no user
        // code runs under it); the state is still structurally valid, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The WARM fast path: an idle, ready resource, or `None` when the idle set is empty
    /// (or the pool is closed: the slow path reports that).
    pub(crate) fn try_take_idle(
        self: &Arc<Self>,
        started: Option<Instant>,
    ) -> Option<Lent<M::Resource>> {
        loop {
            let (entry, permit, below_target) = {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                self.pop_idle(&mut st)?
            };
            if let Some(lent) = self.hand_out_idle(entry, permit, below_target, started) {
                return Some(lent);
            }
        }
    }

    /// Takes the oldest idle entry and counts it as checked out; the flag says whether the
    /// idle set fell below target.
    pub(crate) fn pop_idle(
        &self,
        st: &mut State<M::Resource>,
    ) -> Option<(Entry<M::Resource>, CheckedOut, bool)> {
        let idle = st.idle.pop_front()?;
        if idle.replacing {
            st.replacing -= 1;
        }
        let permit = st.counts.check_out();
        st.idle_low_water = st.idle_low_water.min(st.idle.len());
        Some((idle.entry, permit, st.idle.len() < st.warm_target))
    }

    /// How many idle resources the pool keeps before closing a returned or refilled one.
    /// With a maintainer, up to twice the target: a resource that comes back while a refill
    /// is in flight is worth more than closing it and paying a connect moments later, and
    /// the maintainer trims surplus nobody dips into (see `trim_surplus`). Without one,
    /// nothing would trim it, so the target is the cap.
    pub(crate) fn keep_cap(&self, st: &State<M::Resource>) -> usize {
        let target = st.warm_target;
        if self.config.background_warmup {
            target.saturating_mul(2)
        } else {
            target
        }
    }

    /// Finishes taking an idle entry (already counted as checked out): wakes the maintainer
    /// if the idle set fell below target, then hands the entry out if it is still ready, or
    /// closes it and returns `None` so the caller tries again.
    pub(crate) fn hand_out_idle(
        self: &Arc<Self>,
        entry: Entry<M::Resource>,
        permit: CheckedOut,
        below_target: bool,
        started: Option<Instant>,
    ) -> Option<Lent<M::Resource>> {
        if below_target && self.config.background_warmup {
            crate::maintainer::ensure_running(self);
            self.maintainer_wake.notify_one();
        }
        if self.usable(&entry) {
            self.record_hand_out(Tier::Warm, started);
            return Some((entry, permit));
        }
        self.discard(entry, Holder::CheckedOut(permit));
        None
    }

    /// The plain acquire: idle set, else create (racing returns), else wait.
    pub(crate) async fn take(
        self: &Arc<Self>,
        started: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<(Lent<M::Resource>, Tier), PoolError<M::Error>> {
        loop {
            let mut slow_started = started;
            let step = {
                let mut st = self.lock();
                if st.closed {
                    return Err(PoolError::Closed);
                }
                match self.pop_idle(&mut st) {
                    Some((entry, permit, below_target)) => {
                        TakeStep::Idle(entry, permit, below_target)
                    }
                    None => {
                        // Nothing idle: the slow path, always timed.
                        let now = *slow_started.get_or_insert_with(Instant::now);
                        let deadline = timeout.map(|t| now + t);
                        let create = (st.live() < self.config.max_size)
                            .then(|| st.counts.start_create(false));
                        if create.is_none() && self.config.reclaim_idle_sessions {
                            // Checked (outside the lock) once this caller is queued.
                            self.reclaim_wanted.store(true, SeqCst);
                        }
                        let wants = if create.is_some() {
                            Wants::ReturnedOnly
                        } else {
                            Wants::ResourceOrSlot
                        };
                        TakeStep::Slow(self.register_waiter(&mut st, wants, deadline), create)
                    }
                }
            };
            let (waiter, create) = match step {
                TakeStep::Idle(entry, permit, below_target) => {
                    match self.hand_out_idle(entry, permit, below_target, started) {
                        Some(lent) => return Ok((lent, Tier::Warm)),
                        None => continue,
                    }
                }
                TakeStep::Slow(waiter, create) => (waiter, create),
            };
            if create.is_none() && self.config.reclaim_idle_sessions {
                self.reclaim_for_waiters();
            }
            let started = slow_started.unwrap_or_else(Instant::now);
            let deadline = timeout.map(|t| started + t);
            let waited = timeout.unwrap_or_default();
            let result = match create {
                Some(permit) => self.create_racing(waiter, permit, waited).await,
                None => self.wait(waiter, deadline, waited).await,
            };
            if let Ok((_, tier)) = &result {
                // One clock read serves both the tier's latency and the wait histogram.
                let elapsed = started.elapsed();
                self.stats.record_allocation(*tier);
                self.stats.record_latency(*tier, elapsed);
                if *tier == Tier::Warm {
                    // On the slow path a WARM resource is one another caller gave back
                    // while this one waited: counted apart, so a full pool shows as such.
                    self.stats.waited_total.fetch_add(1, Relaxed);
                    self.stats.wait_latency.record(elapsed);
                }
            }
            return result;
        }
    }

    /// Hands a ready resource that no one holds to the first waiter, else keeps it idle if
    /// the idle set is below target (or it replaces an expiring idle resource), else returns
    /// it for the caller to close outside the lock.
    pub(crate) fn place(
        &self,
        st: &mut State<M::Resource>,
        mut entry: Entry<M::Resource>,
        origin: Origin,
    ) -> Option<Closing<M::Resource>> {
        let fresh = origin == Origin::Fresh;
        if st.closed {
            return Some(st.begin_close(entry.resource));
        }
        // A fresh resource from a refill skips callers racing their own create: handing it
        // over would only make their create the loser and the refill look short, starting
        // another create. Returned resources go to the first waiter of any kind.
        let mut skipped = 0;
        while skipped < st.waiters.len() {
            if fresh && st.waiters[skipped].wants == Wants::ReturnedOnly {
                skipped += 1;
                continue;
            }
            let Some(waiter) = st.waiters.remove(skipped) else {
                break;
            };
            let permit = st.counts.check_out();
            match waiter.tx.send(Handoff::Resource(entry, permit)) {
                Ok(()) => return None,
                Err(Handoff::Resource(returned, permit)) => {
                    st.counts.check_in(permit);
                    entry = returned;
                }
                Err(_) => unreachable!("send returns the value it was given"),
            }
        }
        let mut retired = None;
        if fresh
            && st.replacing > 0
            && let Some(position) = st.idle.iter().position(|i| i.replacing)
        {
            retired = st.idle.remove(position).map(|i| i.entry);
            st.replacing -= 1;
        }
        if retired.is_some() || st.idle.len() < self.keep_cap(st) {
            let refresh_at = self.refresh_at(&entry);
            if let (Some(at), Some(planned)) = (refresh_at, st.next_maintenance)
                && at < planned
            {
                // The maintainer sleeps until `planned`; wake it so this resource is
                // replaced before it expires.
                self.maintainer_wake.notify_one();
            }
            st.idle.push_back(IdleEntry {
                entry,
                refresh_at,
                replacing: false,
            });
            if st.idle.len() >= self.config.warm_target {
                st.ever_ready = true;
            }
            return retired.map(|retired| st.begin_close(retired.resource));
        }
        Some(st.begin_close(entry.resource))
    }

    /// When the maintainer should start replacing this idle resource: `lead` + its jitter
    /// before the earlier of its age and idle limits. Reads the clock only when a limit is
    /// configured, so pools without limits keep the return path clock-free.
    pub(crate) fn refresh_at(&self, entry: &Entry<M::Resource>) -> Option<Instant> {
        if self.config.max_age.is_none() && self.config.max_idle.is_none() {
            return None;
        }
        let now = Instant::now();
        let by_age = self.config.max_age.map(|age| entry.created_at + age);
        let by_idle = self.config.max_idle.map(|idle| now + idle);
        let expires = match (by_age, by_idle) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let lead = self.config.refresh_lead + entry.jitter;
        Some(expires.checked_sub(lead).unwrap_or(now).max(now))
    }

    /// A slot was freed (a resource closed or a create failed): let the oldest caller that
    /// is waiting for room create its own resource.
    pub(crate) fn slot_freed(&self, st: &mut State<M::Resource>) {
        if st.closed {
            return;
        }
        while st.live() < self.config.max_size {
            let Some(position) = st
                .waiters
                .iter()
                .position(|w| w.wants == Wants::ResourceOrSlot)
            else {
                return;
            };
            let Some(waiter) = st.waiters.remove(position) else {
                return;
            };
            let permit = st.counts.start_create(false);
            match waiter.tx.send(Handoff::Slot(permit)) {
                Ok(()) => return,
                Err(Handoff::Slot(permit)) => st.counts.end_create(permit),
                Err(_) => unreachable!("send returns the value it was given"),
            }
        }
    }

    /// Gives back a resource that was checked out by a plain acquire.
    pub(crate) fn return_entry(self: &Arc<Self>, entry: Entry<M::Resource>, permit: CheckedOut) {
        let ready = self.usable(&entry);
        let mut st = self.lock();
        st.counts.check_in(permit);
        self.give_back(st, entry, ready);
    }

    /// Puts back a resource its holder has just stopped counting (under `st`): a ready one
    /// is placed (and closed if surplus), any other is closed and its slot freed. The lock
    /// is released before closing.
    pub(crate) fn give_back(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, State<M::Resource>>,
        entry: Entry<M::Resource>,
        ready: bool,
    ) {
        let to_close = if ready {
            self.place(&mut st, entry, Origin::Returned)
        } else {
            Some(st.begin_close(entry.resource))
        };
        drop(st);
        if let Some(closing) = to_close {
            self.close(closing);
        }
    }

    /// Whether a resource may be handed out or kept: within `max_age` and ready by the
    /// manager's word. The one check every hand-out and return path uses.
    pub(crate) fn usable(&self, entry: &Entry<M::Resource>) -> bool {
        !self.past_max_age(entry) && self.manager.is_ready(&entry.resource)
    }

    /// Counts a hand-out in its tier and, for sampled acquires, its latency.
    pub(crate) fn record_hand_out(&self, tier: Tier, started: Option<Instant>) {
        self.stats.record_allocation(tier);
        if let Some(started) = started {
            self.stats.record_latency(tier, started.elapsed());
        }
    }

    /// Closes a resource its holder gives up: it leaves the holder's count and enters
    /// `closing` in one step, so `max_size` never sees a gap.
    pub(crate) fn discard(self: &Arc<Self>, entry: Entry<M::Resource>, holder: Holder) {
        let closing = {
            let mut st = self.lock();
            match holder {
                Holder::CheckedOut(permit) => st.counts.check_in(permit),
                Holder::Session(permit) => st.counts.undedicate(permit),
            }
            st.begin_close(entry.resource)
        };
        self.close(closing);
    }

    /// Passes a resource to `Manager::close` in a tracked task, so the caller (often a
    /// guard's `drop`) never blocks. Its slot is freed when the close finishes, because
    /// until then the backend still counts the connection. Outside a runtime the resource
    /// can only be dropped.
    pub(crate) fn close(self: &Arc<Self>, closing: Closing<M::Resource>) {
        let Closing { resource, permit } = closing;
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::debug!(pool = %self.config.name, "no runtime: dropping a resource unclosed");
            drop(resource);
            self.close_finished(permit);
            return;
        }
        // Completed or cut off, the close ends the same way: the backend no longer sees
        // the resource (a dropped resource closes its socket).
        let closing = InFlight::new(self, permit, Self::close_finished);
        let inner = self.clone();
        self.tasks.spawn(async move {
            inner.manager.close(resource).await;
            drop(closing);
        });
    }

    /// A close finished: its slot is free for a waiting caller or a refill.
    pub(crate) fn close_finished(&self, permit: ClosePermit) {
        self.stats.closed_total.fetch_add(1, Relaxed);
        let mut st = self.lock();
        st.counts.end_close(permit);
        self.slot_freed(&mut st);
        let refill_wanted = !st.closed && st.idle.len() < st.warm_target;
        drop(st);
        if refill_wanted && self.config.background_warmup {
            self.maintainer_wake.notify_one();
        }
    }

    /// Marks the pool closed and closes everything not in a caller's hands: idle resources,
    /// parked session resources; wakes waiters with `Closed`. Synchronous so that dropping
    /// the last handle can do it too.
    pub(crate) fn close_everything_now(self: &Arc<Self>) {
        let (idle, waiters) = {
            let mut st = self.lock();
            st.closed = true;
            self.closed.store(true, Release);
            st.replacing = 0;
            let idle: Vec<_> = std::mem::take(&mut st.idle)
                .into_iter()
                .map(|i| st.begin_close(i.entry.resource))
                .collect();
            let waiters: Vec<_> = st.waiters.drain(..).collect();
            (idle, waiters)
        };
        for waiter in waiters {
            let _ = waiter.tx.send(Handoff::Closed);
        }
        for closing in idle {
            self.close(closing);
        }
        self.close_sessions();
    }

    pub(crate) fn counts(&self) -> PoolCounts {
        let mut counts = {
            let st = self.lock();
            PoolCounts {
                idle: st.idle.len(),
                in_use: st.counts.checked_out() + st.counts.dedicated(),
                dedicated: st.counts.dedicated(),
                creating: st.counts.creating(),
                closing: st.counts.closing(),
                waiting: st.waiters.len(),
                size: st.live(),
                sessions: 0,
            }
        };
        counts.sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        counts
    }

    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        let (gauges, last_error, targets) = {
            let st = self.lock();
            (
                (
                    st.ever_ready && !st.closed,
                    // Only what could be handed out now: a resource the server closed
                    // waits in the idle set until the maintainer's next pass.
                    st.idle.iter().filter(|i| self.usable(&i.entry)).count(),
                    st.live(),
                    st.counts.checked_out() + st.counts.dedicated(),
                    st.counts.dedicated(),
                    st.waiters.len(),
                    st.counts.creating(),
                    st.counts.closing(),
                ),
                st.last_error.clone(),
                (st.warm_target, st.target_reason),
            )
        };
        let (warm_target, target_reason) = targets;
        let (ready, idle, size, in_use, dedicated, waiting, creating, closing) = gauges;
        let active_sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let allocation = |tier: Tier| self.stats.allocations[tier.index()].load(Relaxed);
        let latency = |tier: Tier| {
            let histogram = &self.stats.latency[tier.index()];
            let micros = |q| histogram.quantile(q).map(|d| d.as_nanos() as f64 / 1000.0);
            LatencySummary {
                samples: histogram.count(),
                p50_us: micros(0.5),
                p99_us: micros(0.99),
            }
        };
        let (dedicated_n, warm_n, cold_n) = (
            allocation(Tier::Dedicated),
            allocation(Tier::Warm),
            allocation(Tier::Cold),
        );
        PoolSnapshot {
            name: self.config.name.clone(),
            ready,
            warm_pool_size: idle,
            warm_pool_target: warm_target,
            warm_target_floor: self.config.warm_target,
            warm_target_reason: target_reason,
            create_latency_ms: self
                .estimator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .create_latency()
                .map(|d| d.as_secs_f64() * 1000.0),
            waited_total: self.stats.waited_total.load(Relaxed),
            wait_latency: {
                let histogram = &self.stats.wait_latency;
                let micros = |q| histogram.quantile(q).map(|d| d.as_nanos() as f64 / 1000.0);
                LatencySummary {
                    samples: histogram.count(),
                    p50_us: micros(0.5),
                    p99_us: micros(0.99),
                }
            },
            session_awareness: self.config.session_awareness,
            active_sessions,
            background_warmup: self.config.background_warmup,
            allocations_total: dedicated_n + warm_n + cold_n,
            allocations_dedicated: dedicated_n,
            allocations_warm: warm_n,
            allocations_cold: cold_n,
            warmup_cycles: self.stats.warmup_cycles.load(Relaxed),
            reclaims_total: self.stats.reclaims_total.load(Relaxed),
            warmup_failures: self.stats.warmup_failures.load(Relaxed),
            max_size: self.config.max_size,
            size,
            in_use,
            dedicated,
            waiting,
            creating,
            closing,
            created_total: self.stats.created_total.load(Relaxed),
            closed_total: self.stats.closed_total.load(Relaxed),
            create_failures: self.stats.create_failures.load(Relaxed),
            last_error,
            acquire_latency: TierLatencies {
                dedicated: latency(Tier::Dedicated),
                warm: latency(Tier::Warm),
                cold: latency(Tier::Cold),
            },
        }
    }

    /// Whether a resource outlived `max_age` (reads the clock only when `max_age` is set).
    pub(crate) fn past_max_age(&self, entry: &Entry<M::Resource>) -> bool {
        self.config
            .max_age
            .is_some_and(|age| entry.created_at.elapsed() >= age)
    }
}
