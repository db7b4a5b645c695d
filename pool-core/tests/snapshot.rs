//! `snapshot()` carries the Python pool's `PoolMetrics` fields plus the additions, consistently, and its totals
//! add up after a mixed sequence of operations.

mod common;

#[cfg(feature = "serde")]
use common::settle;
use common::{FakeManager, assert_no_leak, millis, wait_until};
use pool_core::{Pool, Tier};

#[tokio::test(start_paused = true)]
async fn snapshot_contents() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .name("speech-tts")
        .warm_target(2)
        .max_size(5)
        .session_awareness(true)
        .build()
        .unwrap();
    let s = pool.snapshot();
    assert_eq!(s.name, "speech-tts");
    assert!(!s.ready);
    assert_eq!(s.warm_pool_target, 2);
    assert_eq!(s.max_size, 5);
    assert!(s.session_awareness);
    assert!(!s.background_warmup);
    assert_eq!(s.last_error, None);

    pool.prepare().await.unwrap();
    let plain = pool.acquire().await.unwrap();
    drop(pool.acquire_for_session("call-1").await.unwrap());

    let s = pool.snapshot();
    assert!(s.ready, "ready once the target was reached");
    assert_eq!(s.warm_pool_size, 0);
    assert_eq!(s.active_sessions, 1);
    assert_eq!(s.size, 2);
    assert_eq!(
        s.in_use, 2,
        "the plain guard and the parked session resource"
    );
    assert_eq!(s.dedicated, 1);
    assert_eq!(s.waiting, 0);
    assert_eq!(s.creating, 0);
    assert_eq!(s.created_total, 2);
    assert_eq!(s.closed_total, 0);
    assert_eq!(s.create_failures, 0);
    assert_eq!(s.warmup_failures, 0);
    assert_eq!(s.warmup_cycles, 0);
    assert_eq!((s.allocations_warm, s.allocations_total), (2, 2));
    drop(plain);
    assert_eq!(pool.snapshot().warm_pool_size, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_gauges_show_creating_and_waiting() {
    let fake = FakeManager::new().with_create_latency(millis(1000));
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let creator = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.unwrap() })
    };
    wait_until(&pool, "a create in flight", |s| s.creating == 1).await;
    let s = pool.snapshot();
    assert_eq!(s.size, 1, "a resource being created counts as live");
    assert_eq!(s.in_use, 0);

    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.unwrap().tier() })
    };
    wait_until(&pool, "a waiter queued", |s| s.waiting >= 1).await;
    let held = creator.await.unwrap();
    let s = pool.snapshot();
    assert_eq!((s.creating, s.in_use, s.size), (0, 1, 1));
    assert_eq!(s.waiting, 1, "{s:#?}");
    drop(held);
    assert_eq!(waiter.await.unwrap(), Tier::Warm);
    assert_eq!(pool.snapshot().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_totals_after_a_mixed_sequence() {
    let fake = FakeManager::new().with_create_latency(millis(20));
    let pool = Pool::builder(fake.clone())
        .warm_target(2)
        .session_awareness(true)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();

    let w1 = pool.acquire().await.unwrap(); // WARM
    let w2 = pool.acquire().await.unwrap(); // WARM
    let c1 = pool.acquire().await.unwrap(); // COLD
    drop((w1, w2, c1)); // two back to idle, one closed
    let s1 = pool.acquire_for_session("a").await.unwrap(); // WARM
    drop(s1);
    for _ in 0..3 {
        drop(pool.acquire_for_session("a").await.unwrap()); // DEDICATED x3
    }
    let s2 = pool.acquire_for_session("b").await.unwrap(); // WARM
    drop(s2);
    let c2 = pool.acquire_for_session("c").await.unwrap(); // COLD
    drop(c2);
    fake.fail_next(1);
    assert!(pool.acquire().await.is_err()); // failed COLD: not an allocation
    assert!(pool.release_for_session("a").await); // back to idle
    drop(pool.acquire().await.unwrap()); // WARM

    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.allocations_warm, 5);
    assert_eq!(s.allocations_cold, 2);
    assert_eq!(s.allocations_dedicated, 3);
    assert_eq!(
        s.allocations_total,
        s.allocations_warm + s.allocations_cold + s.allocations_dedicated
    );
    assert_eq!(s.allocations_total, 10);
    assert_eq!(s.create_failures, 1);
    assert_eq!(s.created_total, 4);
    assert_eq!(s.closed_total, 1);
    assert_eq!(s.active_sessions, 2);
    assert!(s.last_error.is_some());

    // Latency: every COLD acquire is timed; WARM and DEDICATED are sampled.
    let lat = &s.acquire_latency;
    assert_eq!(lat.cold.samples, 2);
    assert!(lat.cold.p50_us.is_some() && lat.cold.p99_us.is_some());
    assert!(lat.cold.p50_us.unwrap() <= lat.cold.p99_us.unwrap());
    assert!(
        lat.cold.p50_us.unwrap() >= 20_000.0,
        "a COLD acquire includes the 20 ms create: {lat:?}"
    );
    assert!(lat.warm.samples <= s.allocations_warm);
    assert!(lat.dedicated.samples <= s.allocations_dedicated);
    for tier in Tier::ALL {
        let summary = lat.get(tier);
        assert_eq!(summary.samples == 0, summary.p50_us.is_none(), "{tier}");
    }
}

/// Needs the `serde` feature: `cargo test -p pool-core --features serde`.
#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn snapshot_serialises_with_the_seed_field_names() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .name("speech-stt")
        .warm_target(1)
        .build()
        .unwrap();
    pool.prepare().await.unwrap();
    drop(pool.acquire().await.unwrap());
    settle().await;
    let json = serde_json::to_value(pool.snapshot()).unwrap();
    for key in [
        "name",
        "ready",
        "warm_pool_size",
        "warm_pool_target",
        "session_awareness",
        "active_sessions",
        "background_warmup",
        "allocations_total",
        "allocations_dedicated",
        "allocations_warm",
        "allocations_cold",
        "warmup_cycles",
        "warmup_failures",
        "max_size",
        "in_use",
        "waiting",
        "creating",
        "closing",
        "created_total",
        "closed_total",
        "create_failures",
        "last_error",
        "acquire_latency",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["name"], "speech-stt");
    assert_eq!(json["warm_pool_size"], 1);
    assert_eq!(json["allocations_warm"], 1);
    for tier in ["dedicated", "warm", "cold"] {
        let t = &json["acquire_latency"][tier];
        assert!(
            t.get("p50_us").is_some() && t.get("p99_us").is_some(),
            "{json}"
        );
    }
    assert_eq!(serde_json::to_value(Tier::Dedicated).unwrap(), "dedicated");
    assert_eq!(serde_json::to_value(Tier::Warm).unwrap(), "warm");
    assert_eq!(serde_json::to_value(Tier::Cold).unwrap(), "cold");
    assert_eq!(Tier::Cold.to_string(), "cold");
    assert_eq!(Tier::Warm.as_str(), "warm");
}
