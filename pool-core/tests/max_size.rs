//! `max_size` bounds every live resource (idle + in use + dedicated + being created), even
//! under 1000 concurrent tasks on a multi-thread runtime.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{FakeManager, settle};
use pool_core::Pool;

const MAX: usize = 8;
const TASKS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_is_never_exceeded_under_1000_concurrent_tasks() {
    let fake = FakeManager::new();
    let pool = Pool::builder(fake.clone())
        .warm_target(3)
        .max_size(MAX)
        .session_awareness(true)
        .background_warmup(true)
        // Generous: only a hang (a lost wake-up or a leaked slot) would reach it.
        .acquire_timeout(Some(Duration::from_secs(20)))
        .build()
        .unwrap();
    pool.prepare().await.unwrap();

    let holding = Arc::new(AtomicUsize::new(0));
    let max_holding = Arc::new(AtomicUsize::new(0));
    let max_size_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let pool = pool.clone();
        let holding = holding.clone();
        let max_holding = max_holding.clone();
        let max_size_seen = max_size_seen.clone();
        tasks.push(tokio::spawn(async move {
            let g = if i % 5 == 0 {
                // A few sessions: their resources stay bound and count toward max_size.
                pool.acquire_for_session(&format!("s{}", i % 3)).await
            } else {
                pool.acquire().await
            };
            let g = g.unwrap_or_else(|e| panic!("task {i}: {e}"));
            let now = holding.fetch_add(1, SeqCst) + 1;
            max_holding.fetch_max(now, SeqCst);
            max_size_seen.fetch_max(pool.snapshot().size, SeqCst);
            tokio::task::yield_now().await;
            if i % 7 == 0 {
                g.set_ready(false);
            }
            holding.fetch_sub(1, SeqCst);
            if i % 11 == 0 {
                g.discard();
            } else {
                drop(g);
            }
            max_size_seen.fetch_max(pool.snapshot().size, SeqCst);
        }));
    }
    for t in tasks {
        t.await.expect("a task panicked");
    }

    assert!(
        max_holding.load(SeqCst) <= MAX,
        "{} resources held at once, max_size {MAX}",
        max_holding.load(SeqCst)
    );
    assert!(
        max_size_seen.load(SeqCst) <= MAX,
        "pool size reached {}, max_size {MAX}",
        max_size_seen.load(SeqCst)
    );
    let s = pool.snapshot();
    assert_eq!(s.allocations_total, TASKS as u64, "every task was served");
    assert!(s.size <= MAX);
    assert_eq!(s.waiting, 0);
    assert!(fake.created() >= 3);

    for sid in 0..3 {
        pool.release_for_session(&format!("s{sid}")).await;
    }
    pool.shutdown().await;
    settle().await;
    let s = pool.snapshot();
    assert_eq!(s.created_total, s.closed_total + s.size as u64);
    assert_eq!(s.size, 0);
    assert_eq!(pool.background_tasks(), 0);
    assert_eq!(fake.created(), fake.closed(), "nothing leaked");
}
