//! Defaults: a pool built from a manager alone behaves like the Python
//! `OnDemandResourcePool`, and the builder's documented defaults hold.

mod common;

use std::time::Duration;

use common::{FakeManager, assert_no_leak, secs};
use pool_core::{BuildError, Pool, PoolConfig, Tier};

#[test]
fn config_defaults_are_the_documented_ones() {
    let c = PoolConfig::default();
    // The Python pool's names and values.
    assert_eq!(c.name, "pool");
    assert_eq!(c.warm_target, 0, "warm size 0: every plain acquire is COLD");
    assert!(!c.session_awareness);
    assert!(!c.background_warmup);
    assert_eq!(c.refresh_interval, secs(30));
    assert_eq!(c.session_max_age, secs(1800));
    // The additions, as documented on `PoolConfig`.
    assert_eq!(c.max_size, 64);
    assert_eq!(c.acquire_timeout, Some(secs(30)));
    assert_eq!(c.create_timeout, secs(30));
    assert_eq!(c.max_age, None);
    assert_eq!(c.max_idle, None);
    assert_eq!(c.refresh_lead, secs(5));
    assert_eq!(c.refresh_jitter, secs(2));
    assert_eq!(c.create_concurrency, 4);
    assert_eq!(c.backoff_base, Duration::from_millis(100));
    assert_eq!(c.backoff_max, secs(30));
    assert_eq!(c.shutdown_timeout, secs(5));
    assert!(c.validate().is_ok(), "the defaults must be valid");
}

#[tokio::test(start_paused = true)]
async fn a_pool_from_a_manager_alone_uses_the_defaults() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).build().unwrap();
    assert_eq!(pool.name(), "pool");
    let c = pool.config();
    assert_eq!(c.warm_target, 0);
    assert_eq!(c.max_size, 64);
    assert!(!c.session_awareness);
    assert!(!c.background_warmup);

    let s = pool.snapshot();
    assert_eq!(s.name, "pool");
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.warm_pool_target, 0);
    assert!(!s.session_awareness);
    assert!(!s.background_warmup);
    assert_eq!(s.active_sessions, 0);
    assert_eq!(s.max_size, 64);
    assert!(s.ready, "a pool with warm target 0 is ready at once");
    assert_eq!(s.allocations_total, 0);
    assert_eq!(s.warmup_cycles, 0);
    assert_eq!(s.warmup_failures, 0);
    assert_eq!(s.size, 0);
    assert_eq!(s.created_total, 0);
    assert_eq!(
        pool.background_tasks(),
        0,
        "no maintainer without background_warmup"
    );
    assert_eq!(fake.create_calls(), 0, "building creates nothing");
}

#[tokio::test(start_paused = true)]
async fn default_pool_serves_every_plain_acquire_cold_and_closes_on_return() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).build().unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let g = pool.acquire().await.unwrap();
        assert_eq!(g.tier(), Tier::Cold);
        assert!(!g.is_dedicated());
        ids.push(g.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "every acquire got a new resource");
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.allocations_cold, 3);
    assert_eq!(s.allocations_warm, 0);
    assert_eq!(s.warm_pool_size, 0, "nothing is kept idle with target 0");
    assert_eq!(fake.closed(), 3, "every returned resource was closed");
}

#[tokio::test(start_paused = true)]
async fn default_pool_ignores_session_ids() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).build().unwrap();
    let a = pool.acquire_for_session("call-1").await.unwrap();
    let a_id = a.id;
    drop(a);
    let b = pool.acquire_for_session("call-1").await.unwrap();
    assert_eq!(b.tier(), Tier::Cold, "no session awareness by default");
    assert_ne!(b.id, a_id);
    assert_eq!(pool.snapshot().active_sessions, 0);
    assert!(!pool.release_for_session("call-1").await);
}

#[test]
fn builder_setters_reach_the_config() {
    let pool = Pool::builder(FakeManager::new())
        .name("speech-tts")
        .warm_target(3)
        .max_size(9)
        .session_awareness(true)
        .session_max_age(secs(60))
        .refresh_interval(secs(7))
        .acquire_timeout(None)
        .create_timeout(secs(4))
        .max_age(Some(secs(600)))
        .max_idle(Some(secs(180)))
        .refresh_lead(secs(6))
        .refresh_jitter(secs(1))
        .create_concurrency(2)
        .backoff_base(Duration::from_millis(50))
        .backoff_max(secs(8))
        .shutdown_timeout(secs(3))
        .build()
        .unwrap();
    let c = pool.config();
    assert_eq!(pool.name(), "speech-tts");
    assert_eq!(c.warm_target, 3);
    assert_eq!(c.max_size, 9);
    assert!(c.session_awareness);
    assert_eq!(c.session_max_age, secs(60));
    assert_eq!(c.refresh_interval, secs(7));
    assert_eq!(c.acquire_timeout, None);
    assert_eq!(c.create_timeout, secs(4));
    assert_eq!(c.max_age, Some(secs(600)));
    assert_eq!(c.max_idle, Some(secs(180)));
    assert_eq!(c.refresh_lead, secs(6));
    assert_eq!(c.refresh_jitter, secs(1));
    assert_eq!(c.create_concurrency, 2);
    assert_eq!(c.backoff_base, Duration::from_millis(50));
    assert_eq!(c.backoff_max, secs(8));
    assert_eq!(c.shutdown_timeout, secs(3));
    assert_eq!(pool.snapshot().warm_pool_target, 3);

    let whole = PoolConfig {
        name: "whole".into(),
        warm_target: 1,
        ..PoolConfig::default()
    };
    let pool = Pool::builder(FakeManager::new())
        .config(whole)
        .build()
        .unwrap();
    assert_eq!(pool.name(), "whole");
    assert_eq!(pool.config().warm_target, 1);
}

#[test]
fn invalid_configurations_are_rejected() {
    let invalid = |b: pool_core::PoolBuilder<FakeManager>, what: &str| match b.build() {
        Err(BuildError::Invalid(message)) => assert!(!message.is_empty(), "{what}"),
        other => panic!("{what}: expected BuildError::Invalid, got {other:?}"),
    };
    let b = || Pool::builder(FakeManager::new());
    invalid(b().max_size(0), "max_size 0");
    invalid(b().max_size(2).warm_target(3), "warm_target above max_size");
    invalid(b().create_concurrency(0), "create_concurrency 0");
    invalid(b().refresh_interval(Duration::ZERO), "refresh_interval 0");
    invalid(b().create_timeout(Duration::ZERO), "create_timeout 0");
    invalid(b().backoff_base(Duration::ZERO), "backoff_base 0");
    invalid(
        b().backoff_base(secs(2)).backoff_max(secs(1)),
        "backoff_max below backoff_base",
    );
    assert!(b().max_size(3).warm_target(3).build().is_ok());
}

#[test]
fn background_warmup_needs_a_runtime() {
    let built = Pool::builder(FakeManager::new())
        .background_warmup(true)
        .build();
    assert!(
        matches!(built, Err(BuildError::NoRuntime)),
        "expected NoRuntime, got {built:?}"
    );
    // Without background work a pool can be built anywhere.
    assert!(Pool::builder(FakeManager::new()).build().is_ok());
}
