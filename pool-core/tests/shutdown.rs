//! `shutdown()` stops the maintainer, wakes waiters with `Closed`, closes every idle and
//! session resource, waits (bounded) for in-flight closes, and leaves no task running.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs, settle, wait_until};
use pool_core::{Pool, PoolError};

#[tokio::test(start_paused = true)]
async fn shutdown_empties_the_idle_set_and_the_sessions() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .session_awareness(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    drop(pool.acquire_for_session("a").await.unwrap());
    drop(pool.acquire_for_session("b").await.unwrap());
    let s = pool.snapshot();
    assert_eq!((s.warm_pool_size, s.active_sessions), (1, 2));

    pool.shutdown().await;
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.active_sessions, 0);
    assert_eq!(s.dedicated, 0);
    assert_eq!(s.size, 0);
    assert!(!s.ready, "a shut-down pool is not ready");
    assert_eq!(
        fake.closed(),
        3,
        "idle and session resources closed before return"
    );
    assert_eq!(fake.created(), fake.closed());
    assert!(!pool.release_for_session("a").await, "sessions are gone");
}

#[tokio::test(start_paused = true)]
async fn acquires_after_shutdown_fail_with_closed() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .session_awareness(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    pool.shutdown().await;
    assert!(matches!(pool.acquire().await, Err(PoolError::Closed)));
    assert!(matches!(
        pool.acquire_for_session("s").await,
        Err(PoolError::Closed)
    ));
    assert!(matches!(pool.prepare().await, Err(PoolError::Closed)));
    assert_eq!(fake.create_calls(), 1, "nothing is created after shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_waiters_with_closed() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(None)
        .build()
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.map(|g| g.id) })
        })
        .collect();
    wait_until(&pool, "three waiters", |s| s.waiting == 3).await;
    pool.shutdown().await;
    for w in waiters {
        let result = w.await.unwrap();
        assert!(matches!(result, Err(PoolError::Closed)), "{result:?}");
    }
    assert_eq!(pool.snapshot().waiting, 0);

    // A resource in use at shutdown is closed when its guard drops, not kept.
    drop(held);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.size, 0);
    assert_eq!(fake.closed(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_leaves_no_task_running() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .background_warmup(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let g = pool.acquire().await.unwrap();
    // The maintainer and a refill are running right now.
    wait_until(&pool, "a refill in flight", |s| s.creating == 1).await;
    assert!(pool.background_tasks() >= 2);
    drop(g);

    pool.shutdown().await;
    assert_eq!(
        pool.background_tasks(),
        0,
        "maintainer, creates and closes all done"
    );
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.size, 0);
    assert_eq!(fake.created(), fake.closed());

    // The maintainer is really gone: time passes and nothing is created.
    let calls = fake.create_calls();
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(fake.create_calls(), calls);
    assert_eq!(pool.background_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_a_resource_whose_create_was_in_flight() {
    let fake = FakeManager::new().with_create_latency(secs(1));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .shutdown_timeout(secs(5))
        .build()
        .unwrap();
    tokio::time::sleep(millis(500)).await;
    assert_eq!(pool.snapshot().creating, 2);
    pool.shutdown().await;
    assert_eq!(pool.background_tasks(), 0);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.created(), 2, "the in-flight creates finished");
    assert_eq!(
        fake.closed(),
        2,
        "and their resources were closed, not kept"
    );
    assert_eq!(s.warm_pool_size, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_sessions_in_use_when_their_guard_drops() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .session_awareness(true)
        .build()
        .unwrap();
    let held = pool.acquire_for_session("busy").await.unwrap();
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_for_session("busy").await.map(|g| g.id) })
    };
    tokio::time::sleep(millis(10)).await;
    pool.shutdown().await;
    assert_eq!(pool.snapshot().active_sessions, 0);
    drop(held);
    let result = queued.await.unwrap();
    assert!(
        matches!(result, Err(PoolError::Closed)),
        "a caller queued on the session sees Closed: {result:?}"
    );
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.dedicated, 0);
    assert_eq!(s.size, 0);
    assert_eq!(fake.closed(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_idempotent() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).warm_target(2).build().unwrap();
    pool.prepare().await.unwrap();
    pool.shutdown().await;
    pool.shutdown().await;
    pool.clone().shutdown().await;
    assert_eq!(fake.closed(), 2);
    assert_eq!(pool.background_tasks(), 0);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_closes_but_only_up_to_its_timeout() {
    let fake = FakeManager::new().with_close_latency(secs(3600));
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .shutdown_timeout(secs(2))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let started = tokio::time::Instant::now();
    pool.shutdown().await;
    let waited = started.elapsed();
    assert!(
        waited >= secs(2) && waited < secs(3600),
        "shutdown waited {waited:?}"
    );
    assert_eq!(
        pool.background_tasks(),
        1,
        "the hung close is still running"
    );
    assert_eq!(fake.closed(), 0);

    // A close that finishes within the timeout is waited for.
    let fake = FakeManager::new().with_close_latency(millis(500));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .shutdown_timeout(secs(2))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    pool.shutdown().await;
    assert_eq!(
        fake.closed(),
        2,
        "shutdown returned after the closes finished"
    );
    assert_eq!(pool.background_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_maintainer_and_closes_idle_resources() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .session_awareness(true)
        .background_warmup(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    drop(pool.acquire_for_session("s").await.unwrap());
    tokio::time::sleep(millis(100)).await;
    let created = fake.created();
    assert_eq!(created, 3);
    let clone = pool.clone();
    drop(pool);
    settle().await;
    assert_eq!(fake.closed(), 0, "a clone keeps the pool alive");
    drop(clone);
    settle().await;
    assert_eq!(
        fake.closed(),
        3,
        "idle and session resources closed on drop"
    );
    let calls = fake.create_calls();
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(fake.create_calls(), calls, "the maintainer stopped");
    assert_eq!(fake.created(), fake.closed());
}
