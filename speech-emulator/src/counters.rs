//! Counters that let tests prove what happened on the wire (and that nothing leaked).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::time::deadline_after;

/// A snapshot of the emulator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// TCP connections open now (REST keep-alive and websocket alike).
    pub tcp_open: u64,
    /// TCP connections accepted since start.
    pub tcp_accepted: u64,
    /// Websocket connections open now (TTS + STT): the pool's resources.
    pub connections_open: u64,
    /// Websocket connections opened (upgrades answered with 101) since start.
    pub connections_opened: u64,
    /// TTS websocket connections open now.
    pub tts_connections_open: u64,
    /// STT websocket connections open now.
    pub stt_connections_open: u64,
    /// Websocket upgrades refused (auth, bad query, injected faults, limits).
    pub handshakes_rejected: u64,
    /// Turns begun (`turn.start` sent, or refused by an injected fault at that point).
    pub turns_started: u64,
    /// Turns completed with `turn.end`.
    pub turns_served: u64,
    /// TTS turns ended early by a `synthesis.control` stop (also counted as served when
    /// their `turn.end` goes out).
    pub turns_stopped: u64,
    /// Tokens issued by the token endpoint.
    pub tokens_issued: u64,
    /// REST requests received on service routes (the control API is not counted).
    pub rest_requests: u64,
    /// Fault rules that fired.
    pub faults_injected: u64,
    /// Websockets blackholed (by a fault or `blackhole_all`) since start.
    pub blackholed: u64,
    /// Blackholed websockets held open now (released at shutdown).
    pub blackholed_open: u64,
    /// Websockets the emulator closed because they reached the maximum connection age
    /// (a client that moves its stream off a connection in time never sees one).
    pub closed_max_age: u64,
    /// Websockets the emulator closed after the idle timeout.
    pub closed_idle: u64,
    /// Of `closed_max_age`, those closed in the middle of a turn (STT): a stream that was
    /// cut rather than moved to a fresh connection in time.
    pub turns_cut_by_max_age: u64,
}

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// The live, shared counters.
        #[derive(Debug, Default)]
        pub(crate) struct LiveCounters {
            $(pub(crate) $field: AtomicU64,)*
            changed: Notify,
        }

        impl LiveCounters {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters { $($field: self.$field.load(Ordering::SeqCst),)* }
            }
        }
    };
}

counters!(
    tcp_open,
    tcp_accepted,
    connections_open,
    connections_opened,
    tts_connections_open,
    stt_connections_open,
    handshakes_rejected,
    turns_started,
    turns_served,
    turns_stopped,
    tokens_issued,
    rest_requests,
    faults_injected,
    blackholed,
    blackholed_open,
    closed_max_age,
    closed_idle,
    turns_cut_by_max_age,
);

impl LiveCounters {
    /// Adds one and wakes waiters.
    pub(crate) fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Adds `n` and wakes waiters.
    pub(crate) fn add(&self, c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::SeqCst);
            self.changed.notify_waiters();
        }
    }

    /// Subtracts one (never below zero) and wakes waiters.
    pub(crate) fn dec(&self, c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        self.changed.notify_waiters();
    }

    /// Waits until `pred` holds for a snapshot, or `timeout` passes; returns the last snapshot
    /// either way (`Ok` if the predicate held).
    pub(crate) async fn wait_for(
        &self,
        pred: impl Fn(&Counters) -> bool,
        timeout: std::time::Duration,
    ) -> Result<Counters, Counters> {
        let deadline = deadline_after(tokio::time::Instant::now(), timeout);
        loop {
            // Register interest before checking, so a change between the check and the
            // wait is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snap = self.snapshot();
            if pred(&snap) {
                return Ok(snap);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let snap = self.snapshot();
                return if pred(&snap) { Ok(snap) } else { Err(snap) };
            }
        }
    }
}

/// Increments a gauge now and decrements it when dropped, so every exit path (including
/// panics and cancellation) keeps the "open now" counts honest.
#[derive(Debug)]
pub(crate) struct GaugeGuard {
    counters: Arc<LiveCounters>,
    pick: fn(&LiveCounters) -> &AtomicU64,
}

impl GaugeGuard {
    /// Increments the gauge `pick` chooses in `counters`.
    pub(crate) fn new(counters: Arc<LiveCounters>, pick: fn(&LiveCounters) -> &AtomicU64) -> Self {
        counters.inc(pick(&counters));
        Self { counters, pick }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.counters.dec((self.pick)(&self.counters));
    }
}
