//! No churn: a resource returned while a refill is in flight is kept rather than closed,
//! and the refill's resource is absorbed as short-lived surplus, so steady traffic creates
//! nothing new; surplus nobody dips into is trimmed by the maintainer.

mod common;

use common::{FakeManager, assert_no_leak, millis, secs, settle};
use pool_core::{Pool, Tier};

fn maintained_pool(fake: &FakeManager) -> Pool<FakeManager> {
    Pool::builder(fake.clone())
        .warm_target(2)
        .background_warmup(true)
        .refresh_interval(secs(30))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_return_racing_a_refill_closes_and_creates_nothing_needlessly() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = maintained_pool(&fake);
    pool.prepare().await.unwrap();
    assert_eq!(fake.created(), 2);
    for _ in 0..10 {
        let g = pool.acquire().await.unwrap();
        assert_eq!(g.tier(), Tier::Warm);
        // The refill started by this acquire is still in flight when the resource returns.
        tokio::time::sleep(millis(10)).await;
        drop(g);
        tokio::time::sleep(millis(200)).await;
    }
    settle().await;
    assert_eq!(
        fake.closed(),
        0,
        "no returned or refilled resource was closed while traffic could use it"
    );
    assert!(
        fake.create_calls() <= 3,
        "one refill absorbed, then none: {} creates",
        fake.create_calls()
    );
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn surplus_nobody_uses_is_trimmed_back_to_the_target() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = maintained_pool(&fake);
    pool.prepare().await.unwrap();
    let g = pool.acquire().await.unwrap();
    tokio::time::sleep(millis(10)).await;
    drop(g);
    tokio::time::sleep(millis(200)).await;
    assert_eq!(pool.snapshot().warm_pool_size, 3, "surplus kept briefly");
    // Surplus lives between one and two housekeeping periods: a pass trims what the idle
    // set never dipped into since the previous pass.
    tokio::time::sleep(secs(61)).await;
    settle().await;
    let s = pool.snapshot();
    assert_eq!(s.warm_pool_size, 2, "{s:#?}");
    assert_eq!(fake.closed(), 1);
    assert_no_leak(&pool, &fake).await;
}
