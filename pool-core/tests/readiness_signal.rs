//! A backend's readiness signal makes the maintainer replace idle resources that went bad
//! on their own (a liveness probe found the peer dead) at once, not at its next scheduled
//! pass, and such a resource is never handed out.

mod common;

use std::sync::Arc;

use common::{FakeError, FakeManager, Res, millis, secs, settle};
use pool_core::{Manager, Pool, Tier};
use tokio::sync::Notify;

/// The fake manager, plus the signal a backend with liveness probes would fire.
#[derive(Clone)]
struct Signalling {
    fake: FakeManager,
    signal: Arc<Notify>,
}

impl Manager for Signalling {
    type Resource = Res;
    type Error = FakeError;

    async fn create(&self) -> Result<Res, FakeError> {
        self.fake.create().await
    }
    async fn warm(&self, r: &mut Res) -> Result<(), FakeError> {
        self.fake.warm(r).await
    }
    fn is_ready(&self, r: &Res) -> bool {
        self.fake.is_ready(r)
    }
    async fn reset(&self, r: &mut Res) -> Result<(), FakeError> {
        self.fake.reset(r).await
    }
    async fn close(&self, r: Res) {
        self.fake.close(r).await
    }
    fn readiness_signal(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.signal))
    }
}

#[tokio::test(start_paused = true)]
async fn a_signalled_dead_idle_resource_is_replaced_before_the_next_pass() {
    let fake = FakeManager::new().with_create_latency(millis(50));
    let signal = Arc::new(Notify::new());
    let pool = Pool::builder(Signalling {
        fake: fake.clone(),
        signal: Arc::clone(&signal),
    })
    .warm_target(3)
    .background_warmup(true)
    // The scheduled pass is far away: only the signal can explain a prompt replacement.
    .refresh_interval(secs(600))
    .build()
    .unwrap();
    pool.prepare().await.unwrap();
    settle().await;
    assert_eq!(pool.snapshot().warm_pool_size, 3);
    assert_eq!(fake.created(), 3);

    // Two idle resources die where the pool cannot see it; the backend notices and
    // signals once.
    fake.set_ready(0, false);
    fake.set_ready(1, false);
    signal.notify_one();
    tokio::time::sleep(millis(200)).await;
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 3, "replaced in the background: {s:#?}");
    assert_eq!(fake.created(), 5);
    let mut closed = fake.closed_ids();
    closed.sort_unstable();
    assert_eq!(closed, vec![0, 1], "exactly the dead ones were closed");

    // Every hand-out is one of the live resources, WARM.
    let held: Vec<_> = futures_join_all(&pool, 3).await;
    for r in &held {
        assert_eq!(r.tier(), Tier::Warm);
        assert!(![0, 1].contains(&r.id), "a dead resource was handed out");
    }
    drop(held);
    settle().await;
    let s = pool.snapshot();
    assert_eq!(s.created_total, s.closed_total + s.size as u64, "no leak");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_the_signal_a_dead_idle_resource_waits_for_a_pass_but_is_never_handed_out() {
    let fake = FakeManager::new();
    let pool = Pool::builder(Signalling {
        fake: fake.clone(),
        signal: Arc::new(Notify::new()),
    })
    .warm_target(2)
    .background_warmup(true)
    .refresh_interval(secs(600))
    .build()
    .unwrap();
    pool.prepare().await.unwrap();
    settle().await;
    fake.set_ready(0, false);
    tokio::time::sleep(millis(200)).await;
    assert_eq!(fake.closed(), 0, "nobody signalled: still in the idle set");
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert!(
        a.id != 0 && b.id != 0,
        "is_ready kept it from being handed out"
    );
    drop((a, b));
    pool.shutdown().await;
}

async fn futures_join_all(pool: &Pool<Signalling>, n: usize) -> Vec<pool_core::Pooled<Signalling>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(pool.acquire().await.unwrap());
    }
    v
}
