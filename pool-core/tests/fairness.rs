//! Callers waiting at max_size are served first-in, first-out: by a returned resource, by a
//! freed slot, and regardless of callers who gave up.

mod common;

use std::sync::{Arc, Mutex};

use common::{FakeManager, assert_no_leak, millis, wait_until};
use pool_core::{Pool, Tier};
use tokio::task::JoinHandle;

type Order = Arc<Mutex<Vec<(usize, Tier)>>>;

/// Spawns `n` waiters one after another, each queued before the next starts. Each records
/// its index when served, holds the resource 10 ms, then returns (or discards) it.
async fn spawn_waiters(
    pool: &Pool<FakeManager>,
    n: usize,
    discard: bool,
    order: &Order,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let before = pool.snapshot().waiting;
        let pool2 = pool.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let g = pool2.acquire().await.unwrap();
            order.lock().unwrap().push((i, g.tier()));
            tokio::time::sleep(millis(10)).await;
            if discard {
                g.discard();
            }
        }));
        wait_until(pool, "the waiter queued", |s| s.waiting == before + 1).await;
    }
    tasks
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_fifo_by_returned_resources() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let order = Order::default();
    let tasks = spawn_waiters(&pool, 6, false, &order).await;
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let indices: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..6).collect::<Vec<_>>(), "FIFO");
    assert!(order.iter().all(|(_, t)| *t == Tier::Warm), "{order:?}");
    assert_eq!(fake.created(), 1, "one resource passed hand to hand");
    assert_no_leak(&pool, &fake).await;
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_fifo_by_freed_slots() {
    let fake = FakeManager::new().with_create_latency(millis(50));
    let pool = Pool::builder(fake.clone()).max_size(2).build().unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let order = Order::default();
    let tasks = spawn_waiters(&pool, 6, true, &order).await;
    // Discarding frees a slot: the oldest waiter creates its own resource.
    a.discard();
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let indices: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..6).collect::<Vec<_>>(), "FIFO");
    assert!(order.iter().all(|(_, t)| *t == Tier::Cold), "{order:?}");
    drop(b);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.size, 0);
    assert_eq!(fake.created(), 8);
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_does_not_overtake_queued_waiters() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let order = Order::default();
    let mut tasks = spawn_waiters(&pool, 3, false, &order).await;
    drop(held);
    // Arrives after the release, before the queued waiters had a chance to run.
    let late = {
        let pool = pool.clone();
        let order = order.clone();
        tokio::spawn(async move {
            let _g = pool.acquire().await.unwrap();
            order.lock().unwrap().push((99, Tier::Warm));
        })
    };
    tasks.push(late);
    for t in tasks {
        t.await.unwrap();
    }
    let indices: Vec<usize> = order.lock().unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, vec![0, 1, 2, 99]);
}

#[tokio::test(start_paused = true)]
async fn fifo_order_survives_a_waiter_giving_up() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone()).max_size(1).build().unwrap();
    let held = pool.acquire().await.unwrap();
    let order = Order::default();
    let tasks = spawn_waiters(&pool, 4, false, &order).await;
    tasks[1].abort();
    wait_until(&pool, "the aborted waiter left", |s| s.waiting == 3).await;
    drop(held);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await);
    }
    assert!(results[1].as_ref().is_err_and(|e| e.is_cancelled()));
    let indices: Vec<usize> = order.lock().unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, vec![0, 2, 3]);
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.waiting, 0);
    assert_eq!(s.in_use, 0);
}

/// Callers queued behind a session's current user are served in arrival order, one after
/// the other, on the session's own resource; one that gives up (timeout) loses its place
/// without holding up the rest, and a caller arriving while the queue drains joins its end
/// instead of overtaking it.
#[tokio::test(start_paused = true)]
async fn callers_queued_on_a_busy_session_are_served_fifo() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .max_size(2)
        .session_awareness(true)
        .acquire_timeout(Some(millis(60_000)))
        .build()
        .unwrap();
    let held = pool.acquire_for_session("call").await.unwrap();
    let order = Order::default();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let pool = pool.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            // The third caller gives up long before the session is free.
            let outcome = if i == 2 {
                pool.acquire_for_session_with_timeout("call", millis(5))
                    .await
                    .map(|_| ())
            } else {
                pool.acquire_for_session("call").await.map(|g| {
                    order.lock().unwrap().push((i, g.tier()));
                    drop(g);
                })
            };
            (i, outcome.is_ok())
        }));
        // Each caller is queued before the next one starts.
        tokio::time::sleep(millis(1)).await;
    }
    tokio::time::sleep(millis(20)).await;
    // The session is let go and, in the same instant, asked for again by a latecomer: the
    // slot is free, but the queue is not empty, so the latecomer must join its end.
    drop(held);
    let late = pool.acquire_for_session("call").await.unwrap();
    order.lock().unwrap().push((6, late.tier()));
    drop(late);
    for t in tasks {
        let (i, ok) = t.await.unwrap();
        assert_eq!(ok, i != 2, "caller {i}");
    }
    let order = order.lock().unwrap().clone();
    let indices: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indices,
        vec![0, 1, 3, 4, 5, 6],
        "FIFO, without the one that gave up"
    );
    assert!(
        order.iter().all(|(_, t)| *t == Tier::Dedicated),
        "{order:?}"
    );
    assert_eq!(
        fake.create_calls(),
        1,
        "one resource, passed along the queue"
    );
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.active_sessions, 1);
}
