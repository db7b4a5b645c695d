//! A pool outlives the runtime that ran its background work. A common way to share a pool
//! across a test suite is a `static` used from many `#[tokio::test]` runtimes; each runtime
//! that ends drops the pool's tasks still in flight (a create, a close). Their slots must come
//! back, or every runtime that ends mid-create leaks a slot of `max_size` until the pool is
//! exhausted for good.

mod common;

use std::time::Duration;

use common::FakeManager;
use pool_core::Pool;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_create_and_a_close_cut_off_by_a_dropped_runtime_give_their_slots_back() {
    let fake = FakeManager::new();
    // Built outside any runtime: no maintainer, so nothing but the test's calls starts work.
    let pool = Pool::builder(fake.clone())
        .max_size(2)
        .warm_target(0)
        .background_warmup(false)
        .acquire_timeout(Some(Duration::from_millis(100)))
        .build()
        .expect("pool");

    let first = runtime();
    first.block_on(async {
        // A resource whose close never finishes while this runtime lives.
        let guard = pool.acquire().await.expect("first resource");
        fake.set_close_latency(Duration::from_secs(3_600));
        guard.discard();
        // A COLD create that is still running when its caller gives up.
        fake.set_create_latency(Duration::from_secs(3_600));
        assert!(
            pool.acquire().await.is_err(),
            "the create should outlast the timeout"
        );
        let counts = pool.counts();
        assert_eq!((counts.closing, counts.creating), (1, 1), "{counts:?}");
    });
    drop(first);

    let counts = pool.counts();
    assert_eq!(
        (counts.closing, counts.creating, counts.size),
        (0, 0, 0),
        "work the runtime dropped still holds slots: {counts:?}"
    );

    let second = runtime();
    second.block_on(async {
        fake.set_create_latency(Duration::ZERO);
        fake.set_close_latency(Duration::ZERO);
        let a = pool.acquire().await.expect("a slot is free again");
        let b = pool.acquire().await.expect("both slots are free again");
        // The first runtime's timeout reaper went with it: this runtime's waits must
        // still end at the acquire timeout.
        let third = tokio::time::timeout(Duration::from_secs(10), pool.acquire()).await;
        assert!(
            matches!(third, Ok(Err(pool_core::PoolError::Timeout(_)))),
            "a full pool's waiter must time out, not hang: {third:?}"
        );
        drop((a, b));
        let snapshot = pool.snapshot();
        // The resource whose close was cut off was dropped with its task: it counts as
        // closed, so created = closed + live still holds.
        assert_eq!(
            snapshot.created_total,
            snapshot.closed_total + snapshot.size as u64,
            "{snapshot:?}"
        );
        pool.shutdown().await;
    });
}

#[test]
fn the_maintainer_starts_again_in_the_next_runtime() {
    let fake = FakeManager::new();
    let first = runtime();
    let pool = first.block_on(async {
        let pool = Pool::builder(fake.clone())
            .warm_target(2)
            .max_size(4)
            .background_warmup(true)
            .max_age(Some(Duration::from_millis(400)))
            .refresh_lead(Duration::from_millis(100))
            .refresh_jitter(Duration::ZERO)
            .build()
            .expect("pool");
        pool.prepare().await.expect("prepare");
        pool
    });
    drop(first);

    let second = runtime();
    second.block_on(async {
        // One hand-out in the new runtime, then nothing: keeping the idle set fresh is the
        // maintainer's job alone.
        drop(pool.acquire().await.expect("warm"));
        let created = fake.created();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(
            fake.created() >= created + 2,
            "no refresh ran in the second runtime: created {created} then {}",
            fake.created()
        );
        pool.shutdown().await;
        assert_eq!(pool.background_tasks(), 0);
    });
}
