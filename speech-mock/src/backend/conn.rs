//! State and lifecycle shared by the mock synthesizer and recognizer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use speech_core::SpeechError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{MockConfig, hits};
use super::counters::MockCounters;

/// Close code reported when the mock drops a connection mid-stream: 1006 is "abnormal
/// closure", what a websocket client sees when the TCP connection vanishes without a close
/// frame.
pub(crate) const DROP_CLOSE_CODE: u16 = 1006;

/// One factory's configuration, counters and fault sequence numbers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    pub(crate) counters: Arc<MockCounters>,
    create_seq: AtomicU64,
    warm_seq: AtomicU64,
    turn_seq: AtomicU64,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: MockConfig, counters: Arc<MockCounters>) -> Arc<Self> {
        Arc::new(Self {
            config,
            counters,
            create_seq: AtomicU64::new(0),
            warm_seq: AtomicU64::new(0),
            turn_seq: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        })
    }

    /// The cold path: wait `create_latency`, then fail if this attempt is an injected
    /// failure. Nothing is counted as created if the future is dropped while waiting.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<ConnState, SpeechError> {
        let attempt = self.create_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.on_create_attempt();
        if !self.config.create_latency.is_zero() {
            tokio::time::sleep(self.config.create_latency).await;
        }
        if hits(self.config.fail_create_every, attempt) {
            self.counters.on_create_failure();
            return Err(SpeechError::transient(format!(
                "mock: injected create failure (attempt {attempt})"
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.on_created();
        Ok(ConnState {
            id,
            shared: Arc::clone(self),
            created_at: Instant::now(),
            uses: 0,
            in_turn: false,
            broken: false,
            closed: false,
        })
    }
}

/// Per-connection state. Dropping it without [`ConnState::mark_closed`] is counted as a
/// leak (`dropped_without_close`).
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) id: u64,
    pub(crate) shared: Arc<Shared>,
    created_at: Instant,
    uses: u32,
    in_turn: bool,
    broken: bool,
    closed: bool,
}

impl ConnState {
    pub(crate) fn uses(&self) -> u32 {
        self.uses
    }

    /// No I/O, no locks, no allocation: flags, a counter and one clock read.
    pub(crate) fn is_ready(&self) -> bool {
        let c = &self.shared.config;
        !self.broken
            && !self.in_turn
            && !self.closed
            && c.not_ready_after_uses.is_none_or(|n| self.uses < n)
            && c.not_ready_after_age
                .is_none_or(|age| self.created_at.elapsed() < age)
    }

    fn check_open(&self) -> Result<(), SpeechError> {
        if self.broken {
            Err(SpeechError::connection_closed(
                Some(DROP_CLOSE_CODE),
                "mock: connection was lost earlier",
            ))
        } else {
            Ok(())
        }
    }

    pub(crate) async fn warm(&mut self) -> Result<(), SpeechError> {
        self.shared.counters.on_warm();
        self.check_open()?;
        let n = self.shared.warm_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.shared.config.warm_latency.is_zero() {
            tokio::time::sleep(self.shared.config.warm_latency).await;
        }
        if hits(self.shared.config.fail_warm_every, n) {
            self.broken = true;
            self.shared.counters.on_warm_failure();
            return Err(SpeechError::transient(format!(
                "mock: injected warm failure (warm {n})"
            )));
        }
        Ok(())
    }

    pub(crate) fn reset(&mut self) -> Result<(), SpeechError> {
        self.shared.counters.on_reset();
        self.check_open()
    }

    pub(crate) fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.shared.counters.on_closed();
        }
    }

    /// Starts a turn: refuses on a broken connection, counts a use, and sets the in-turn
    /// flag that keeps `is_ready` false if the turn future is dropped midway. Returns the
    /// factory-wide turn number (1-based).
    pub(crate) fn begin_turn(&mut self) -> Result<u64, SpeechError> {
        self.check_open()?;
        self.in_turn = true;
        self.uses = self.uses.saturating_add(1);
        self.shared.counters.on_turn_started();
        Ok(self.shared.turn_seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// How many chunks into turn `turn` the connection drops, if it does.
    pub(crate) fn drop_point(&self, turn: u64) -> Option<u32> {
        let c = &self.shared.config;
        let k = c.drop_after_chunks?;
        match c.drop_every_nth_turn {
            Some(n) if n > 1 => hits(Some(n), turn).then_some(k),
            _ => Some(k),
        }
    }

    /// The drop fault fired: the connection is gone.
    pub(crate) fn dropped_mid_stream(&mut self, chunks: u32) -> SpeechError {
        self.broken = true;
        self.shared.counters.on_dropped_mid_stream();
        SpeechError::connection_closed(
            Some(DROP_CLOSE_CODE),
            format!("mock: connection dropped mid-stream after {chunks} chunks"),
        )
    }

    /// Ends a turn (on every path except a dropped future) and counts its outcome.
    pub(crate) fn end_turn<T>(&mut self, result: &Result<T, SpeechError>) {
        self.in_turn = false;
        let counters = &self.shared.counters;
        match result {
            Ok(_) => counters.on_turn_served(),
            Err(SpeechError::Cancelled) => counters.on_turn_cancelled(),
            Err(_) => counters.on_turn_failed(),
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if !self.closed {
            self.shared.counters.on_dropped_without_close();
        }
    }
}

/// Sleeps for `d`, but gives up with `Cancelled` as soon as the caller drops the events
/// receiver, so an abandoned turn stops promptly instead of sleeping on.
pub(crate) async fn pause<T>(d: Duration, events: &mpsc::Sender<T>) -> Result<(), SpeechError> {
    if events.is_closed() {
        return Err(SpeechError::Cancelled);
    }
    if d.is_zero() {
        return Ok(());
    }
    tokio::select! {
        biased;
        () = events.closed() => Err(SpeechError::Cancelled),
        () = tokio::time::sleep(d) => Ok(()),
    }
}
