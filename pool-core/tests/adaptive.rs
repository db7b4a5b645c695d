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

/// Open-loop arrivals: `per_second` acquires a second for `seconds` seconds, each in its
/// own task (a slow COLD create does not hold the next arrival back), held for 5 ms.
async fn arrivals(pool: &Pool<FakeManager>, per_second: u64, seconds: u64) {
    let gap = millis(1000 / per_second);
    for _ in 0..per_second * seconds {
        let pool = pool.clone();
        tokio::spawn(async move {
            let g = pool.acquire().await.unwrap();
            tokio::time::sleep(millis(5)).await;
            drop(g);
        });
        tokio::time::sleep(gap).await;
    }
}

/// The step-load shape: a quiet minute, then ten times the rate. The first seconds of
/// traffic start a panic; it used to expire in the middle of the later rise and drop the
/// target back to the stable window's lagging answer (12 → 6 in a step-load run).
#[tokio::test(start_paused = true)]
async fn the_target_does_not_fall_in_the_middle_of_a_rise() {
    let fake = FakeManager::new().with_create_latency(millis(800));
    let pool = adaptive_pool(&fake, 200).build().unwrap();
    pool.prepare().await.unwrap();
    arrivals(&pool, 2, 60).await;
    let rising = {
        let pool = pool.clone();
        tokio::spawn(async move { arrivals(&pool, 20, 20).await })
    };
    let mut targets = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(secs(1)).await;
        targets.push(pool.snapshot().warm_pool_target);
    }
    rising.await.unwrap();
    assert!(
        targets.windows(2).all(|pair| pair[1] >= pair[0]),
        "the target fell during the rise: {targets:?}"
    );
    assert!(*targets.last().unwrap() > 20, "{targets:?}");
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
        .create_rate_limit(Some(1.0))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    let before = pool.snapshot();
    let started = tokio::time::Instant::now();
    let traffic = {
        let pool = pool.clone();
        tokio::spawn(async move { load(&pool, 20, 4).await })
    };
    // The reason is a moment's state (the ramp holds a refill back until its next token),
    // so it is sampled often rather than once a second.
    let mut saw_ramp_limited = false;
    while !traffic.is_finished() {
        saw_ramp_limited |= pool.snapshot().warm_target_reason == TargetReason::RampLimited;
        tokio::time::sleep(millis(50)).await;
    }
    traffic.await.unwrap();
    let s = pool.snapshot();
    assert!(saw_ramp_limited, "{s:#?}");
    let background = (s.created_total - before.created_total) - s.allocations_cold;
    // One a second while the traffic ran, plus the bucket's initial token.
    let allowed = 1 + started.elapsed().as_secs();
    assert!(
        background <= allowed,
        "{background} background creates, {allowed} allowed"
    );
    assert!(
        background >= 3,
        "the ramp still lets creates through: {background}"
    );
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
