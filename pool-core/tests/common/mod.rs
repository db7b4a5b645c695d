//! A tiny fake `Manager` shared by the behaviour tests.
//!
//! Every resource gets an `id` (0, 1, 2, … in create order), a shared readiness flag the
//! test can flip, and records whether it was warmed and how often it was reset. The manager
//! counts every call and can be told to be slow (paused tokio time) or to fail.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::{Manager, Pool, PoolSnapshot};
use tokio::time::Instant;

/// The fake backend's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeError(pub String);

impl fmt::Display for FakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FakeError {}

/// A fake connection.
#[derive(Debug)]
pub struct Res {
    /// Unique, in create order.
    pub id: u64,
    /// `warm` succeeded on this resource.
    pub warmed: bool,
    /// How often `reset` ran on it.
    pub resets: u32,
    /// When `create` returned it.
    pub created_at: Instant,
    ready: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
}

impl Res {
    /// Marks the resource (not) ready, as a dropped socket would.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, SeqCst);
    }

    /// Records a use, for the fake's idle expiry.
    pub fn touch(&self) {
        *self.last_used.lock().unwrap() = Instant::now();
    }

    fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap()
    }
}

/// Counters and knobs, shared by every clone of a [`FakeManager`].
#[derive(Debug, Default)]
pub struct FakeState {
    // ---- counters ----
    /// Calls to `create`, successful or not.
    pub create_calls: AtomicUsize,
    /// Successful creates.
    pub created: AtomicUsize,
    /// Failed creates.
    pub create_failures: AtomicUsize,
    /// Calls to `close` that started.
    pub close_calls: AtomicUsize,
    /// Calls to `close` that finished.
    pub closed: AtomicUsize,
    pub warm_calls: AtomicUsize,
    pub warm_failures: AtomicUsize,
    pub reset_calls: AtomicUsize,
    /// `is_ready` answers that were `false`.
    pub not_ready_seen: AtomicUsize,
    /// Creates in progress right now, and the most ever seen at once.
    pub creating_now: AtomicUsize,
    pub max_creating: AtomicUsize,
    /// Warm-ups in progress right now.
    pub warming_now: AtomicUsize,
    next_id: AtomicU64,
    // ---- knobs ----
    create_latency_ms: AtomicU64,
    warm_latency_ms: AtomicU64,
    close_latency_ms: AtomicU64,
    /// Every Nth create call fails (0: never).
    fail_every: AtomicUsize,
    /// The next N create calls fail.
    fail_next: AtomicUsize,
    /// While set, every create fails.
    failing: AtomicBool,
    /// The next N warm calls fail.
    warm_fail_next: AtomicUsize,
    /// While set, every warm fails.
    warm_failing: AtomicBool,
    /// While set, every reset fails.
    reset_failing: AtomicBool,
    /// A resource this old is no longer ready (0: never), like Azure's 10-minute limit.
    expire_after_ms: AtomicU64,
    /// A resource unused (see [`Res::touch`]) this long is no longer ready (0: never).
    idle_expire_after_ms: AtomicU64,
    // ---- records ----
    flags: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    closed_ids: Mutex<Vec<u64>>,
    create_times: Mutex<Vec<Instant>>,
}

/// The fake manager. Cheap to clone; clones share one [`FakeState`].
#[derive(Debug, Clone, Default)]
pub struct FakeManager(pub Arc<FakeState>);

impl std::ops::Deref for FakeManager {
    type Target = FakeState;
    fn deref(&self) -> &FakeState {
        &self.0
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

impl FakeManager {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- builders ----
    pub fn with_create_latency(self, d: Duration) -> Self {
        self.create_latency_ms.store(ms(d), SeqCst);
        self
    }
    pub fn with_warm_latency(self, d: Duration) -> Self {
        self.warm_latency_ms.store(ms(d), SeqCst);
        self
    }
    pub fn with_close_latency(self, d: Duration) -> Self {
        self.close_latency_ms.store(ms(d), SeqCst);
        self
    }
    pub fn with_expiry(self, d: Duration) -> Self {
        self.expire_after_ms.store(ms(d), SeqCst);
        self
    }
    pub fn with_idle_expiry(self, d: Duration) -> Self {
        self.idle_expire_after_ms.store(ms(d), SeqCst);
        self
    }

    // ---- fault knobs ----
    pub fn fail_every(&self, n: usize) {
        self.fail_every.store(n, SeqCst);
    }
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, SeqCst);
    }
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, SeqCst);
    }
    pub fn fail_next_warm(&self, n: usize) {
        self.warm_fail_next.store(n, SeqCst);
    }
    pub fn set_warm_failing(&self, on: bool) {
        self.warm_failing.store(on, SeqCst);
    }
    pub fn set_reset_failing(&self, on: bool) {
        self.reset_failing.store(on, SeqCst);
    }
    pub fn set_close_latency(&self, d: Duration) {
        self.close_latency_ms.store(ms(d), SeqCst);
    }
    pub fn set_create_latency(&self, d: Duration) {
        self.create_latency_ms.store(ms(d), SeqCst);
    }

    /// Flips the readiness of resource `id` (wherever it is: idle, in use, parked).
    pub fn set_ready(&self, id: u64, ready: bool) {
        let flags = self.flags.lock().unwrap();
        flags
            .get(&id)
            .expect("unknown resource id")
            .store(ready, SeqCst);
    }

    // ---- readers ----
    pub fn created(&self) -> usize {
        self.created.load(SeqCst)
    }
    pub fn closed(&self) -> usize {
        self.closed.load(SeqCst)
    }
    pub fn create_calls(&self) -> usize {
        self.create_calls.load(SeqCst)
    }
    pub fn warm_calls(&self) -> usize {
        self.warm_calls.load(SeqCst)
    }
    pub fn reset_calls(&self) -> usize {
        self.reset_calls.load(SeqCst)
    }
    pub fn max_creating(&self) -> usize {
        self.max_creating.load(SeqCst)
    }
    pub fn creating_now(&self) -> usize {
        self.creating_now.load(SeqCst)
    }
    pub fn warming_now(&self) -> usize {
        self.warming_now.load(SeqCst)
    }
    pub fn not_ready_seen(&self) -> usize {
        self.not_ready_seen.load(SeqCst)
    }
    /// Ids passed to `close`, in call order.
    pub fn closed_ids(&self) -> Vec<u64> {
        self.closed_ids.lock().unwrap().clone()
    }
    /// When each `create` call started.
    pub fn create_times(&self) -> Vec<Instant> {
        self.create_times.lock().unwrap().clone()
    }

    fn should_fail_create(&self, call: usize) -> bool {
        if self.failing.load(SeqCst) {
            return true;
        }
        if self
            .fail_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return true;
        }
        let every = self.fail_every.load(SeqCst);
        every > 0 && call.is_multiple_of(every)
    }

    fn should_fail_warm(&self) -> bool {
        self.warm_failing.load(SeqCst)
            || self
                .warm_fail_next
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// Decrements a gauge when dropped, so a cancelled create or warm is still accounted.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn enter(gauge: &'a AtomicUsize, max: Option<&AtomicUsize>) -> Self {
        let now = gauge.fetch_add(1, SeqCst) + 1;
        if let Some(max) = max {
            max.fetch_max(now, SeqCst);
        }
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

async fn pause(latency_ms: u64) {
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    } else {
        tokio::task::yield_now().await;
    }
}

impl Manager for FakeManager {
    type Resource = Res;
    type Error = FakeError;

    async fn create(&self) -> Result<Res, FakeError> {
        let call = self.create_calls.fetch_add(1, SeqCst) + 1;
        self.create_times.lock().unwrap().push(Instant::now());
        let _gauge = Gauge::enter(&self.creating_now, Some(&self.max_creating));
        pause(self.create_latency_ms.load(SeqCst)).await;
        if self.should_fail_create(call) {
            self.create_failures.fetch_add(1, SeqCst);
            return Err(FakeError(format!("connect refused (create #{call})")));
        }
        let id = self.next_id.fetch_add(1, SeqCst);
        let ready = Arc::new(AtomicBool::new(true));
        self.flags.lock().unwrap().insert(id, ready.clone());
        self.created.fetch_add(1, SeqCst);
        let now = Instant::now();
        Ok(Res {
            id,
            warmed: false,
            resets: 0,
            created_at: now,
            ready,
            last_used: Mutex::new(now),
        })
    }

    async fn warm(&self, r: &mut Res) -> Result<(), FakeError> {
        self.warm_calls.fetch_add(1, SeqCst);
        let _gauge = Gauge::enter(&self.warming_now, None);
        let latency = self.warm_latency_ms.load(SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.should_fail_warm() {
            self.warm_failures.fetch_add(1, SeqCst);
            return Err(FakeError(format!("warm-up rejected (resource {})", r.id)));
        }
        r.warmed = true;
        Ok(())
    }

    fn is_ready(&self, r: &Res) -> bool {
        let now = Instant::now();
        let expire = self.expire_after_ms.load(SeqCst);
        let idle_expire = self.idle_expire_after_ms.load(SeqCst);
        let ready = r.ready.load(SeqCst)
            && (expire == 0 || now - r.created_at < Duration::from_millis(expire))
            && (idle_expire == 0 || now - r.last_used() < Duration::from_millis(idle_expire));
        if !ready {
            self.not_ready_seen.fetch_add(1, SeqCst);
        }
        ready
    }

    async fn reset(&self, r: &mut Res) -> Result<(), FakeError> {
        self.reset_calls.fetch_add(1, SeqCst);
        r.resets += 1;
        if self.reset_failing.load(SeqCst) {
            return Err(FakeError("reset failed".into()));
        }
        Ok(())
    }

    async fn close(&self, r: Res) {
        self.close_calls.fetch_add(1, SeqCst);
        self.closed_ids.lock().unwrap().push(r.id);
        let latency = self.close_latency_ms.load(SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        self.closed.fetch_add(1, SeqCst);
    }
}

/// Lets spawned close (and other zero-latency) tasks run without moving the clock.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// `created == closed + live`, from both the pool's and the fake's point of view, after
/// letting pending close tasks run. A resource still being created may or may not have been
/// created yet, so `creating` is the only slack. Also checks that no resource was closed
/// twice. Returns the snapshot it checked.
pub async fn assert_no_leak(pool: &Pool<FakeManager>, fake: &FakeManager) -> PoolSnapshot {
    settle().await;
    let s = pool.snapshot();
    let settled = s.closed_total + (s.size - s.creating) as u64;
    assert!(
        (settled..=settled + s.creating as u64).contains(&s.created_total),
        "pool counters: created != closed + live in {s:#?}"
    );
    let settled = fake.closed() + s.size - s.creating;
    assert!(
        (settled..=settled + s.creating).contains(&fake.created()),
        "fake: created {} != closed {} + live {} (creating {})",
        fake.created(),
        fake.closed(),
        s.size,
        s.creating
    );
    let ids = fake.closed_ids();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a resource was closed twice: {ids:?}"
    );
    s
}

/// Waits (yielding, without moving the clock) until `cond` holds on the pool's snapshot.
pub async fn wait_until(
    pool: &Pool<FakeManager>,
    what: &str,
    cond: impl Fn(&PoolSnapshot) -> bool,
) {
    for _ in 0..1000 {
        if cond(&pool.snapshot()) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "condition never held: {what}; snapshot {:#?}",
        pool.snapshot()
    );
}

pub const MS: Duration = Duration::from_millis(1);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn millis(m: u64) -> Duration {
    Duration::from_millis(m)
}
