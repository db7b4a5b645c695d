//! Dropping an acquire future at any await point (waiting for a slot, creating, warming,
//! waiting on a session, after a hand-over it never saw) leaks nothing and corrupts no count.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs, settle, wait_until};
use pool_core::{Pool, PoolSnapshot, Tier};
use tokio::task::JoinHandle;

/// Aborts the task and waits until it is gone (its future dropped).
async fn cancel<T>(task: JoinHandle<T>) {
    task.abort();
    let joined = task.await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_cancelled()),
        "the task finished before it could be cancelled"
    );
}

fn spawn_acquire(pool: &Pool<FakeManager>) -> JoinHandle<Tier> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.acquire().await.unwrap().tier() })
}

/// Nothing held, nothing waiting, nothing in flight, and counts balance.
async fn assert_quiet(pool: &Pool<FakeManager>, fake: &FakeManager) -> PoolSnapshot {
    let s = assert_no_leak(pool, fake).await;
    assert_eq!(s.waiting, 0, "{s:#?}");
    assert_eq!(s.creating, 0, "{s:#?}");
    assert_eq!(s.in_use, 0, "{s:#?}");
    assert_eq!(s.size, s.warm_pool_size, "{s:#?}");
    s
}

#[tokio::test(start_paused = true)]
async fn dropped_while_waiting_for_a_slot() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let task = spawn_acquire(&pool);
    wait_until(&pool, "queued", |s| s.waiting == 1).await;
    cancel(task).await;
    assert_eq!(pool.snapshot().waiting, 0, "the waiter left the queue");
    drop(held);
    assert_quiet(&pool, &fake).await;
    // The slot is usable again.
    let g = tokio::time::timeout(secs(1), pool.acquire()).await;
    assert!(g.is_ok_and(|g| g.is_ok()));
}

#[tokio::test(start_paused = true)]
async fn dropped_after_a_resource_was_handed_over_but_before_it_was_seen() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .max_size(1)
        .build()
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let id = held.id;
    let task = spawn_acquire(&pool);
    wait_until(&pool, "queued", |s| s.waiting == 1).await;
    // The return hands the resource to the waiter, which is cancelled before it runs.
    drop(held);
    cancel(task).await;
    let s = assert_quiet(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 1, "the handed-over resource came back");
    assert_eq!(fake.closed(), 0);
    let g = pool.acquire().await.unwrap();
    assert_eq!((g.id, g.tier()), (id, Tier::Warm));
}

#[tokio::test(start_paused = true)]
async fn dropped_after_a_slot_was_handed_over_but_before_it_was_seen() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let task = spawn_acquire(&pool);
    wait_until(&pool, "queued", |s| s.waiting == 1).await;
    // The discard frees the slot and gives it to the waiter, cancelled before it runs.
    held.discard();
    cancel(task).await;
    let s = assert_quiet(&pool, &fake).await;
    assert_eq!(s.size, 0, "the unused slot was given back");
    assert_eq!(fake.create_calls(), 1, "the cancelled waiter never created");
    let g = tokio::time::timeout(secs(1), pool.acquire()).await;
    assert!(g.is_ok_and(|g| g.is_ok()), "the slot is usable");
}

#[tokio::test(start_paused = true)]
async fn dropped_while_creating() {
    for warm_target in [0, 1] {
        let fake = FakeManager::new().with_create_latency(millis(1000));
        let pool = Pool::builder(fake.clone())
            .warm_target(warm_target)
            .build()
            .unwrap();
        let task = spawn_acquire(&pool);
        tokio::time::sleep(millis(300)).await;
        assert_eq!(fake.creating_now(), 1, "cancelled in the middle of create");
        cancel(task).await;
        // The create runs to completion and its resource is kept or closed, never lost.
        tokio::time::sleep(millis(1000)).await;
        let s = assert_quiet(&pool, &fake).await;
        assert_eq!(fake.created(), 1);
        assert_eq!(s.warm_pool_size, warm_target);
        assert_eq!(fake.closed(), 1 - warm_target);
        assert_eq!(s.allocations_total, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_while_warming() {
    for warm_target in [0, 1] {
        let fake = FakeManager::new().with_warm_latency(millis(1000));
        let pool = Pool::builder(fake.clone())
            .warm_target(warm_target)
            .build()
            .unwrap();
        let task = spawn_acquire(&pool);
        tokio::time::sleep(millis(300)).await;
        assert_eq!(fake.warming_now(), 1, "cancelled in the middle of warm");
        cancel(task).await;
        tokio::time::sleep(millis(1000)).await;
        let s = assert_quiet(&pool, &fake).await;
        assert_eq!(s.warm_pool_size, warm_target);
        assert_eq!(fake.closed(), 1 - warm_target);
        if warm_target == 1 {
            let g = pool.acquire().await.unwrap();
            assert_eq!(g.tier(), Tier::Warm);
            assert!(g.warmed, "the kept resource finished its warm-up");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_by_a_timeout_wrapper_at_every_point() {
    let fake = FakeManager::new()
        .with_create_latency(millis(100))
        .with_warm_latency(millis(100));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .max_size(3)
        .build()
        .unwrap();
    // Cut acquires short at many different moments: while creating, warming and waiting.
    let mut held = Vec::new();
    for step in 0..40u64 {
        let cut = millis(step * 13 % 250 + 1);
        if let Ok(Ok(g)) = tokio::time::timeout(cut, pool.acquire()).await {
            held.push(g);
        }
        if held.len() == 3 || step % 5 == 4 {
            held.clear();
        }
        let s = pool.snapshot();
        assert!(s.size <= 3, "{s:#?}");
        // Resources still being created may or may not be counted as created yet.
        let settled = s.closed_total + (s.size - s.creating) as u64;
        assert!(
            (settled..=settled + s.creating as u64).contains(&s.created_total),
            "{s:#?}"
        );
    }
    held.clear();
    tokio::time::sleep(secs(1)).await;
    assert_quiet(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn dropped_while_waiting_for_a_busy_session() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .session_awareness(true)
        .build()
        .unwrap();
    let held = pool.acquire_for_session("s").await.unwrap();
    let id = held.id;
    let task = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_for_session("s").await.unwrap().id })
    };
    tokio::time::sleep(millis(100)).await;
    cancel(task).await;
    drop(held);
    settle().await;
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!((g.id, g.tier()), (id, Tier::Dedicated));
    drop(g);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.dedicated, 1);
    assert_eq!(fake.created(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_while_binding_a_session() {
    let fake = FakeManager::new().with_create_latency(millis(1000));
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .session_awareness(true)
        .build()
        .unwrap();
    let task = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_for_session("s").await.unwrap().id })
    };
    tokio::time::sleep(millis(300)).await;
    cancel(task).await;
    tokio::time::sleep(millis(1000)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.dedicated, 0, "nothing was bound");
    assert_eq!(s.in_use, 0);
    assert_eq!(s.warm_pool_size, 1, "the created resource went idle");
    // The session binds normally afterwards.
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
}
