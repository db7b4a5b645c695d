//! Tiers are recorded exactly: COLD without a warm pool, WARM from the idle set, then COLD
//! once the idle set is empty.

mod common;

use common::{FakeManager, assert_no_leak, millis};
use pool_core::{Manager, Pool, Tier};

#[tokio::test(start_paused = true)]
async fn cold_when_there_is_no_warm_pool() {
    let fake = FakeManager::new().with_create_latency(millis(200));
    let pool = Pool::builder(fake.clone()).warm_target(0).build().unwrap();
    pool.prepare().await.unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!(a.tier(), Tier::Cold);
    assert_eq!(b.tier(), Tier::Cold);
    assert_ne!(a.id, b.id);
    drop((a, b));
    // A returned resource is not kept with target 0, so the next one is COLD again.
    let c = pool.acquire().await.unwrap();
    assert_eq!(c.tier(), Tier::Cold);
    let s = pool.snapshot();
    assert_eq!(s.allocations_cold, 3);
    assert_eq!(s.allocations_warm, 0);
    assert_eq!(s.allocations_dedicated, 0);
    assert_eq!(s.allocations_total, 3);
    drop(c);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn warm_from_the_pool_then_cold_fallback_when_empty() {
    let fake = FakeManager::new().with_create_latency(millis(200));
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    let created_by_prepare = fake.created();
    assert_eq!(created_by_prepare, 2);

    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!(a.tier(), Tier::Warm);
    assert_eq!(b.tier(), Tier::Warm);
    assert_eq!(
        fake.created(),
        created_by_prepare,
        "a WARM acquire creates nothing"
    );
    assert!(
        a.id < 2 && b.id < 2 && a.id != b.id,
        "both came from prepare"
    );

    let c = pool.acquire().await.unwrap();
    assert_eq!(c.tier(), Tier::Cold, "the idle set is empty: COLD fallback");
    assert_eq!(c.id, 2);
    assert_eq!(fake.created(), 3);

    let s = pool.snapshot();
    assert_eq!((s.allocations_warm, s.allocations_cold), (2, 1));
    assert_eq!(s.allocations_total, 3);
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.in_use, 3);
}

#[tokio::test(start_paused = true)]
async fn a_not_ready_idle_resource_is_skipped_closed_and_not_counted_warm() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    fake.set_ready(0, false);

    let a = pool.acquire().await.unwrap();
    assert_eq!(a.tier(), Tier::Warm);
    assert_eq!(a.id, 1, "the ready idle resource was handed out");
    let b = pool.acquire().await.unwrap();
    assert_eq!(
        b.tier(),
        Tier::Cold,
        "the dead one is not handed out as WARM"
    );
    assert_eq!(b.id, 2);

    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(
        fake.closed_ids(),
        vec![0],
        "the dead idle resource was closed"
    );
    assert_eq!((s.allocations_warm, s.allocations_cold), (1, 1));
    assert_eq!(s.size, 2);
}

#[tokio::test(start_paused = true)]
async fn all_idle_resources_dead_means_cold() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(3).build().unwrap();
    pool.prepare().await.unwrap();
    for id in 0..3 {
        fake.set_ready(id, false);
    }
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert!(fake.is_ready(&g), "a COLD resource is fresh");
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed(), 3);
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.allocations_total, 1);
}
