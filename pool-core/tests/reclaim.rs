//! A session's parked resource is a soft reservation: when the pool is full and a caller
//! waits, the least recently used session that is not in a turn gives its resource up
//! (reset, then handed over as WARM), and that session gets WARM or COLD next turn.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs, settle};
use pool_core::{Pool, PoolError, Tier};

fn reclaiming_pool(fake: &FakeManager, max_size: usize) -> Pool<FakeManager> {
    Pool::builder(fake.clone())
        .max_size(max_size)
        .session_awareness(true)
        .reclaim_idle_sessions(true)
        .acquire_timeout(Some(secs(5)))
        .build()
        .unwrap()
}

/// Binds sessions in order, each used once and parked; returns their resource ids.
async fn park_sessions(pool: &Pool<FakeManager>, ids: &[&str]) -> Vec<u64> {
    let mut bound = Vec::new();
    for id in ids {
        let g = pool.acquire_for_session(id).await.unwrap();
        bound.push(g.id);
        drop(g);
        tokio::time::sleep(millis(10)).await;
    }
    bound
}

#[tokio::test(start_paused = true)]
async fn a_waiting_caller_gets_the_least_recently_used_session_resource() {
    let fake = FakeManager::new();
    let pool = reclaiming_pool(&fake, 3);
    let ids = park_sessions(&pool, &["a", "b", "c"]).await;
    // Use "a" again: "b" is now the least recently used.
    drop(pool.acquire_for_session("a").await.unwrap());

    let g = pool.acquire().await.unwrap();
    assert_eq!(
        g.tier(),
        Tier::Warm,
        "a reclaimed resource costs no connect"
    );
    assert_eq!(g.id, ids[1], "b was the least recently used");
    assert_eq!(g.resets, 1, "reset before it served someone else");
    let s = pool.snapshot();
    assert_eq!(s.reclaims_total, 1);
    assert_eq!(s.active_sessions, 2, "b lost its binding");
    assert_eq!(fake.created(), 3, "nothing created beyond max_size");

    // b's next turn is served (WARM, by reclaiming the next LRU: c), never an error.
    let b = pool.acquire_for_session("b").await.unwrap();
    assert_eq!((b.tier(), b.id), (Tier::Warm, ids[2]));
    drop(b);
    assert_eq!(
        pool.acquire_for_session("b").await.unwrap().tier(),
        Tier::Dedicated,
        "b is bound again"
    );
    drop(g);
    assert_eq!(pool.snapshot().reclaims_total, 2);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn a_session_in_a_turn_is_never_reclaimed() {
    let fake = FakeManager::new();
    let pool = reclaiming_pool(&fake, 2);
    let ids = park_sessions(&pool, &["old", "new"]).await;
    let in_turn = pool.acquire_for_session("old").await.unwrap();
    let g = pool.acquire().await.unwrap();
    assert_eq!(
        g.id, ids[1],
        "the older session is in a turn; the other one goes"
    );
    assert_eq!(in_turn.tier(), Tier::Dedicated);
    assert_eq!(in_turn.id, ids[0], "its resource was not touched");
    assert_eq!(in_turn.resets, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_served_when_a_turn_ends_after_it_queued() {
    let fake = FakeManager::new();
    let pool = reclaiming_pool(&fake, 1);
    let turn = pool.acquire_for_session("s").await.unwrap();
    let id = turn.id;
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|g| (g.id, g.tier())) })
    };
    tokio::time::sleep(millis(100)).await;
    assert!(!waiting.is_finished(), "the session is in a turn");
    drop(turn);
    let served = tokio::time::timeout(secs(1), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served.unwrap(), (id, Tier::Warm));
    assert_eq!(pool.snapshot().reclaims_total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_reclaimed_resource_whose_reset_fails_is_closed_and_the_waiter_gets_cold() {
    let fake = FakeManager::new();
    let pool = reclaiming_pool(&fake, 1);
    let ids = park_sessions(&pool, &["s"]).await;
    fake.set_reset_failing(true);
    let g = pool.acquire().await.unwrap();
    assert_eq!(
        g.tier(),
        Tier::Cold,
        "the slot freed by the close was used to create"
    );
    assert_ne!(g.id, ids[0]);
    settle().await;
    assert_eq!(fake.closed_ids(), vec![ids[0]]);
    drop(g);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn without_the_option_parked_sessions_keep_their_resources() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .session_awareness(true)
        .acquire_timeout(Some(millis(200)))
        .build()
        .unwrap();
    drop(pool.acquire_for_session("s").await.unwrap());
    assert!(matches!(pool.acquire().await, Err(PoolError::Timeout(_))));
    assert_eq!(
        pool.acquire_for_session("s").await.unwrap().tier(),
        Tier::Dedicated
    );
    assert_eq!(pool.snapshot().reclaims_total, 0);
}
