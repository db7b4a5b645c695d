//! The pool: idle set, waiters, sessions, and the create / return / discard paths.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{PoolBuilder, PoolConfig};
use crate::error::{PoolError, TimeoutDetails};
use crate::guard::Pooled;
use crate::manager::Manager;
use crate::metrics::Stats;
use crate::session::SessionHandle;
use crate::session::SessionSlot;
use crate::snapshot::{LatencySummary, PoolCounts, PoolSnapshot, TierLatencies};
use crate::tier::Tier;

/// WARM and DEDICATED acquires are timed one in this many: reading the clock twice would
/// cost more than the acquire itself. COLD acquires are always timed.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

/// What an acquire's locked step decided, acted on after the lock is released.
enum TakeStep<M: Manager> {
    /// Took an idle entry; the flag says whether the idle set fell below target.
    Idle(Entry<M::Resource>, bool),
    /// Nothing idle: queued; the flag says whether this caller may create.
    Slow(WaiterGuard<M>, bool),
}

/// What a caller's own create delivers.
type Delivery<M> = Result<Entry<<M as Manager>::Resource>, PoolError<<M as Manager>::Error>>;

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

/// A resource counted in `State::closing`, on its way to `Manager::close`. Made only by
/// [`State::begin_close`]; consumed only by [`Inner::close`], which uncounts it when the
/// close has finished.
#[must_use = "a counted resource must be passed to Inner::close"]
pub(crate) struct Closing<R>(R);

/// Who a new resource is created for, which decides how it is warmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateFor {
    /// A caller waiting for it (COLD): warmed with `Manager::warm_for_caller`.
    Caller,
    /// The idle set (refill or refresh): warmed with `Manager::warm`.
    IdleSet,
}

/// Which count a resource leaves when its holder gives it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Handed out by a plain acquire (`State::checked_out`).
    CheckedOut,
    /// Bound to a session (`State::dedicated`).
    Session,
}

/// An idle resource and the moment the maintainer should replace it.
#[derive(Debug)]
struct IdleEntry<R> {
    entry: Entry<R>,
    /// `None` when neither `max_age` nor `max_idle` is set.
    refresh_at: Option<Instant>,
    /// A replacement is being created; the first fresh resource that arrives retires this one.
    replacing: bool,
}

/// What a returning resource, a finished create or a freed slot gives a waiting caller.
#[derive(Debug)]
enum Handoff<R> {
    /// A ready resource, already counted as checked out for the receiver.
    Resource(Entry<R>),
    /// Room to create one: already counted in `creating` for the receiver.
    Slot,
    /// The pool shut down.
    Closed,
    /// The caller's acquire timeout passed (sent by the reaper).
    TimedOut,
}

#[derive(Debug)]
struct Waiter<R> {
    id: u64,
    tx: oneshot::Sender<Handoff<R>>,
    /// False for a caller already creating its own resource: it races for a returned
    /// resource but must not be handed a second slot.
    accepts_slot: bool,
    /// When the reaper answers this waiter with `TimedOut`; `None` waits forever.
    deadline: Option<Instant>,
}

/// Everything guarded by the pool's one state lock. Held only for a few pointer moves,
/// never across an await.
#[derive(Debug)]
pub(crate) struct State<R> {
    idle: VecDeque<IdleEntry<R>>,
    /// Resources being created, for a caller or for the idle set.
    pub(crate) creating: usize,
    /// The part of `creating` that will go to the idle set (refill and refresh).
    pub(crate) refilling: usize,
    /// Idle entries marked `replacing`.
    pub(crate) replacing: usize,
    /// The fewest idle resources seen since the maintainer's last housekeeping pass: what
    /// stayed above the target that whole time is surplus nobody needed.
    pub(crate) idle_low_water: usize,
    /// Session resources taken back for waiting callers whose reset is under way (still
    /// counted in `dedicated` until it finishes).
    pub(crate) reclaiming: usize,
    /// Resources handed out by plain acquires.
    pub(crate) checked_out: usize,
    /// Resources bound to sessions, in use or parked.
    pub(crate) dedicated: usize,
    /// Resources passed to `Manager::close` whose close has not finished: the backend still
    /// sees them, so they still count against `max_size`.
    pub(crate) closing: usize,
    /// Callers waiting, oldest first: FIFO fairness.
    waiters: VecDeque<Waiter<R>>,
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
    fn live(&self) -> usize {
        self.idle.len() + self.creating + self.checked_out + self.dedicated + self.closing
    }

    /// Counts a resource as closing and wraps it in the only type [`Inner::close`] accepts,
    /// so no close can skip the count that keeps its slot taken until the close finishes.
    pub(crate) fn begin_close(&mut self, resource: R) -> Closing<R> {
        self.closing += 1;
        Closing(resource)
    }

    /// Callers waiting for room (not those racing their own create).
    pub(crate) fn slot_waiters(&self) -> usize {
        self.waiters.iter().filter(|w| w.accepts_slot).count()
    }

    fn has_slot_waiter(&self) -> bool {
        self.waiters.iter().any(|w| w.accepts_slot)
    }
}

/// The shared heart of a pool. Guards and background tasks hold an `Arc` of it; the public
/// [`Pool`] handle holds it through [`Handle`], whose drop stops the maintainer.
pub(crate) struct Inner<M: Manager> {
    pub manager: M,
    pub config: PoolConfig,
    state: Mutex<State<M::Resource>>,
    pub sessions: Mutex<SessionMap<M::Resource>>,
    /// Mirrors `State::closed` so a session guard's drop can check it without the lock.
    pub closed: AtomicBool,
    /// Orders session uses, for reclaiming the least recently used parked session.
    pub use_counter: AtomicU64,
    /// Set when a caller queued on a full pool that may reclaim session resources; a
    /// session turn that ends then looks for a resource to reclaim. Cleared by a reclaim
    /// pass that finds no caller left to serve.
    pub reclaim_wanted: AtomicBool,
    /// The acquire-timeout reaper is spawned on the first timed wait, not at build time,
    /// so pools that never wait (and builds outside a runtime) have no such task.
    reaper_started: AtomicBool,
    /// Wakes the reaper when a waiter's deadline is earlier than its planned wake-up.
    /// Shared with the reaper task, which waits on it holding only a `Weak` to the pool.
    reaper_wake: Arc<Notify>,
    pub stats: Stats,
    /// Every close, create and the maintainer run here, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled by shutdown or by dropping the last [`Pool`] handle.
    pub stop: CancellationToken,
    /// Wakes the maintainer early: the idle set fell below target, or a backoff changed.
    /// Shared with the maintainer task, which waits on it holding only a `Weak` to the pool.
    pub maintainer_wake: Arc<Notify>,
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
                creating: 0,
                refilling: 0,
                replacing: 0,
                idle_low_water: 0,
                reclaiming: 0,
                checked_out: 0,
                dedicated: 0,
                closing: 0,
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
            reaper_started: AtomicBool::new(false),
            reaper_wake: Arc::new(Notify::new()),
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
            let batch = inner.start_refill(true);
            if batch.is_empty() {
                let (closed, reached, refilling) = {
                    let st = inner.lock();
                    (
                        st.closed,
                        st.idle.len() >= inner.config.warm_target,
                        st.refilling > 0,
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
        if let Some(entry) = inner.try_take_idle(started) {
            return Ok(Pooled::plain(inner.clone(), entry, Tier::Warm));
        }
        let (entry, tier) = Box::pin(inner.take(started, timeout)).await?;
        Ok(Pooled::plain(inner.clone(), entry, tier))
    }

    /// Takes the session's own resource (DEDICATED), binding one on first use. Concurrent
    /// callers for one session are served one at a time with the same resource, never a
    /// duplicate; a caller that finds the session's resource in use waits for it at most
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
    ) -> Option<Entry<M::Resource>> {
        loop {
            let (entry, below_target) = {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                self.pop_idle(&mut st)?
            };
            if let Some(entry) = self.hand_out_idle(entry, below_target, started) {
                return Some(entry);
            }
        }
    }

    /// Takes the oldest idle entry and counts it as checked out; the flag says whether the
    /// idle set fell below target.
    fn pop_idle(&self, st: &mut State<M::Resource>) -> Option<(Entry<M::Resource>, bool)> {
        let idle = st.idle.pop_front()?;
        if idle.replacing {
            st.replacing -= 1;
        }
        st.checked_out += 1;
        st.idle_low_water = st.idle_low_water.min(st.idle.len());
        Some((idle.entry, st.idle.len() < self.config.warm_target))
    }

    /// How many idle resources the pool keeps before closing a returned or refilled one.
    /// With a maintainer, up to twice the target: a resource that comes back while a refill
    /// is in flight is worth more than closing it and paying a connect moments later, and
    /// the maintainer trims surplus nobody dips into (see `trim_surplus`). Without one,
    /// nothing would trim it, so the target is the cap.
    fn keep_cap(&self) -> usize {
        let target = self.config.warm_target;
        if self.config.background_warmup {
            target.saturating_mul(2)
        } else {
            target
        }
    }

    /// Closes idle resources that stayed above the target for a whole housekeeping period
    /// (the idle set never dipped below `target + surplus` since the last pass), oldest
    /// first, and starts a new period.
    pub(crate) fn trim_surplus(self: &Arc<Self>) {
        let mut surplus = Vec::new();
        {
            let mut st = self.lock();
            let unused = st.idle_low_water.saturating_sub(self.config.warm_target);
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

    /// Finishes taking an idle entry (already counted as checked out): wakes the maintainer
    /// if the idle set fell below target, then hands the entry out if it is still ready, or
    /// closes it and returns `None` so the caller tries again.
    fn hand_out_idle(
        self: &Arc<Self>,
        entry: Entry<M::Resource>,
        below_target: bool,
        started: Option<Instant>,
    ) -> Option<Entry<M::Resource>> {
        if below_target && self.config.background_warmup {
            self.maintainer_wake.notify_one();
        }
        if self.usable(&entry) {
            self.record_hand_out(Tier::Warm, started);
            return Some(entry);
        }
        self.discard(entry, Holder::CheckedOut);
        None
    }

    /// The plain acquire: idle set, else create (racing returns), else wait.
    pub(crate) async fn take(
        self: &Arc<Self>,
        started: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<(Entry<M::Resource>, Tier), PoolError<M::Error>> {
        loop {
            let mut slow_started = started;
            let step = {
                let mut st = self.lock();
                if st.closed {
                    return Err(PoolError::Closed);
                }
                match self.pop_idle(&mut st) {
                    Some((entry, below_target)) => TakeStep::Idle(entry, below_target),
                    None => {
                        // Nothing idle: the slow path, always timed.
                        let now = *slow_started.get_or_insert_with(Instant::now);
                        let deadline = timeout.map(|t| now + t);
                        let can_create = st.live() < self.config.max_size;
                        if can_create {
                            st.creating += 1;
                        } else if self.config.reclaim_idle_sessions {
                            // Checked (outside the lock) once this caller is queued.
                            self.reclaim_wanted.store(true, SeqCst);
                        }
                        TakeStep::Slow(
                            self.register_waiter(&mut st, !can_create, deadline),
                            can_create,
                        )
                    }
                }
            };
            let (waiter, can_create) = match step {
                TakeStep::Idle(entry, below_target) => {
                    match self.hand_out_idle(entry, below_target, started) {
                        Some(entry) => return Ok((entry, Tier::Warm)),
                        None => continue,
                    }
                }
                TakeStep::Slow(waiter, can_create) => (waiter, can_create),
            };
            if !can_create && self.config.reclaim_idle_sessions {
                self.reclaim_for_waiters();
            }
            let started = slow_started.unwrap_or_else(Instant::now);
            let deadline = timeout.map(|t| started + t);
            let waited = timeout.unwrap_or_default();
            let result = if can_create {
                self.create_racing(waiter, waited).await
            } else {
                self.wait(waiter, deadline, waited).await
            };
            if let Ok((_, tier)) = &result {
                self.record_hand_out(*tier, Some(started));
            }
            return result;
        }
    }

    fn register_waiter(
        self: &Arc<Self>,
        st: &mut State<M::Resource>,
        accepts_slot: bool,
        deadline: Option<Instant>,
    ) -> WaiterGuard<M> {
        let (tx, rx) = oneshot::channel();
        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        st.waiters.push_back(Waiter {
            id,
            tx,
            accepts_slot,
            deadline,
        });
        if let Some(deadline) = deadline
            && st.reaper_next.is_none_or(|planned| deadline < planned)
        {
            // One reaper per pool enforces every waiter's timeout: FIFO waiters share one
            // timeout length, so their deadlines arrive in order and a single timer serves
            // them all, instead of a timer registration per wait.
            st.reaper_next = Some(deadline);
            self.start_reaper();
            self.reaper_wake.notify_one();
        }
        WaiterGuard {
            inner: self.clone(),
            id,
            rx: Some(rx),
        }
    }

    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Relaxed) {
            return;
        }
        // The task holds a strong reference only while it expires waiters, never while it
        // sleeps, so it never keeps a dropped pool alive.
        let weak = Arc::downgrade(self);
        let stop = self.stop.clone();
        let wake = self.reaper_wake.clone();
        self.tasks.spawn(async move {
            loop {
                let next = {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    inner.expire_waiters(Instant::now())
                };
                let sleep = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = wake.notified() => {}
                    () = sleep => {}
                }
            }
        });
    }

    /// Answers every waiter whose deadline has passed with `TimedOut` and returns the
    /// earliest remaining deadline (recorded as the reaper's next wake-up).
    fn expire_waiters(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let mut next = None::<Instant>;
        let mut index = 0;
        while index < st.waiters.len() {
            match st.waiters[index].deadline {
                Some(deadline) if deadline <= now => {
                    if let Some(waiter) = st.waiters.remove(index) {
                        let _ = waiter.tx.send(Handoff::TimedOut);
                    }
                }
                Some(deadline) => {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    index += 1;
                }
                None => index += 1,
            }
        }
        st.reaper_next = next;
        next
    }

    /// Waits for a returned resource or a freed slot, in FIFO order.
    async fn wait(
        self: &Arc<Self>,
        mut waiter: WaiterGuard<M>,
        deadline: Option<Instant>,
        waited: Duration,
    ) -> Result<(Entry<M::Resource>, Tier), PoolError<M::Error>> {
        let received = waiter.recv().await;
        match received {
            Handoff::Resource(entry) => Ok((entry, Tier::Warm)),
            Handoff::Slot => {
                // We now own a slot, already counted in `creating`: create, still racing
                // resources that come back meanwhile.
                let racer = {
                    let mut st = self.lock();
                    self.register_waiter(&mut st, false, deadline)
                };
                Box::pin(self.create_racing(racer, waited)).await
            }
            Handoff::Closed => Err(PoolError::Closed),
            Handoff::TimedOut => Err(self.timeout_error(waited)),
        }
    }

    /// Creates a resource for this caller (already counted in `creating`) in a tracked task,
    /// and takes whichever comes first: the new resource (COLD) or one returned by another
    /// caller (WARM). The loser goes to the idle set. Dropping this future loses nothing: the
    /// task finishes and places its resource.
    async fn create_racing(
        self: &Arc<Self>,
        mut waiter: WaiterGuard<M>,
        waited: Duration,
    ) -> Result<(Entry<M::Resource>, Tier), PoolError<M::Error>> {
        let created = self.spawn_create();
        let mut created = DeliveryGuard {
            inner: self.clone(),
            rx: Some(created),
        };
        tokio::select! {
            biased;
            outcome = created.recv() => {
                drop(waiter);
                match outcome {
                    Some(Ok(entry)) => Ok((entry, Tier::Cold)),
                    Some(Err(error)) => Err(error),
                    None => Err(PoolError::Closed),
                }
            }
            received = waiter.recv() => match received {
                Handoff::Resource(entry) => Ok((entry, Tier::Warm)),
                Handoff::TimedOut => Err(self.timeout_error(waited)),
                // A racer never accepts slots; a stray one cannot happen, treat it as closed.
                Handoff::Slot | Handoff::Closed => Err(PoolError::Closed),
            },
        }
    }

    fn timeout_error(&self, waited: Duration) -> PoolError<M::Error> {
        let st = self.lock();
        PoolError::Timeout(Box::new(TimeoutDetails {
            pool: self.config.name.clone(),
            waited,
            closing: st.closing,
            size: st.live(),
            max_size: self.config.max_size,
            idle: st.idle.len(),
            in_use: st.checked_out + st.dedicated,
            creating: st.creating,
            // The reaper already took the timed-out caller off the queue; count it.
            waiting: st.waiters.len() + 1,
            last_error: st.last_error.clone(),
        }))
    }

    /// Starts background creates toward the idle target, honouring `create_concurrency`,
    /// `max_size` and the failure backoff (unless `ignore_backoff`). Returns a receiver per
    /// create so [`Pool::prepare`] can wait for them.
    pub(crate) fn start_refill(
        self: &Arc<Self>,
        ignore_backoff: bool,
    ) -> Vec<oneshot::Receiver<Result<(), PoolError<M::Error>>>> {
        let mut started = Vec::new();
        let mut st = self.lock();
        if st.closed {
            return started;
        }
        if !ignore_backoff
            && let Some(until) = st.backoff_until
            && Instant::now() < until
        {
            return started;
        }
        loop {
            let effective_idle = st.idle.len() - st.replacing;
            let wanted = self.config.warm_target.saturating_sub(effective_idle);
            let deficit = wanted.saturating_sub(st.refilling);
            // Entries being replaced do not count toward the target, so their replacements
            // are part of the deficit.
            if deficit == 0
                || st.refilling >= self.config.create_concurrency
                || st.live() >= self.config.max_size
                || st.has_slot_waiter()
            {
                break;
            }
            st.creating += 1;
            st.refilling += 1;
            let (tx, rx) = oneshot::channel();
            started.push(rx);
            self.spawn_refill(tx);
        }
        started
    }

    fn spawn_refill(self: &Arc<Self>, done: oneshot::Sender<Result<(), PoolError<M::Error>>>) {
        let inner = self.clone();
        self.tasks.spawn(async move {
            let outcome = inner.create_and_warm(CreateFor::IdleSet).await;
            let reported = match outcome {
                Ok(entry) => {
                    let mut st = inner.lock();
                    st.creating -= 1;
                    st.refilling -= 1;
                    st.failure_streak = 0;
                    st.backoff_until = None;
                    let surplus = inner.place(&mut st, entry, true);
                    drop(st);
                    if let Some(surplus) = surplus {
                        inner.close(surplus);
                    }
                    if inner.config.background_warmup {
                        // Keep the pipeline full: the next refill starts as soon as this one
                        // lands, still bounded by `create_concurrency`.
                        let _ = inner.start_refill(false);
                    }
                    Ok(())
                }
                Err(error) => {
                    let mut st = inner.lock();
                    st.creating -= 1;
                    st.refilling -= 1;
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

    /// Exponential backoff with "equal jitter": half fixed, half random, so retries from
    /// many pools never synchronise yet never retry immediately.
    fn backoff_delay(&self, streak: u32) -> Duration {
        let exponent = streak.saturating_sub(1).min(20);
        let full = self
            .config
            .backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.config.backoff_max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    fn spawn_create(self: &Arc<Self>) -> oneshot::Receiver<Delivery<M>> {
        let (tx, rx) = oneshot::channel();
        let inner = self.clone();
        self.tasks.spawn(async move {
            match inner.create_and_warm(CreateFor::Caller).await {
                Ok(entry) => {
                    {
                        let mut st = inner.lock();
                        st.creating -= 1;
                        st.checked_out += 1;
                    }
                    if let Err(Ok(entry)) = tx.send(Ok(entry)) {
                        // The caller gave up (timed out, was cancelled, or took a returned
                        // resource): the new resource is the race's loser and is placed.
                        inner.return_entry(entry);
                    }
                }
                Err(error) => {
                    {
                        let mut st = inner.lock();
                        st.creating -= 1;
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
    async fn create_and_warm(
        self: &Arc<Self>,
        purpose: CreateFor,
    ) -> Result<Entry<M::Resource>, PoolError<M::Error>> {
        let timeout = self.config.create_timeout;
        let deadline = Instant::now() + timeout;
        let mut resource = match tokio::time::timeout_at(deadline, self.manager.create()).await {
            Ok(Ok(resource)) => resource,
            Ok(Err(error)) => return Err(self.record_create_failure(PoolError::Create(error))),
            Err(_) => return Err(self.record_create_failure(PoolError::CreateTimeout(timeout))),
        };
        self.stats.created_total.fetch_add(1, Relaxed);
        let warming = async {
            match purpose {
                CreateFor::Caller => self.manager.warm_for_caller(&mut resource).await,
                CreateFor::IdleSet => self.manager.warm(&mut resource).await,
            }
        };
        let warmed = tokio::time::timeout_at(deadline, warming).await;
        let error = match warmed {
            Ok(Ok(())) => {
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

    fn record_create_failure(&self, error: PoolError<M::Error>) -> PoolError<M::Error> {
        self.stats.create_failures.fetch_add(1, Relaxed);
        self.lock().last_error = Some(error.to_string());
        error
    }

    /// Hands a ready resource that no one holds to the first waiter, else keeps it idle if
    /// the idle set is below target (or it replaces an expiring idle resource), else returns
    /// it for the caller to close outside the lock.
    pub(crate) fn place(
        &self,
        st: &mut State<M::Resource>,
        mut entry: Entry<M::Resource>,
        fresh: bool,
    ) -> Option<Closing<M::Resource>> {
        if st.closed {
            return Some(st.begin_close(entry.resource));
        }
        // A fresh resource from a refill skips callers racing their own create: handing it
        // over would only make their create the loser and the refill look short, starting
        // another create. Returned resources go to the first waiter of any kind.
        let mut skipped = 0;
        while skipped < st.waiters.len() {
            if fresh && !st.waiters[skipped].accepts_slot {
                skipped += 1;
                continue;
            }
            let Some(waiter) = st.waiters.remove(skipped) else {
                break;
            };
            st.checked_out += 1;
            match waiter.tx.send(Handoff::Resource(entry)) {
                Ok(()) => return None,
                Err(Handoff::Resource(returned)) => {
                    st.checked_out -= 1;
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
        if retired.is_some() || st.idle.len() < self.keep_cap() {
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
    fn refresh_at(&self, entry: &Entry<M::Resource>) -> Option<Instant> {
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
            let Some(position) = st.waiters.iter().position(|w| w.accepts_slot) else {
                return;
            };
            let Some(waiter) = st.waiters.remove(position) else {
                return;
            };
            st.creating += 1;
            if waiter.tx.send(Handoff::Slot).is_ok() {
                return;
            }
            st.creating -= 1;
        }
    }

    /// Gives back a resource that was checked out by a plain acquire.
    pub(crate) fn return_entry(self: &Arc<Self>, entry: Entry<M::Resource>) {
        let ready = self.usable(&entry);
        let mut st = self.lock();
        st.checked_out -= 1;
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
            self.place(&mut st, entry, false)
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
                Holder::CheckedOut => st.checked_out -= 1,
                Holder::Session => st.dedicated -= 1,
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
        let Closing(resource) = closing;
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::debug!(pool = %self.config.name, "no runtime: dropping a resource unclosed");
            drop(resource);
            self.close_finished();
            return;
        }
        let inner = self.clone();
        self.tasks.spawn(async move {
            inner.manager.close(resource).await;
            inner.close_finished();
        });
    }

    /// A close finished: its slot is free for a waiting caller or a refill.
    fn close_finished(&self) {
        self.stats.closed_total.fetch_add(1, Relaxed);
        let mut st = self.lock();
        st.closing -= 1;
        self.slot_freed(&mut st);
        let refill_wanted = !st.closed && st.idle.len() < self.config.warm_target;
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
        let slots: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            // A session in use is closed by its guard's drop, which sees the pool closed.
            if let Ok(mut state) = slot.try_lock_owned() {
                state.evicted = true;
                if let Some(entry) = state.entry.take() {
                    self.discard(entry, Holder::Session);
                }
            }
        }
    }

    pub(crate) fn counts(&self) -> PoolCounts {
        let mut counts = {
            let st = self.lock();
            PoolCounts {
                idle: st.idle.len(),
                in_use: st.checked_out + st.dedicated,
                dedicated: st.dedicated,
                creating: st.creating,
                closing: st.closing,
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
        let (gauges, last_error) = {
            let st = self.lock();
            (
                (
                    st.ever_ready && !st.closed,
                    // Only what could be handed out now: a resource the server closed
                    // waits in the idle set until the maintainer's next pass.
                    st.idle.iter().filter(|i| self.usable(&i.entry)).count(),
                    st.live(),
                    st.checked_out + st.dedicated,
                    st.dedicated,
                    st.waiters.len(),
                    st.creating,
                    st.closing,
                ),
                st.last_error.clone(),
            )
        };
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
            warm_pool_target: self.config.warm_target,
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

    /// The moment the failure backoff ends, if one is running.
    pub(crate) fn backoff_until(&self) -> Option<Instant> {
        self.lock().backoff_until
    }

    /// Whether a resource outlived `max_age` (reads the clock only when `max_age` is set).
    pub(crate) fn past_max_age(&self, entry: &Entry<M::Resource>) -> bool {
        self.config
            .max_age
            .is_some_and(|age| entry.created_at.elapsed() >= age)
    }

    /// Records when the maintainer will wake next (see `State::next_maintenance`).
    pub(crate) fn plan_maintenance(&self, at: Instant) {
        self.lock().next_maintenance = Some(at);
    }
}

/// A caller's place in the waiter queue. Dropping it (the acquire future was cancelled or
/// timed out) leaves the queue, and anything handed over in the meantime goes back to the
/// pool: this is what makes waiting cancellation-safe.
struct WaiterGuard<M: Manager> {
    inner: Arc<Inner<M>>,
    id: u64,
    rx: Option<oneshot::Receiver<Handoff<M::Resource>>>,
}

impl<M: Manager> WaiterGuard<M> {
    async fn recv(&mut self) -> Handoff<M::Resource> {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        let received = rx.await.unwrap_or(Handoff::Closed);
        self.rx = None;
        received
    }
}

impl<M: Manager> Drop for WaiterGuard<M> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        {
            let mut st = self.inner.lock();
            if let Some(position) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(position);
            }
        }
        // Senders act under the state lock, which we just held: after it, nothing new
        // arrives, and whatever arrived before is still in the channel.
        rx.close();
        match rx.try_recv() {
            Ok(Handoff::Resource(entry)) => self.inner.return_entry(entry),
            Ok(Handoff::Slot) => {
                let mut st = self.inner.lock();
                st.creating -= 1;
                self.inner.slot_freed(&mut st);
            }
            Ok(Handoff::Closed | Handoff::TimedOut) | Err(_) => {}
        }
    }
}

/// The receiving end of a caller's own create. Dropping it before the create finished is
/// fine (the task places the resource); dropping it after a resource arrived but before it
/// was taken gives that resource back.
struct DeliveryGuard<M: Manager> {
    inner: Arc<Inner<M>>,
    rx: Option<oneshot::Receiver<Delivery<M>>>,
}

impl<M: Manager> DeliveryGuard<M> {
    async fn recv(&mut self) -> Option<Delivery<M>> {
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
            if let Ok(Ok(entry)) = rx.try_recv() {
                self.inner.return_entry(entry);
            }
        }
    }
}
