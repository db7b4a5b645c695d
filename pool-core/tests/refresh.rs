//! Proactive refresh: idle resources are replaced before `max_age` / `max_idle` (with
//! jitter), so steady traffic across several expiry periods never meets an expired resource
//! and never pays a COLD connect.

mod common;

use std::collections::HashSet;

use common::{FakeManager, assert_no_leak, millis, secs};
use pool_core::{Pool, Tier};

#[tokio::test(start_paused = true)]
async fn steady_traffic_across_several_max_age_periods_sees_zero_cold() {
    // The backend kills a connection at 60 s, like Azure at 10 minutes.
    let fake = FakeManager::new()
        .with_create_latency(millis(500))
        .with_expiry(secs(60));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .max_age(Some(secs(60)))
        .refresh_lead(secs(5))
        .refresh_jitter(secs(2))
        .refresh_interval(secs(30))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();

    // Five expiry periods of one short turn per second.
    for turn in 0..300 {
        tokio::time::sleep(millis(900)).await;
        let g = pool.acquire().await.unwrap();
        assert_eq!(g.tier(), Tier::Warm, "turn {turn} paid a connect");
        assert!(
            g.created_at.elapsed() < secs(60),
            "turn {turn} got a resource aged {:?}",
            g.created_at.elapsed()
        );
        tokio::time::sleep(millis(100)).await;
    }
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.allocations_cold, 0);
    assert_eq!(s.allocations_warm, 300);
    assert_eq!(fake.not_ready_seen(), 0, "no expired resource was ever met");
    assert!(
        s.created_total >= 2 + 2 * 4,
        "resources were replaced as they aged: {s:#?}"
    );
    assert!(
        (2..=4).contains(&s.warm_pool_size),
        "at the target, plus at most a target's worth of surplus absorbed from refills: {s:#?}"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_resources_are_refreshed_before_max_idle() {
    // The backend drops a connection unused for 180 s.
    let fake = FakeManager::new()
        .with_create_latency(millis(500))
        .with_idle_expiry(secs(180));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .max_idle(Some(secs(180)))
        .refresh_lead(secs(5))
        .refresh_jitter(secs(2))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();

    // Ten quiet minutes.
    tokio::time::sleep(secs(600)).await;
    let s = pool.snapshot();
    assert!(
        s.created_total >= 2 + 2 * 3,
        "idle resources were replaced: {s:#?}"
    );
    assert_eq!(s.warm_pool_size, 2);
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    assert!(g.created_at.elapsed() < secs(180));
    drop(g);
    assert_eq!(fake.not_ready_seen(), 0, "no idle-expired resource was met");

    // Resources in regular use are not idle: nothing is replaced.
    let created = fake.created();
    for _ in 0..120 {
        tokio::time::sleep(secs(10)).await;
        let g = pool.acquire().await.unwrap();
        assert_eq!(g.tier(), Tier::Warm);
        g.touch();
    }
    assert_eq!(fake.created(), created, "no churn for resources in use");
    assert_eq!(fake.not_ready_seen(), 0);
    assert_eq!(pool.snapshot().allocations_cold, 0);
    assert_no_leak(&pool, &fake).await;
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refresh_jitter_spreads_replacements_of_resources_created_together() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(4)
        .background_warmup(true)
        .max_age(Some(secs(60)))
        .refresh_lead(secs(5))
        .refresh_jitter(secs(10))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let start = fake.create_times()[0];
    tokio::time::sleep(secs(58)).await;
    let times = fake.create_times();
    let replacements: HashSet<_> = times[4..].iter().map(|t| *t - start).collect();
    assert!(
        times.len() >= 8,
        "all four were replaced before expiry: {times:?}"
    );
    assert!(
        replacements.len() >= 2,
        "replacements were spread by jitter, not made in one instant: {replacements:?}"
    );
    assert!(
        replacements
            .iter()
            .all(|d| *d <= secs(55) + millis(2) && *d >= secs(45))
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_resource_past_max_age_is_closed_on_return() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .max_age(Some(secs(60)))
        .build()
        .unwrap();
    let g = pool.acquire().await.unwrap();
    let id = g.id;
    tokio::time::sleep(secs(61)).await;
    drop(g);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id]);
    assert_eq!(s.warm_pool_size, 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_resource_past_max_age_is_replaced() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .session_awareness(true)
        .max_age(Some(secs(60)))
        .build()
        .unwrap();
    let id = pool.acquire_for_session("s").await.unwrap().id;
    tokio::time::sleep(secs(61)).await;
    let g = pool.acquire_for_session("s").await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert_ne!(g.id, id);
    drop(g);
    assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id]);
}

#[tokio::test(start_paused = true)]
async fn a_session_resource_past_max_age_is_closed_when_the_session_is_released() {
    // Releasing a session gives its resource back like any return: one past max_age is
    // closed, never parked in the idle set or handed to a caller waiting at that moment.
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .session_awareness(true)
        .max_age(Some(secs(60)))
        .build()
        .unwrap();
    let g = pool.acquire_for_session("s").await.unwrap();
    let id = g.id;
    drop(g);
    tokio::time::sleep(secs(61)).await;
    assert!(pool.release_for_session("s").await);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![id]);
    assert_eq!(s.warm_pool_size, 0, "{s:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_caller_waiting_when_an_expired_session_is_released_gets_a_fresh_resource() {
    // The pool is full (max_size 1): a plain acquire waits. Releasing the session whose
    // resource outlived max_age must close that resource and let the waiter create one
    // (COLD), not hand the expired one over as WARM.
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(1)
        .session_awareness(true)
        .max_age(Some(secs(60)))
        .build()
        .unwrap();
    let g = pool.acquire_for_session("s").await.unwrap();
    let id = g.id;
    drop(g);
    tokio::time::sleep(secs(61)).await;
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await })
    };
    common::settle().await;
    assert!(pool.release_for_session("s").await);
    let g = waiter.await.unwrap().unwrap();
    assert_ne!(
        g.id,
        id,
        "the expired resource was handed over as {}",
        g.tier()
    );
    assert_eq!(g.tier(), Tier::Cold);
    assert_eq!(fake.closed_ids(), vec![id]);
    drop(g);
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_resource_past_max_age_is_never_handed_out() {
    // Without the maintainer nothing refreshes the idle set, but a resource older than
    // max_age must still not be handed out: it is closed and replaced.
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .max_age(Some(secs(60)))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    tokio::time::sleep(secs(61)).await;
    let g = pool.acquire().await.unwrap();
    assert!(
        g.created_at.elapsed() < secs(60),
        "handed out a resource aged {:?} (max_age 60 s) as {}",
        g.created_at.elapsed(),
        g.tier()
    );
    assert_eq!(g.tier(), Tier::Cold);
    drop(g);
    assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.closed_ids(), vec![0]);
}
