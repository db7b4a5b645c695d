//! The adaptive warm target rises within seconds of a burst, falls over a minute, stays
//! within `warm_target..=max_size`, and honours the create ramp limit; without the option
//! the target is fixed. Also: hand-outs that waited for a returned resource are counted
//! apart from plain WARM ones.

mod common;

use common::{FakeManager, millis, secs};
use pool_core::{Pool, TargetReason, Tier};

fn adaptive_pool(fake: &FakeManager, max_size: usize) -> pool_core::PoolBuilder<FakeManager> {
    Pool::builder(fake.clone())
        .warm_target(2)
        .max_size(max_size)
        .background_warmup(true)
        .adaptive_warm_target(true)
}

/// `per_second` short acquires a second for `seconds` seconds.
async fn load(pool: &Pool<FakeManager>, per_second: u64, seconds: u64) {
    let gap = millis(1000 / per_second);
    for _ in 0..per_second * seconds {
        let g = pool.acquire().await.unwrap();
        tokio::time::sleep(millis(5)).await;
        drop(g);
        tokio::time::sleep(gap - millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_target_rises_fast_on_a_burst_and_falls_slowly() {
    let fake = FakeManager::new().with_create_latency(millis(200));
    let pool = adaptive_pool(&fake, 40).build().unwrap();
    pool.prepare().await.unwrap();
    let s = pool.snapshot();
    assert_eq!(
        (
            s.warm_pool_target,
            s.warm_target_floor,
            s.warm_target_reason
        ),
        (2, 2, TargetReason::Floor)
    );

    load(&pool, 20, 3).await;
    let s = pool.snapshot();
    assert!(s.warm_pool_target > 2, "rose within 3 s: {s:#?}");
    assert_eq!(s.warm_target_reason, TargetReason::Demand);
    load(&pool, 20, 5).await;
    let peak = pool.snapshot().warm_pool_target;
    // 20/s × 0.2 s = 4 during one create, + 3√4 = 10.
    assert_eq!(peak, 10, "Little's law plus Poisson headroom");
    assert!(pool.snapshot().warm_pool_size >= 6, "the idle set followed");

    tokio::time::sleep(secs(10)).await;
    assert_eq!(
        pool.snapshot().warm_pool_target,
        peak,
        "no drop 10 s after the burst"
    );
    tokio::time::sleep(secs(120)).await;
    let s = pool.snapshot();
    assert_eq!(
        (s.warm_pool_target, s.warm_target_reason),
        (2, TargetReason::Floor)
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_target_never_exceeds_max_size() {
    let fake = FakeManager::new().with_create_latency(millis(500));
    let pool = adaptive_pool(&fake, 5).build().unwrap();
    pool.prepare().await.unwrap();
    load(&pool, 50, 4).await;
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_target, 5, "{s:#?}");
    assert!(s.size <= 5);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn background_creates_respect_the_ramp_limit() {
    let fake = FakeManager::new().with_create_latency(millis(200));
    let pool = adaptive_pool(&fake, 40)
        .create_rate_limit(Some(2.0))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let before = pool.snapshot();
    let mut saw_ramp_limited = false;
    for _ in 0..4 {
        load(&pool, 20, 1).await;
        saw_ramp_limited |= pool.snapshot().warm_target_reason == TargetReason::RampLimited;
    }
    let s = pool.snapshot();
    assert!(saw_ramp_limited, "{s:#?}");
    let background = (s.created_total - before.created_total) - s.allocations_cold;
    // Four seconds at 2 per second, plus the initial one-second burst.
    assert!(background <= 2 * 4 + 2, "{background} background creates");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_the_option_the_target_is_fixed() {
    let fake = FakeManager::new().with_create_latency(millis(200));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .max_size(40)
        .background_warmup(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    load(&pool, 20, 5).await;
    let s = pool.snapshot();
    assert_eq!(
        (s.warm_pool_target, s.warm_target_reason),
        (2, TargetReason::Floor)
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hand_out_that_waited_for_a_returned_resource_is_counted_apart() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|g| g.tier()) })
    };
    tokio::time::sleep(millis(300)).await;
    drop(held);
    assert_eq!(waiting.await.unwrap().unwrap(), Tier::Warm);
    let s = pool.snapshot();
    assert_eq!(s.waited_total, 1);
    assert_eq!(s.wait_latency.samples, 1);
    let p50 = s.wait_latency.p50_us.unwrap();
    assert!((300_000.0..=375_000.0).contains(&p50), "{p50}");
    assert_eq!(s.allocations_warm, 1, "still WARM: no connect was paid");
}
