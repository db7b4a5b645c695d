//! When background creates keep failing, the maintainer backs off exponentially with jitter
//! (counted in paused time), reports the failure, and recovers when the backend does.

mod common;

use std::time::Duration;

use common::{FakeManager, assert_no_leak, millis, secs};
use pool_core::{Pool, PoolError, Tier};
use tokio::time::Instant;

const BASE: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_millis(1600);
/// Paused-time timers fire on millisecond boundaries.
const SLACK: Duration = Duration::from_millis(2);

fn failing_pool(fake: &FakeManager) -> Pool<FakeManager> {
    Pool::builder(fake.clone())
        .warm_target(1)
        .background_warmup(true)
        .refresh_interval(secs(3600))
        .backoff_base(BASE)
        .backoff_max(MAX)
        .build()
        .unwrap()
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The delay after the `streak`-th consecutive failure: `base * 2^(streak-1)`, capped.
fn full_delay(streak: usize) -> Duration {
    let exp = u32::try_from(streak - 1).unwrap().min(20);
    BASE.saturating_mul(1 << exp).min(MAX)
}

#[tokio::test(start_paused = true)]
async fn failing_creates_back_off_exponentially_with_jitter() {
    let fake = FakeManager::new();
    fake.set_failing(true);
    let pool = failing_pool(&fake);
    tokio::time::sleep(secs(20)).await;

    let times = fake.create_times();
    let attempts = times.len();
    // Without backoff there would be thousands of attempts; with it: about 3 s to reach
    // the 1.6 s cap, then one attempt every 0.8–1.6 s.
    assert!(
        (8..=30).contains(&attempts),
        "{attempts} attempts in 20 s: {:?}",
        gaps(&times)
    );
    for (i, gap) in gaps(&times).into_iter().enumerate() {
        let full = full_delay(i + 1);
        assert!(
            gap + SLACK >= full / 2 && gap <= full + SLACK,
            "gap {i} was {gap:?}, expected between {:?} and {full:?}",
            full / 2
        );
    }

    let s = pool.snapshot();
    assert_eq!(
        s.create_failures, attempts as u64,
        "every failure is counted"
    );
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("connect refused"),
        "the failure is reported: {:?}",
        s.last_error
    );
    assert!(!s.ready);
    assert_eq!(s.warm_pool_size, 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_are_jittered_between_pools() {
    let (a, b) = (FakeManager::new(), FakeManager::new());
    a.set_failing(true);
    b.set_failing(true);
    let (pa, pb) = (failing_pool(&a), failing_pool(&b));
    tokio::time::sleep(secs(10)).await;
    let (ga, gb) = (gaps(&a.create_times()), gaps(&b.create_times()));
    assert!(ga.len() >= 4 && gb.len() >= 4);
    assert_ne!(
        ga, gb,
        "two pools failing together must not retry in lockstep"
    );
    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_maintainer_recovers_when_creates_succeed_again() {
    let fake = FakeManager::new();
    fake.set_failing(true);
    let pool = failing_pool(&fake);
    tokio::time::sleep(secs(10)).await;
    let failures = pool.snapshot().create_failures;
    assert!(failures >= 5);

    fake.set_failing(false);
    // At most one capped delay until the next attempt, which succeeds.
    tokio::time::sleep(MAX + millis(10)).await;
    let s = assert_no_leak(&pool, &fake).await;
    assert_eq!(s.warm_pool_size, 1, "refilled after recovery: {s:#?}");
    assert!(s.ready);
    assert_eq!(s.create_failures, failures);
    let calls = fake.create_calls();
    tokio::time::sleep(secs(10)).await;
    assert_eq!(fake.create_calls(), calls, "no retries once at target");

    // A success resets the streak: the next failures start again from the base delay.
    fake.fail_next(3);
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Warm);
    tokio::time::sleep(secs(2)).await;
    let times = fake.create_times();
    let after = gaps(&times[calls..]);
    assert!(after.len() >= 2, "{after:?}");
    assert!(
        after[0] <= BASE + SLACK,
        "first retry after a fresh failure waited {:?}, streak was not reset",
        after[0]
    );
    assert_eq!(pool.snapshot().warm_pool_size, 1, "recovered again");
    drop(g);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_is_not_held_back_by_the_background_backoff() {
    let fake = FakeManager::new();
    fake.set_failing(true);
    let pool = failing_pool(&fake);
    tokio::time::sleep(secs(5)).await;

    // While failing, a caller gets the create error at once rather than hanging.
    let err = pool.acquire().await.unwrap_err();
    assert!(matches!(err, PoolError::Create(_)), "{err:?}");

    // Once the backend is back, a caller creates its own resource immediately, even while
    // the maintainer is still backing off.
    fake.set_failing(false);
    let before = Instant::now();
    let g = pool.acquire().await.unwrap();
    assert_eq!(g.tier(), Tier::Cold);
    assert!(
        Instant::now() - before < millis(100),
        "no backoff delay on the caller's path"
    );
    drop(g);
    pool.shutdown().await;
}
