//! Session awareness: a session keeps its own resource (DEDICATED from the second call),
//! sessions are isolated, concurrent users of one session share one resource one at a time,
//! and `release_for_session` gives it back.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::{FakeManager, assert_no_leak, millis, settle, wait_until};
use pool_core::{Pool, Tier};

fn session_pool(fake: &FakeManager, warm_target: usize) -> Pool<FakeManager> {
    Pool::builder(fake.clone())
        .warm_target(warm_target)
        .session_awareness(true)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn awareness_off_gives_distinct_resources() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .session_awareness(false)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let a = pool.acquire_for_session("s1").await.unwrap();
    let b = pool.acquire_for_session("s1").await.unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(a.tier(), Tier::Dedicated);
    assert_ne!(b.tier(), Tier::Dedicated);
    assert!(!a.is_dedicated());
    drop((a, b));
    let c = pool.acquire_for_session("s1").await.unwrap();
    assert_eq!(c.tier(), Tier::Warm, "a plain acquire from the idle set");
    let s = pool.snapshot();
    assert_eq!(s.active_sessions, 0);
    assert_eq!(s.allocations_dedicated, 0);
    assert_eq!(s.dedicated, 0);
}

#[tokio::test(start_paused = true)]
async fn awareness_on_gives_the_same_resource_dedicated_from_the_second_call() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let first = pool.acquire_for_session("call-1").await.unwrap();
    assert_eq!(first.tier(), Tier::Cold, "first bind, no warm pool");
    assert!(first.is_dedicated());
    let id = first.id;
    drop(first);
    for _ in 0..3 {
        let again = pool.acquire_for_session("call-1").await.unwrap();
        assert_eq!(again.tier(), Tier::Dedicated);
        assert_eq!(again.id, id, "the session got its own resource back");
    }
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.created(), 1);
    assert_eq!(fake.closed(), 0, "a parked session resource is not closed");
    assert_eq!((s.allocations_cold, s.allocations_dedicated), (1, 3));
    assert_eq!(s.active_sessions, 1);
    assert_eq!(s.dedicated, 1);
    assert_eq!(s.in_use, 1, "a parked session resource counts as in use");
    assert_eq!(s.warm_pool_size, 0);
}

#[tokio::test(start_paused = true)]
async fn first_bind_takes_a_warm_resource_when_there_is_one() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 1);
    pool.prepare().await.unwrap();
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    assert_eq!(g.id, 0);
    drop(g);
    assert_eq!(
        pool.snapshot().warm_pool_size,
        0,
        "the session keeps it; it does not go back to the idle set"
    );
    assert_eq!(
        pool.acquire_for_session("s").await.unwrap().tier(),
        Tier::Dedicated
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_are_isolated() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let a = pool.acquire_for_session("alice").await.unwrap();
    let b = pool.acquire_for_session("bob").await.unwrap();
    assert_ne!(a.id, b.id, "two sessions never share a resource");
    let (a_id, b_id) = (a.id, b.id);
    drop((a, b));
    let a = pool.acquire_for_session("alice").await.unwrap();
    let b = pool.acquire_for_session("bob").await.unwrap();
    assert_eq!((a.tier(), b.tier()), (Tier::Dedicated, Tier::Dedicated));
    assert_eq!((a.id, b.id), (a_id, b_id));
    drop((a, b));
    assert!(pool.release_for_session("alice").await);
    let b = pool.acquire_for_session("bob").await.unwrap();
    assert_eq!(
        b.tier(),
        Tier::Dedicated,
        "releasing alice leaves bob alone"
    );
    assert_eq!(b.id, b_id);
    assert_eq!(pool.snapshot().active_sessions, 1);
}

#[tokio::test(start_paused = true)]
async fn release_for_session_returns_true_then_false_and_resets_into_the_idle_set() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 1);
    pool.prepare().await.unwrap();
    let g = pool.acquire_for_session("s").await.unwrap();
    let id = g.id;
    drop(g);
    assert_eq!(pool.snapshot().active_sessions, 1);

    assert!(pool.release_for_session("s").await, "the session existed");
    assert!(!pool.release_for_session("s").await, "already released");
    assert_eq!(fake.reset_calls(), 1, "reset once, before reuse");

    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.active_sessions, 0);
    assert_eq!(s.dedicated, 0);
    assert_eq!(s.warm_pool_size, 1, "back in the idle set (below target)");
    assert_eq!(fake.closed(), 0);

    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    assert_eq!(g.id, id);
    assert_eq!(g.resets, 1, "the per-session state was cleared");

    // A new session with the same id starts over (no DEDICATED).
    drop(g);
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_ne!(g.tier(), Tier::Dedicated);
}

#[tokio::test(start_paused = true)]
async fn release_for_session_closes_when_the_idle_set_is_full_or_reset_fails() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let id = pool.acquire_for_session("full").await.unwrap().id;
    assert!(pool.release_for_session("full").await);
    settle().await;
    assert_eq!(fake.closed_ids(), vec![id], "target 0: closed, not kept");

    let fake = FakeManager::new();
    let pool = session_pool(&fake, 2);
    let id = pool.acquire_for_session("bad-reset").await.unwrap().id;
    fake.set_reset_failing(true);
    assert!(pool.release_for_session("bad-reset").await);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id], "a failed reset closes it");
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.dedicated, 0);

    let fake = FakeManager::new();
    let pool = session_pool(&fake, 2);
    let g = pool.acquire_for_session("dead").await.unwrap();
    let id = g.id;
    drop(g);
    fake.set_ready(id, false);
    assert!(pool.release_for_session("dead").await);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id], "a dead one is closed");
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.size, 0);
}

#[tokio::test(start_paused = true)]
async fn a_not_ready_dedicated_resource_is_replaced_and_not_reported_dedicated() {
    // No warm resource left: the replacement is COLD.
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let old = pool.acquire_for_session("s").await.unwrap().id;
    fake.set_ready(old, false);
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Cold, "replaced by a created one");
    assert_ne!(g.id, old);
    let new = g.id;
    drop(g);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![old], "the dead one was closed");
    assert_eq!(s.allocations_dedicated, 0);
    assert_eq!(s.dedicated, 1);
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(
        (g.tier(), g.id),
        (Tier::Dedicated, new),
        "the replacement is bound"
    );
    drop(g);

    // A warm resource available: the replacement is WARM.
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 2);
    pool.prepare().await.unwrap();
    let old = pool.acquire_for_session("s").await.unwrap().id;
    fake.set_ready(old, false);
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Warm, "replaced from the idle set");
    assert_ne!(g.id, old);
    drop(g);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![old]);
    assert_eq!((s.allocations_warm, s.allocations_dedicated), (2, 0));
    assert_eq!(s.dedicated, 1);
}

#[tokio::test(start_paused = true)]
async fn absent_or_empty_session_id_behaves_like_no_session() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 1);
    pool.prepare().await.unwrap();

    let g = pool.acquire_for_session("").await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    assert!(!g.is_dedicated());
    let id = g.id;
    drop(g);
    let s = pool.snapshot();
    assert_eq!(s.active_sessions, 0, "no session was made for an empty id");
    assert_eq!(s.warm_pool_size, 1, "it went back to the idle set");

    let a = pool.acquire_for_session("").await.unwrap();
    let b = pool.acquire_for_session("").await.unwrap();
    assert_eq!(a.id, id);
    assert_ne!(a.id, b.id, "no sharing between empty ids");
    assert_eq!(b.tier(), Tier::Cold);
    drop((a, b));

    assert!(!pool.release_for_session("").await);
    assert!(!pool.release_for_session("never-seen").await);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.allocations_dedicated, 0);
    assert_eq!(fake.reset_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_acquires_for_one_session_share_one_resource() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let bound = pool.acquire_for_session("s").await.unwrap().id;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let pool = pool.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let g = pool.acquire_for_session("s").await.unwrap();
            seen.lock().unwrap().push((g.id, g.tier()));
            tokio::time::sleep(millis(10)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter()
            .all(|&(id, tier)| id == bound && tier == Tier::Dedicated),
        "{seen:?}"
    );
    assert_eq!(fake.created(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_acquires_for_one_session_create_exactly_one() {
    let fake = FakeManager::new().with_create_latency(millis(300));
    let pool = session_pool(&fake, 0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let pool = pool.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let g = pool.acquire_for_session("new-call").await.unwrap();
            seen.lock().unwrap().push((g.id, g.tier()));
            tokio::time::sleep(millis(5)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let ids: HashSet<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 1, "one resource for the session: {seen:?}");
    assert_eq!(fake.create_calls(), 1, "exactly one create");
    let cold = seen.iter().filter(|(_, t)| *t == Tier::Cold).count();
    let dedicated = seen.iter().filter(|(_, t)| *t == Tier::Dedicated).count();
    assert_eq!((cold, dedicated), (1, 9), "{seen:?}");
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.active_sessions, 1);
    assert_eq!(s.size, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_users_of_one_session_are_serialised() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let held = pool.acquire_for_session("s").await.unwrap();
    let id = held.id;
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let g = pool.acquire_for_session("s").await.unwrap();
            (g.id, g.tier())
        })
    };
    tokio::time::sleep(millis(10_000)).await;
    assert!(
        !second.is_finished(),
        "a second user must wait for the first, not get a duplicate"
    );
    assert_eq!(fake.create_calls(), 1);
    drop(held);
    assert_eq!(second.await.unwrap(), (id, Tier::Dedicated));
}

#[tokio::test(start_paused = true)]
async fn discarding_a_session_resource_unbinds_it() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let g = pool.acquire_for_session("s").await.unwrap();
    let id = g.id;
    g.discard();
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id]);
    assert_eq!(s.dedicated, 0);
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Cold, "a fresh bind, not DEDICATED");
    assert_ne!(g.id, id);
}

#[tokio::test(start_paused = true)]
async fn release_for_session_waits_for_the_current_user() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 1);
    let held = pool.acquire_for_session("s").await.unwrap();
    let id = held.id;
    let release = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.release_for_session("s").await })
    };
    wait_until(&pool, "session removed from the map", |s| {
        s.active_sessions == 0
    })
    .await;
    tokio::time::sleep(millis(100)).await;
    assert!(!release.is_finished(), "release waits for the in-use guard");
    assert_eq!(fake.reset_calls(), 0, "no reset while in use");
    drop(held);
    assert!(release.await.unwrap());
    assert_eq!(fake.reset_calls(), 1);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.dedicated, 0);
    assert_eq!(s.warm_pool_size, 1);
    let g = pool.acquire().await.unwrap();
    assert_eq!((g.id, g.tier()), (id, Tier::Warm));
}

/// Ids are compared byte for byte whatever their length: short ones are stored inline in
/// the session's slot and long ones on the heap, and ids that differ only past the inline
/// length, or share a prefix, or are not ASCII, are still different sessions.
#[tokio::test(start_paused = true)]
async fn ids_of_every_length_are_distinct_sessions() {
    let fake = FakeManager::new();
    let pool = session_pool(&fake, 0);
    let long = "c".repeat(300);
    let ids = [
        "a".to_owned(),
        "550e8400-e29b-41d4-a716-446655440000".to_owned(),
        "x".repeat(46),
        "x".repeat(47),
        "x".repeat(45),
        format!("{long}-1"),
        format!("{long}-2"),
        "appel-über-café-☎".to_owned(),
    ];
    let mut bound = Vec::new();
    for id in &ids {
        let first = pool.acquire_for_session(id).await.unwrap();
        assert_ne!(first.tier(), Tier::Dedicated, "{id:?} is a new session");
        bound.push(first.id);
    }
    assert_eq!(
        bound.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "each id bound its own resource"
    );
    assert_eq!(pool.snapshot().active_sessions, ids.len());
    for (id, resource) in ids.iter().zip(&bound) {
        let again = pool.acquire_for_session(id).await.unwrap();
        assert_eq!(again.tier(), Tier::Dedicated, "{id:?}");
        assert_eq!(again.id, *resource, "{id:?} got its own resource back");
    }
    for id in &ids {
        assert!(pool.release_for_session(id).await, "{id:?} was live");
        assert!(!pool.release_for_session(id).await, "{id:?} is gone");
    }
    assert_eq!(pool.snapshot().active_sessions, 0);
}
