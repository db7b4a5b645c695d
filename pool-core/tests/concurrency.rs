//! Concurrent acquires: exact tier accounting under concurrency, and a COLD create racing a
//! resource returned meanwhile.

mod common;

use std::collections::HashSet;

use common::{FakeManager, assert_no_leak, millis, wait_until};
use pool_core::{Pool, Tier};

#[tokio::test(start_paused = true)]
async fn ten_concurrent_acquires_on_a_pool_of_five_give_five_warm_and_five_cold() {
    let fake = FakeManager::new().with_create_latency(millis(100));
    let pool = Pool::builder(fake.clone()).warm_target(5).build().unwrap();
    pool.prepare().await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.unwrap() })
        })
        .collect();
    let mut guards = Vec::new();
    for t in tasks {
        guards.push(t.await.unwrap());
    }
    let warm = guards.iter().filter(|g| g.tier() == Tier::Warm).count();
    let cold = guards.iter().filter(|g| g.tier() == Tier::Cold).count();
    assert_eq!((warm, cold), (5, 5));
    let ids: HashSet<u64> = guards.iter().map(|g| g.id).collect();
    assert_eq!(ids.len(), 10, "ten distinct resources");
    let s = pool.snapshot();
    assert_eq!((s.allocations_warm, s.allocations_cold), (5, 5));
    assert_eq!(s.in_use, 10);
    assert_eq!(fake.created(), 10);
    drop(guards);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 5);
    assert_eq!(fake.closed(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_cold_create_races_a_returned_resource_and_the_loser_goes_idle() {
    let fake = FakeManager::new().with_create_latency(millis(1000));
    let pool = Pool::builder(fake.clone())
        .warm_target(1)
        .max_size(4)
        .build()
        .unwrap();
    let first = pool.acquire().await.unwrap();
    assert_eq!(first.tier(), Tier::Cold);
    let first_id = first.id;

    let racer = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.unwrap() })
    };
    wait_until(&pool, "the racer is creating", |s| s.creating == 1).await;
    tokio::time::sleep(millis(100)).await;
    drop(first);
    let won = racer.await.unwrap();
    assert_eq!(
        (won.id, won.tier()),
        (first_id, Tier::Warm),
        "the returned resource wins"
    );
    assert_eq!(fake.created(), 1, "the create is still running");

    // The create finishes later; its resource is the loser and goes to the idle set.
    tokio::time::sleep(millis(1500)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(fake.created(), 2);
    assert_eq!(s.warm_pool_size, 1, "the loser went to the idle set");
    assert_eq!(s.creating, 0);
    assert_eq!(fake.closed(), 0, "closed {:?}; {s:#?}", fake.closed_ids());
    assert_eq!((s.allocations_cold, s.allocations_warm), (1, 1));
    assert_eq!(s.in_use, 1);
    let next = pool.acquire().await.unwrap();
    assert_eq!((next.id, next.tier()), (1, Tier::Warm));
    drop((won, next));
}

#[tokio::test(start_paused = true)]
async fn a_cold_create_wins_when_nothing_comes_back() {
    let fake = FakeManager::new().with_create_latency(millis(500));
    let pool = Pool::builder(fake.clone()).warm_target(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert_ne!(g.id, held.id);
    drop((held, g));
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 1);
    assert_eq!(fake.closed(), 1);
}
