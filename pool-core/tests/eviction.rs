//! Sessions unused for `session_max_age` are evicted by the maintainer and their resources
//! closed; sessions in use or used recently are kept.

mod common;

use common::{FakeManager, assert_no_leak, secs};
use pool_core::{Pool, Tier};

fn pool(fake: &FakeManager, warm_target: usize) -> Pool<FakeManager> {
    Pool::builder(fake.clone())
        .warm_target(warm_target)
        .session_awareness(true)
        .background_warmup(true)
        .session_max_age(secs(60))
        .refresh_interval(secs(10))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stale_sessions_are_evicted_after_max_age_and_their_resources_closed() {
    let fake = FakeManager::new();
    let pool = pool(&fake, 0);
    let id = pool.acquire_for_session("s").await.unwrap().id;
    let kept_id = pool.acquire_for_session("other").await.unwrap().id;

    tokio::time::sleep(secs(50)).await;
    assert_eq!(pool.snapshot().active_sessions, 2, "not stale yet");
    drop(pool.acquire_for_session("other").await.unwrap());

    // Stale after 60 s, noticed within one more refresh interval.
    tokio::time::sleep(secs(30)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.active_sessions, 1, "{s:#?}");
    assert_eq!(
        fake.closed_ids(),
        vec![id],
        "the evicted resource was closed"
    );
    assert_eq!(s.dedicated, 1);

    // The evicted session starts over; the other one still has its resource.
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert_ne!(g.id, id);
    drop(g);
    let g = pool.acquire_for_session("other").await.unwrap();
    assert_eq!((g.tier(), g.id), (Tier::Dedicated, kept_id));
    drop(g);
    assert!(!pool.release_for_session("gone").await);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn evicted_resources_are_closed_not_recycled() {
    let fake = FakeManager::new();
    let pool = pool(&fake, 2);
    pool.prepare().await.unwrap();
    let id = pool.acquire_for_session("s").await.unwrap().id;
    // The maintainer refilled the idle set behind the session's WARM take.
    tokio::time::sleep(secs(100)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.active_sessions, 0);
    assert!(fake.closed_ids().contains(&id), "{:?}", fake.closed_ids());
    assert_eq!(s.warm_pool_size, 2);
    assert_eq!(s.dedicated, 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sessions_used_regularly_are_never_evicted() {
    let fake = FakeManager::new();
    let pool = pool(&fake, 0);
    let id = pool.acquire_for_session("s").await.unwrap().id;
    for _ in 0..15 {
        tokio::time::sleep(secs(40)).await;
        let g = pool.acquire_for_session("s").await.unwrap();
        assert_eq!((g.tier(), g.id), (Tier::Dedicated, id));
    }
    assert_eq!(fake.created(), 1);
    assert_eq!(fake.closed(), 0);
    assert_eq!(pool.snapshot().active_sessions, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_in_use_is_never_evicted() {
    let fake = FakeManager::new();
    let pool = pool(&fake, 0);
    let held = pool.acquire_for_session("s").await.unwrap();
    let id = held.id;
    tokio::time::sleep(secs(600)).await;
    assert_eq!(pool.snapshot().active_sessions, 1);
    assert_eq!(fake.closed(), 0);
    drop(held);
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!((g.tier(), g.id), (Tier::Dedicated, id));
    drop(g);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_the_maintainer_sessions_are_kept() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .session_awareness(true)
        .session_max_age(secs(60))
        .build()
        .unwrap();
    let id = pool.acquire_for_session("s").await.unwrap().id;
    tokio::time::sleep(secs(600)).await;
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!((g.tier(), g.id), (Tier::Dedicated, id));
}
