//! Defects a user met through the public API, each pinned by a test that failed before
//! its fix: a busy session waited forever, shutdown left session waiters blocked, failed
//! first binds left ghost sessions behind, and `max_size` forgot resources being closed.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs, settle};
use pool_core::{Pool, PoolError};

fn session_pool(fake: &FakeManager) -> pool_core::PoolBuilder<FakeManager> {
    Pool::builder(fake.clone()).session_awareness(true)
}

/// A task that asks for its own session twice without dropping the first guard must not
/// deadlock: it waits at most the acquire timeout and learns the session is busy.
#[tokio::test(start_paused = true)]
async fn a_busy_session_fails_with_session_busy_after_the_acquire_timeout() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake)
        .acquire_timeout(Some(secs(2)))
        .build()
        .unwrap();
    let held = pool.acquire_for_session("call-42").await.unwrap();
    let started = tokio::time::Instant::now();
    let second = tokio::time::timeout(secs(60), pool.acquire_for_session("call-42"))
        .await
        .expect("a busy session must not wait past the acquire timeout");
    let waited = started.elapsed();
    match second {
        Err(PoolError::SessionBusy(details)) => {
            assert_eq!(details.session, "call-42");
            assert_eq!(details.waited, secs(2));
            assert_eq!(details.pool, "pool");
            let message = PoolError::<common::FakeError>::SessionBusy(details).to_string();
            assert!(message.contains("call-42"), "{message}");
            assert!(message.contains("busy"), "{message}");
        }
        other => panic!("expected SessionBusy, got {other:?}"),
    }
    assert_eq!(waited, secs(2));
    drop(held);
    let again = pool.acquire_for_session("call-42").await.unwrap();
    assert_eq!(
        again.tier(),
        pool_core::Tier::Dedicated,
        "the session is intact"
    );
    assert_eq!(fake.created(), 1);
}

/// The per-call timeout bounds a busy session's wait too.
#[tokio::test(start_paused = true)]
async fn a_busy_session_honours_the_per_call_timeout() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake).acquire_timeout(None).build().unwrap();
    let _held = pool.acquire_for_session("s").await.unwrap();
    let second = tokio::time::timeout(
        secs(60),
        pool.acquire_for_session_with_timeout("s", millis(300)),
    )
    .await
    .expect("bounded by the per-call timeout");
    match second {
        Err(PoolError::SessionBusy(details)) => assert_eq!(details.waited, millis(300)),
        other => panic!("expected SessionBusy, got {other:?}"),
    }
}

/// Shutdown answers every waiter at once, including callers queued behind a session's
/// current user.
#[tokio::test(start_paused = true)]
async fn shutdown_wakes_callers_queued_behind_a_session_user() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake).acquire_timeout(None).build().unwrap();
    let held = pool.acquire_for_session("s").await.unwrap();
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_for_session("s").await.map(|g| g.id) })
    };
    settle().await;
    assert!(!queued.is_finished());
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    let answer = tokio::time::timeout(secs(1), queued)
        .await
        .expect("the queued caller is answered promptly, while the first still holds");
    assert!(matches!(answer.unwrap(), Err(PoolError::Closed)));
    drop(held);
    shutdown.await.unwrap();
    assert_eq!(pool.snapshot().active_sessions, 0);
}

/// A first bind that fails (create error, warm error, timeout) leaves no session behind:
/// `active_sessions` counts only sessions holding or binding a resource.
#[tokio::test(start_paused = true)]
async fn failed_first_binds_leave_no_session_entry() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake).build().unwrap();
    fake.fail_next(1);
    assert!(matches!(
        pool.acquire_for_session("create-fails").await,
        Err(PoolError::Create(_))
    ));
    fake.fail_next_warm(1);
    assert!(matches!(
        pool.acquire_for_session("warm-fails").await,
        Err(PoolError::Warm(_))
    ));
    let s = pool.snapshot();
    assert_eq!(s.active_sessions, 0, "{s:#?}");
    assert!(
        !pool.release_for_session("create-fails").await,
        "a session that never got a resource does not exist"
    );
    assert!(!pool.release_for_session("warm-fails").await);
    assert_no_leak(&pool, &fake).await;
}

/// Refused acquires (the pool is full and the caller times out) create no session entry:
/// a flood of refused ids must not grow the session map.
#[tokio::test(start_paused = true)]
async fn refused_session_acquires_create_no_session_entry() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake)
        .max_size(1)
        .acquire_timeout(Some(millis(100)))
        .build()
        .unwrap();
    let _only = pool.acquire().await.unwrap();
    for i in 0..50 {
        let refused = pool.acquire_for_session(&format!("s{i}")).await;
        assert!(matches!(refused, Err(PoolError::Timeout(_))), "{refused:?}");
    }
    assert_eq!(pool.snapshot().active_sessions, 0);
    assert!(!pool.release_for_session("s7").await);
}

/// A first bind whose acquire future is dropped (the caller gave up) leaves no entry.
#[tokio::test(start_paused = true)]
async fn a_cancelled_first_bind_leaves_no_session_entry() {
    let fake = FakeManager::new().with_create_latency(millis(500));
    let pool = session_pool(&fake).build().unwrap();
    let gave_up = tokio::time::timeout(millis(100), pool.acquire_for_session("s")).await;
    assert!(gave_up.is_err());
    assert_eq!(pool.snapshot().active_sessions, 0);
    tokio::time::sleep(secs(1)).await;
    assert_no_leak(&pool, &fake).await;
}

/// A resource being closed still counts against `max_size` (the backend still sees its
/// socket), so a new create waits for the close that frees its slot.
#[tokio::test(start_paused = true)]
async fn max_size_counts_resources_being_closed() {
    let fake = FakeManager::new().with_close_latency(millis(500));
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Some(secs(5)))
        .build()
        .unwrap();
    let first = pool.acquire().await.unwrap();
    first.discard();
    let next = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|g| g.id) })
    };
    tokio::time::sleep(millis(100)).await;
    assert_eq!(
        fake.create_calls(),
        1,
        "no second create while the first resource is still closing"
    );
    let s = pool.snapshot();
    assert_eq!(s.closing, 1, "{s:#?}");
    assert_eq!(s.size, 1, "a closing resource counts as live");
    let id = tokio::time::timeout(secs(1), next)
        .await
        .expect("the close frees the slot")
        .unwrap()
        .unwrap();
    assert_eq!(id, 1);
    assert!(
        fake.created() - fake.closed() <= 1,
        "the backend never saw more than max_size"
    );
    // The second resource went back with a warm target of 0, so it is closing too.
    tokio::time::sleep(secs(1)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!((s.closing, s.size), (0, 0));
}
