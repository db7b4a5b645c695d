//! The acquire timeout: an error that says why (size, idle, in use, waiting, last create
//! error), and the create timeout that keeps a hung connect from holding a slot.

mod common;

use std::time::Duration;

use common::{FakeManager, assert_no_leak, millis, secs, settle};
use pool_core::{Pool, PoolError, Tier};

#[tokio::test(start_paused = true)]
async fn acquire_timeout_error_carries_the_pool_state_and_last_create_error() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .name("speech-tts")
        .max_size(1)
        .acquire_timeout(Some(secs(2)))
        .build()
        .unwrap();
    fake.fail_next(1);
    let err = pool.acquire().await.unwrap_err();
    assert!(matches!(err, PoolError::Create(_)), "{err:?}");
    let held = pool.acquire().await.unwrap();

    let err = pool.acquire().await.unwrap_err();
    let PoolError::Timeout(details) = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(details.pool, "speech-tts");
    assert_eq!(details.waited, secs(2));
    assert_eq!(details.size, 1);
    assert_eq!(details.max_size, 1);
    assert_eq!(details.idle, 0);
    assert_eq!(details.in_use, 1);
    assert_eq!(details.creating, 0);
    assert_eq!(details.waiting, 1, "the timed-out caller itself");
    let last = details.last_error.as_deref().unwrap_or_default();
    assert!(last.contains("connect refused"), "{last:?}");

    let message = err.to_string();
    for part in [
        "speech-tts",
        "size 1/1",
        "idle 0",
        "in use 1",
        "waiting 1",
        "connect refused",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }

    // The timed-out caller left the queue; the pool still works.
    assert_eq!(pool.snapshot().waiting, 0);
    drop(held);
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Cold);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn timeout_without_a_create_error_says_none() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Some(millis(500)))
        .build()
        .unwrap();
    let _held = pool.acquire().await.unwrap();
    let err = pool.acquire().await.unwrap_err();
    let PoolError::Timeout(details) = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(details.last_error, None);
    assert!(err.to_string().contains("none"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_create_times_out_the_acquire_and_its_resource_is_kept() {
    let fake = FakeManager::new().with_create_latency(secs(10));
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .acquire_timeout(Some(secs(1)))
        .create_timeout(secs(30))
        .build()
        .unwrap();
    let err = pool.acquire().await.unwrap_err();
    let PoolError::Timeout(details) = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(details.creating, 1, "the create was still running");
    assert_eq!(details.size, 1);

    // The create finishes after the caller gave up: the resource is not lost.
    tokio::time::sleep(secs(10)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.creating, 0);
    assert_eq!(s.in_use, 0);
    assert_eq!(s.warm_pool_size, 1, "it went to the idle set");
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Warm);
}

#[tokio::test(start_paused = true)]
async fn a_hung_create_fails_with_create_timeout_and_frees_its_slot() {
    let fake = FakeManager::new().with_create_latency(secs(3600));
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(None)
        .create_timeout(secs(2))
        .build()
        .unwrap();
    let err = pool.acquire().await.unwrap_err();
    assert!(
        matches!(err, PoolError::CreateTimeout(d) if d == secs(2)),
        "{err:?}"
    );
    settle().await;
    let s = pool.snapshot();
    assert_eq!(s.size, 0, "the slot was freed");
    assert_eq!(s.creating, 0);
    assert_eq!(s.create_failures, 1);
    assert!(s.last_error.is_some());
    assert_eq!(fake.creating_now(), 0, "the hung create future was dropped");

    fake.set_create_latency(millis(10));
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Cold);
}

#[tokio::test(start_paused = true)]
async fn no_acquire_timeout_waits_as_long_as_it_takes() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(None)
        .build()
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|g| g.tier()) })
    };
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert!(!waiter.is_finished());
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), Tier::Warm);
}

#[tokio::test(start_paused = true)]
async fn each_waiter_times_out_at_its_own_deadline() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Some(secs(1)))
        .build()
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let spawn = |pool: &Pool<FakeManager>| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|g| g.id) })
    };
    let first = spawn(&pool);
    tokio::time::sleep(millis(500)).await;
    let second = spawn(&pool);
    tokio::time::sleep(millis(600)).await;
    // t = 1.1 s: the first waiter's second is up, the second's is not.
    assert!(first.is_finished(), "the first waiter timed out on time");
    assert!(
        !second.is_finished(),
        "the second waiter was not timed out early"
    );
    assert!(matches!(
        first.await.unwrap(),
        Err(PoolError::Timeout(d)) if d.waited == secs(1)
    ));
    tokio::time::sleep(millis(500)).await;
    assert!(second.is_finished());
    assert!(matches!(second.await.unwrap(), Err(PoolError::Timeout(_))));
    assert_eq!(pool.snapshot().waiting, 0);

    // Timeouts leave nothing running once the pool shuts down.
    drop(held);
    pool.shutdown().await;
    assert_eq!(pool.background_tasks(), 0);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_creating_into_a_freed_slot_still_honours_its_deadline() {
    let fake = FakeManager::new().with_create_latency(secs(10));
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .max_size(1)
        .acquire_timeout(Some(secs(15)))
        .build()
        .unwrap();
    let held = pool.acquire().await.unwrap();
    assert_eq!(fake.created(), 1);
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|g| g.id) })
    };
    tokio::time::sleep(secs(8)).await;
    // The freed slot goes to the waiter, whose create needs 10 s but only 7 s are left.
    held.discard();
    let result = waiter.await.unwrap();
    let Err(PoolError::Timeout(details)) = &result else {
        panic!("expected a timeout, got {result:?}");
    };
    assert_eq!(details.creating, 1);
    assert_eq!(details.waited, secs(15));

    // Its create completes later and the resource is kept for the next caller.
    tokio::time::sleep(secs(5)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.creating, 0);
    assert_eq!(s.warm_pool_size, 1);
    assert_eq!(pool.acquire().await.unwrap().tier(), Tier::Warm);
}
