//! `Pool::session` handles: the same guards and rules as the string API, and the small
//! API conveniences (per-call timeouts, counts, the backend error).

mod common;

use common::{FakeError, FakeManager, assert_no_leak, millis, secs};
use pool_core::{Pool, PoolError, Tier};

fn session_pool(fake: &FakeManager) -> Pool<FakeManager> {
    Pool::builder(fake.clone())
        .session_awareness(true)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_handle_binds_then_serves_dedicated_like_the_string_api() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake);
    let call = pool.session("call-42");
    assert_eq!(call.id(), "call-42");
    assert_eq!(
        pool.snapshot().active_sessions,
        0,
        "a handle alone creates no session"
    );
    let first = call.acquire().await.unwrap();
    assert_eq!(first.tier(), Tier::Cold);
    assert!(first.is_dedicated());
    let id = first.id;
    drop(first);
    for _ in 0..3 {
        let again = call.acquire().await.unwrap();
        assert_eq!((again.tier(), again.id), (Tier::Dedicated, id));
    }
    // The string API sees the same session, and the handle sees its uses.
    let by_name = pool.acquire_for_session("call-42").await.unwrap();
    assert_eq!((by_name.tier(), by_name.id), (Tier::Dedicated, id));
    drop(by_name);
    let clone = call.clone();
    assert_eq!(clone.acquire().await.unwrap().id, id);
    assert!(format!("{call:?}").contains("call-42"));

    assert!(call.release().await);
    assert!(
        !pool.release_for_session("call-42").await,
        "already released"
    );
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!((s.active_sessions, s.dedicated), (0, 0));
    // The handle stays usable: a new session with the same id.
    let fresh = call.acquire().await.unwrap();
    assert_eq!(
        fresh.tier(),
        Tier::Cold,
        "warm target 0: the released one was closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handle_notices_its_session_was_released_through_the_string_api() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake);
    let call = pool.session("s");
    drop(call.acquire().await.unwrap());
    assert!(pool.release_for_session("s").await);
    let g = call.acquire().await.unwrap();
    assert_ne!(g.tier(), Tier::Dedicated, "a released session starts over");
    drop(g);
    assert_eq!(pool.snapshot().active_sessions, 1);
    let again = call.acquire().await.unwrap();
    assert_eq!(again.tier(), Tier::Dedicated);
}

#[tokio::test(start_paused = true)]
async fn a_handle_on_a_busy_session_fails_with_session_busy() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake);
    let call = pool.session("s");
    let _held = call.acquire().await.unwrap();
    let busy = call.acquire_with_timeout(millis(250)).await;
    match busy {
        Err(PoolError::SessionBusy(details)) => {
            assert_eq!(
                (details.session.as_str(), details.waited),
                ("s", millis(250))
            );
        }
        other => panic!("expected SessionBusy, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn acquire_with_timeout_overrides_the_configured_timeout() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .acquire_timeout(Some(secs(30)))
        .build()
        .unwrap();
    let _only = pool.acquire().await.unwrap();
    let started = tokio::time::Instant::now();
    match pool.acquire_with_timeout(millis(200)).await {
        Err(PoolError::Timeout(details)) => assert_eq!(details.waited, millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), millis(200));
}

#[tokio::test(start_paused = true)]
async fn counts_match_the_snapshot_gauges() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .session_awareness(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let plain = pool.acquire().await.unwrap();
    drop(pool.acquire_for_session("a").await.unwrap());
    let c = pool.counts();
    let s = pool.snapshot();
    assert_eq!(c.idle, s.warm_pool_size);
    assert_eq!((c.in_use, c.dedicated, c.sessions), (2, 1, 1));
    assert_eq!((c.creating, c.closing, c.waiting), (0, 0, 0));
    assert_eq!(c.size, s.size);
    drop(plain);
}

#[tokio::test(start_paused = true)]
async fn backend_error_reaches_the_managers_error_from_either_variant() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).build().unwrap();
    fake.fail_next(1);
    let create = pool.acquire().await.unwrap_err();
    assert!(matches!(create, PoolError::Create(_)));
    assert!(
        create
            .backend_error()
            .unwrap()
            .0
            .contains("connect refused")
    );
    fake.fail_next_warm(1);
    let warm = pool.acquire().await.unwrap_err();
    assert!(matches!(warm, PoolError::Warm(_)));
    assert!(warm.backend_error().unwrap().0.contains("warm-up rejected"));
    let closed: PoolError<FakeError> = PoolError::Closed;
    assert!(closed.backend_error().is_none());
}
