//! Returning a resource: back to the idle set when it is ready and the set is below target,
//! otherwise closed through `Manager::close` (in the background, never blocking the drop).

mod common;

use common::{FakeManager, assert_no_leak, millis, settle};
use pool_core::{Pool, Tier};

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_returns_the_resource_to_the_idle_set() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    let g = pool.acquire().await.unwrap();
    let id = g.id;
    assert_eq!(pool.snapshot().warm_pool_size, 1);
    assert_eq!(pool.snapshot().in_use, 1);
    drop(g);
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 2, "returned to the idle set");
    assert_eq!(s.in_use, 0);

    // Both idle resources are served WARM, and one of them is the returned one.
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!((a.tier(), b.tier()), (Tier::Warm, Tier::Warm));
    assert!(a.id == id || b.id == id);
    assert_eq!(fake.created(), 2, "no resource was created for the reuse");
    settle().await;
    assert_eq!(fake.closed(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_return_into_a_full_idle_set_closes_the_resource() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    let guards: Vec<_> = [
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
    ]
    .into_iter()
    .collect();
    let tiers: Vec<_> = guards.iter().map(|g| g.tier()).collect();
    assert_eq!(tiers, [Tier::Warm, Tier::Warm, Tier::Cold]);
    drop(guards);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 2, "the idle set is back at target");
    assert_eq!(fake.closed(), 1, "the surplus resource was closed");
    assert_eq!(s.closed_total, 1);
    assert_eq!(s.size, 2);
}

#[tokio::test(start_paused = true)]
async fn a_not_ready_resource_is_closed_on_return() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    let g = pool.acquire().await.unwrap();
    let id = g.id;
    g.set_ready(false);
    drop(g);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id]);
    assert_eq!(s.warm_pool_size, 1, "a dead resource is never put back");
    assert_eq!(s.in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn discard_closes_even_when_the_idle_set_has_room() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    let g = pool.acquire().await.unwrap();
    let id = g.id;
    g.discard();
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id]);
    assert_eq!(s.warm_pool_size, 1);
    assert_eq!(s.in_use, 0);
    assert_eq!(s.size, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_never_waits_for_close() {
    // close takes an hour; dropping the guard must return at once and the close runs in
    // the background.
    let fake = FakeManager::new().with_close_latency(millis(3_600_000));
    let pool = Pool::builder(fake.clone()).build().unwrap();
    let g = pool.acquire().await.unwrap();
    settle().await;
    let tasks_before = pool.background_tasks();
    drop(g);
    settle().await;
    assert_eq!(
        fake.close_calls.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(fake.closed(), 0, "close still running in the background");
    let s = pool.snapshot();
    assert_eq!(
        (s.size, s.closing),
        (1, 1),
        "a closing resource still counts against max_size until its close finishes"
    );
    assert_eq!(s.closed_total, 0, "counted when the close finishes");
    assert_eq!(
        pool.background_tasks(),
        tasks_before + 1,
        "the close is a tracked task"
    );
}
