//! `prepare()` fills the idle set to its target, with and without the background
//! maintainer, with bounded create concurrency.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs};
use pool_core::{Pool, PoolError, Tier};

#[tokio::test(start_paused = true)]
async fn prepare_without_background_warmup_fills_idle_set_to_target() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone()).warm_target(3).build().unwrap();
    let before = pool.snapshot();
    assert_eq!(before.warm_pool_size, 0, "the pool starts empty");
    assert!(
        !before.ready,
        "not ready before the target is first reached"
    );

    pool.prepare().await.unwrap();

    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 3);
    assert_eq!(s.size, 3);
    assert!(s.ready);
    assert_eq!(fake.created(), 3);
    assert_eq!(fake.warm_calls(), 3, "each pre-created resource is warmed");
    assert_eq!(s.allocations_total, 0, "prepare is not an allocation");
    assert_eq!(pool.background_tasks(), 0, "nothing keeps running");
}

#[tokio::test(start_paused = true)]
async fn prepare_with_background_warmup_fills_idle_set_to_target_without_overshoot() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .background_warmup(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 3);
    assert!(s.ready);

    // Prepare and the maintainer both aim at the target; together they must not overshoot.
    tokio::time::sleep(secs(5)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 3);
    assert_eq!(fake.created(), 3, "no surplus resource was created");
    assert_eq!(fake.closed(), 0);
    assert_eq!(fake.warm_calls(), 3);
    assert_eq!(pool.background_tasks(), 1, "only the maintainer runs");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn prepare_creates_at_most_create_concurrency_at_once() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone())
        .warm_target(8)
        .create_concurrency(3)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    assert_eq!(pool.snapshot().warm_pool_size, 8);
    assert!(
        fake.max_creating() <= 3,
        "{} creates ran at once, bound is 3",
        fake.max_creating()
    );
    assert!(fake.max_creating() >= 2, "creates did run in parallel");
}

#[tokio::test(start_paused = true)]
async fn prepare_is_idempotent_and_a_no_op_at_target() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    pool.prepare().await.unwrap();
    assert_eq!(fake.create_calls(), 2);
    assert_eq!(pool.snapshot().warm_pool_size, 2);

    let zero = FakeManager::new();
    let empty = Pool::builder(zero.clone()).build().unwrap();
    empty.prepare().await.unwrap();
    assert_eq!(zero.create_calls(), 0, "target 0: prepare creates nothing");
    assert!(empty.snapshot().ready);
}

#[tokio::test(start_paused = true)]
async fn prepare_tops_up_after_acquires() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(3).build().unwrap();
    pool.prepare().await.unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!((a.tier(), b.tier()), (Tier::Warm, Tier::Warm));
    assert_eq!(pool.snapshot().warm_pool_size, 1);
    pool.prepare().await.unwrap();
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 3);
    assert_eq!(s.in_use, 2);
    assert_eq!(fake.created(), 5);
}

#[tokio::test(start_paused = true)]
async fn prepare_reports_a_create_failure_and_the_pool_stays_usable() {
    let fake = FakeManager::new();
    fake.fail_next(1);
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    let err = pool.prepare().await.unwrap_err();
    assert!(matches!(err, PoolError::Create(_)), "{err:?}");
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 1, "the successful create was kept");
    assert_eq!(s.create_failures, 1);
    assert!(!s.ready);
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("connect refused"),
        "last_error: {:?}",
        s.last_error
    );

    // A second prepare reaches the target; the pool serves WARM.
    pool.prepare().await.unwrap();
    assert_eq!(pool.snapshot().warm_pool_size, 2);
    assert!(pool.snapshot().ready);
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Warm);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn prepare_respects_max_size() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .max_size(3)
        .build()
        .unwrap();
    let held = pool.acquire().await.unwrap();
    assert_eq!(held.tier(), Tier::Cold);
    pool.prepare().await.unwrap();
    let s = pool.snapshot();
    assert!(s.size <= 3, "size {} above max_size 3", s.size);
    assert_eq!(s.warm_pool_size, 2, "only the free room was filled");
    assert_eq!(fake.created(), 3);
}
