//! Shared counters proving that the mock backend leaks nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one mock factory (and every connection it created), shared behind an
/// `Arc` so that a test keeps a handle while the pool owns the factory.
///
/// The leak invariant a test checks after shutting a pool down is
/// `created == closed` (equivalently `open_now == 0` and `dropped_without_close == 0`):
/// every connection was passed to `close` exactly once, none was merely dropped.
/// Counters are relaxed atomics: exact once the system is quiescent, which is when tests
/// read them.
#[derive(Debug, Default)]
pub struct MockCounters {
    create_attempts: AtomicU64,
    created: AtomicU64,
    create_failures: AtomicU64,
    closed: AtomicU64,
    dropped_without_close: AtomicU64,
    warm_calls: AtomicU64,
    warm_failures: AtomicU64,
    resets: AtomicU64,
    turns_started: AtomicU64,
    turns_served: AtomicU64,
    turns_failed: AtomicU64,
    turns_cancelled: AtomicU64,
    dropped_mid_stream: AtomicU64,
}

/// A point-in-time copy of [`MockCounters`], comparable with `assert_eq!`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MockCountersSnapshot {
    /// `create` calls, successful or not.
    pub create_attempts: u64,
    /// Connections successfully created.
    pub created: u64,
    /// `create` calls that failed (injected faults).
    pub create_failures: u64,
    /// Connections passed to `close`.
    pub closed: u64,
    /// Connections dropped without `close`: a leak of a server-side session in a real
    /// backend. Should stay 0 under the pool.
    pub dropped_without_close: u64,
    /// Connections alive now: `created - closed - dropped_without_close`.
    pub open_now: u64,
    /// `warm` calls, successful or not.
    pub warm_calls: u64,
    /// `warm` calls that failed.
    pub warm_failures: u64,
    /// `reset` calls.
    pub resets: u64,
    /// Turns begun (synthesis or recognition), whatever their outcome.
    pub turns_started: u64,
    /// Turns completed successfully.
    pub turns_served: u64,
    /// Turns that ended in an error other than cancellation.
    pub turns_failed: u64,
    /// Turns abandoned because the caller dropped the events receiver.
    pub turns_cancelled: u64,
    /// Turns cut by the `drop_after_chunks` fault (also counted in `turns_failed`).
    pub dropped_mid_stream: u64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl MockCounters {
    /// Fresh zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections successfully created.
    pub fn created(&self) -> u64 {
        get(&self.created)
    }

    /// Connections passed to `close`.
    pub fn closed(&self) -> u64 {
        get(&self.closed)
    }

    /// Connections alive now (created, neither closed nor dropped).
    pub fn open_now(&self) -> u64 {
        self.created()
            .saturating_sub(self.closed())
            .saturating_sub(get(&self.dropped_without_close))
    }

    /// `warm` calls.
    pub fn warm_calls(&self) -> u64 {
        get(&self.warm_calls)
    }

    /// Turns completed successfully.
    pub fn turns_served(&self) -> u64 {
        get(&self.turns_served)
    }

    /// All counters at once.
    pub fn snapshot(&self) -> MockCountersSnapshot {
        MockCountersSnapshot {
            create_attempts: get(&self.create_attempts),
            created: self.created(),
            create_failures: get(&self.create_failures),
            closed: self.closed(),
            dropped_without_close: get(&self.dropped_without_close),
            open_now: self.open_now(),
            warm_calls: self.warm_calls(),
            warm_failures: get(&self.warm_failures),
            resets: get(&self.resets),
            turns_started: get(&self.turns_started),
            turns_served: self.turns_served(),
            turns_failed: get(&self.turns_failed),
            turns_cancelled: get(&self.turns_cancelled),
            dropped_mid_stream: get(&self.dropped_mid_stream),
        }
    }

    pub(crate) fn on_create_attempt(&self) {
        inc(&self.create_attempts);
    }
    pub(crate) fn on_created(&self) {
        inc(&self.created);
    }
    pub(crate) fn on_create_failure(&self) {
        inc(&self.create_failures);
    }
    pub(crate) fn on_closed(&self) {
        inc(&self.closed);
    }
    pub(crate) fn on_dropped_without_close(&self) {
        inc(&self.dropped_without_close);
    }
    pub(crate) fn on_warm(&self) {
        inc(&self.warm_calls);
    }
    pub(crate) fn on_warm_failure(&self) {
        inc(&self.warm_failures);
    }
    pub(crate) fn on_reset(&self) {
        inc(&self.resets);
    }
    pub(crate) fn on_turn_started(&self) {
        inc(&self.turns_started);
    }
    pub(crate) fn on_turn_served(&self) {
        inc(&self.turns_served);
    }
    pub(crate) fn on_turn_failed(&self) {
        inc(&self.turns_failed);
    }
    pub(crate) fn on_turn_cancelled(&self) {
        inc(&self.turns_cancelled);
    }
    pub(crate) fn on_dropped_mid_stream(&self) {
        inc(&self.dropped_mid_stream);
    }
}
