//! The background maintainer refills the idle set (promptly, with bounded concurrency,
//! within max_size) and runs its housekeeping pass once per refresh interval.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs};
use pool_core::{Pool, Tier};

#[tokio::test(start_paused = true)]
async fn background_refill_after_acquires() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .background_warmup(true)
        .refresh_interval(secs(30))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!((a.tier(), b.tier()), (Tier::Warm, Tier::Warm));

    // Well before the next housekeeping pass: the refill is triggered by the acquires.
    tokio::time::sleep(millis(500)).await;
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 3, "idle set refilled: {s:#?}");
    assert_eq!(s.in_use, 2);
    assert_eq!(fake.created(), 5);

    // Returned resources above target are kept as surplus for a while (traffic that
    // returns them will likely want them again), then trimmed by housekeeping.
    drop((a, b));
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 5);
    assert_eq!(fake.closed(), 0);
    tokio::time::sleep(secs(61)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 3, "surplus trimmed back to the target");
    assert_eq!(fake.closed(), 2);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_maintainer_fills_the_idle_set_without_prepare() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .build()
        .unwrap();
    assert!(!pool.snapshot().ready);
    tokio::time::sleep(secs(1)).await;
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 2);
    assert!(s.ready);
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Warm);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refill_runs_at_most_create_concurrency_creates_at_once() {
    let fake = FakeManager::new().with_create_latency(millis(200));
    let pool = Pool::builder(fake.clone())
        .warm_target(7)
        .create_concurrency(2)
        .background_warmup(true)
        .build()
        .unwrap();
    tokio::time::sleep(secs(3)).await;
    assert_eq!(pool.snapshot().warm_pool_size, 7);
    assert!(
        fake.max_creating() <= 2,
        "{} background creates at once, bound is 2",
        fake.max_creating()
    );
    assert_eq!(fake.max_creating(), 2, "the bound was used");

    // Draining the whole idle set refills it under the same bound.
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..7 {
            v.push(pool.acquire().await.unwrap());
        }
        v
    };
    tokio::time::sleep(secs(3)).await;
    assert_eq!(pool.snapshot().warm_pool_size, 7);
    assert!(fake.max_creating() <= 2);
    drop(held);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refill_never_exceeds_max_size() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .max_size(4)
        .background_warmup(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(pool.acquire().await.unwrap());
        }
        v
    };
    tokio::time::sleep(secs(60)).await;
    let s = pool.snapshot();
    assert_eq!(s.size, 4, "{s:#?}");
    assert_eq!(s.warm_pool_size, 1, "only one slot left for the idle set");
    assert_eq!(fake.created(), 4);
    drop(held);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 4, "surplus kept for a while");
    tokio::time::sleep(secs(61)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 3);
    assert_eq!(fake.closed(), 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn housekeeping_runs_once_per_refresh_interval() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .background_warmup(true)
        .refresh_interval(secs(10))
        .build()
        .unwrap();
    tokio::time::sleep(secs(35)).await;
    assert_eq!(
        pool.snapshot().warmup_cycles,
        3,
        "passes at 10 s, 20 s, 30 s"
    );
    tokio::time::sleep(secs(10)).await;
    assert_eq!(pool.snapshot().warmup_cycles, 4);
    assert_eq!(fake.created(), 1, "an idle set at target needs no creates");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_maintainer_replaces_resources_found_dead() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    fake.set_ready(0, false);
    fake.set_ready(1, false);
    // The acquire discards both dead idle resources and goes COLD ...
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    // ... and the maintainer refills the idle set right away.
    tokio::time::sleep(millis(100)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 2);
    assert_eq!(fake.closed(), 2);
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Warm);
    drop(g);
    pool.shutdown().await;
}

/// Regression: an idle resource that stops being ready while nobody acquires (the server
/// closed it) used to stay in the idle set, counted as warm, until an acquire tripped over
/// it. The snapshot now counts only ready idle resources, and the next maintainer pass
/// closes the dead ones and refills.
#[tokio::test(start_paused = true)]
async fn dead_idle_resources_are_replaced_without_traffic() {
    let fake = FakeManager::new().with_create_latency(millis(50));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .refresh_interval(secs(1))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    fake.set_ready(0, false);
    fake.set_ready(1, false);
    assert_eq!(
        pool.snapshot().warm_pool_size,
        0,
        "dead resources are not warm"
    );

    // No acquire at all: the housekeeping pass finds them.
    tokio::time::sleep(millis(1_100)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 2, "{s:#?}");
    assert_eq!(fake.closed_ids(), vec![0, 1]);
    assert_eq!(fake.created(), 4);
    assert_eq!(s.allocations_total, 0);
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Warm);
    pool.shutdown().await;
}
