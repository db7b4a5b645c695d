//! `Manager::warm` runs once on every new resource, pre-warmed or cold; a failed warm-up is
//! counted and that resource is closed, never handed out.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs};
use pool_core::{Pool, PoolError, Tier};

#[tokio::test(start_paused = true)]
async fn warm_runs_on_pre_warmed_resources() {
    let fake = FakeManager::new().with_warm_latency(millis(50));
    let pool = Pool::builder(fake.clone()).warm_target(3).build().unwrap();
    pool.prepare().await.unwrap();
    assert_eq!(fake.warm_calls(), 3);
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    assert!(g.warmed, "a WARM resource has been warmed");
}

#[tokio::test(start_paused = true)]
async fn warm_runs_on_cold_resources() {
    let fake = FakeManager::new().with_warm_latency(millis(50));
    let pool = Pool::builder(fake.clone()).build().unwrap();
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert!(
        g.warmed,
        "a COLD resource is warmed before it is handed out"
    );
    assert_eq!(fake.warm_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn warm_runs_once_per_resource_not_on_reuse() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .session_awareness(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    for _ in 0..3 {
        drop(pool.acquire().await.unwrap());
    }
    for _ in 0..3 {
        drop(pool.acquire_for_session("s").await.unwrap());
    }
    assert_eq!(fake.created(), 1);
    assert_eq!(fake.warm_calls(), 1, "warm-up is for fresh resources only");
}

#[tokio::test(start_paused = true)]
async fn a_failed_warm_up_on_the_cold_path_is_counted_and_not_handed_out() {
    let fake = FakeManager::new();
    fake.fail_next_warm(1);
    let pool = Pool::builder(fake.clone()).build().unwrap();
    let err = pool.acquire().await.unwrap_err();
    match &err {
        PoolError::Warm(e) => assert!(e.0.contains("warm-up rejected"), "{e}"),
        other => panic!("expected PoolError::Warm, got {other:?}"),
    }
    assert!(err.to_string().contains("warm"), "{err}");
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warmup_failures, 1);
    assert_eq!(s.allocations_total, 0, "nothing was handed out");
    assert_eq!(
        fake.closed_ids(),
        vec![0],
        "the unwarmed resource was closed"
    );
    assert_eq!(s.size, 0);
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("warm-up rejected"),
        "{:?}",
        s.last_error
    );

    // The pool recovers: the next acquire is a warmed COLD resource.
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert!(g.warmed);
    assert_eq!(g.id, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_warm_up_during_prepare_is_counted_and_not_kept() {
    let fake = FakeManager::new();
    fake.fail_next_warm(1);
    let pool = Pool::builder(fake.clone()).warm_target(3).build().unwrap();
    let err = pool.prepare().await.unwrap_err();
    assert!(matches!(err, PoolError::Warm(_)), "{err:?}");
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warmup_failures, 1);
    assert_eq!(s.warm_pool_size, 2, "only warmed resources are idle");
    assert_eq!(fake.closed(), 1);

    // Every resource the pool hands out was warmed.
    let guards = [
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
    ];
    let tiers: Vec<_> = guards.iter().map(|g| g.tier()).collect();
    assert_eq!(tiers, [Tier::Warm, Tier::Warm, Tier::Cold]);
    assert!(guards.iter().all(|g| g.warmed));
}

#[tokio::test(start_paused = true)]
async fn failed_background_warm_ups_are_counted_and_the_maintainer_recovers() {
    let fake = FakeManager::new();
    fake.set_warm_failing(true);
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .backoff_base(millis(100))
        .backoff_max(secs(1))
        .build()
        .unwrap();
    tokio::time::sleep(secs(5)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert!(s.warmup_failures >= 2, "{s:#?}");
    assert_eq!(s.warm_pool_size, 0, "no unwarmed resource is kept idle");
    assert_eq!(fake.created(), fake.closed());

    fake.set_warm_failing(false);
    tokio::time::sleep(secs(5)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 2, "refilled once warm-ups succeed");
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    assert!(g.warmed);
    drop(g);
    pool.shutdown().await;
}

/// A backend whose caller's first request proves the connection: it skips the warm-up on
/// the COLD path only.
#[derive(Clone)]
struct ProvenByRequest(FakeManager);

impl pool_core::Manager for ProvenByRequest {
    type Resource = common::Res;
    type Error = common::FakeError;

    async fn create(&self) -> Result<common::Res, common::FakeError> {
        self.0.create().await
    }
    async fn warm(&self, r: &mut common::Res) -> Result<(), common::FakeError> {
        self.0.warm(r).await
    }
    async fn warm_for_caller(&self, _r: &mut common::Res) -> Result<(), common::FakeError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn cold_creates_use_warm_for_caller_and_prewarming_uses_warm() {
    let fake = FakeManager::new();
    let pool = Pool::builder(ProvenByRequest(fake.clone()))
        .warm_target(1)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    assert_eq!(fake.warm_calls(), 1, "the prewarmed resource was warmed");
    let warm = pool.acquire().await.unwrap();
    assert!(warm.warmed);
    let cold = pool.acquire().await.unwrap();
    assert_eq!(cold.tier(), Tier::Cold);
    assert!(!cold.warmed, "the override skipped the warm-up");
    assert_eq!(fake.warm_calls(), 1);

    // Without an override, the COLD path warms as before.
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).build().unwrap();
    let cold = pool.acquire().await.unwrap();
    assert_eq!(cold.tier(), Tier::Cold);
    assert!(cold.warmed);
}
