//! The state behind a running emulator, in two lifetimes: [`EmulatorState`] survives a
//! restart (configuration, counters, fault rules, transcript), [`ServerState`] lives from
//! one start of the listener to its shutdown (tasks, open websockets, per-key slots).
//!
//! Both are read by the routes and the websocket sessions, so they live here, below all of
//! them, rather than in the listener's module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EmulatorConfig;
use crate::counters::LiveCounters;
use crate::faults::{Endpoint, Fault, FaultPlan, Phase, Target};

/// Locks a mutex, recovering from poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere must not wedge the emulator.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What an emulator keeps across [`EmulatorHandle::restart`](crate::EmulatorHandle::restart).
#[derive(Debug)]
pub(crate) struct EmulatorState {
    pub(crate) config: EmulatorConfig,
    pub(crate) counters: Arc<LiveCounters>,
    pub(crate) faults: Mutex<FaultPlan>,
    pub(crate) transcript: Mutex<String>,
    /// What clients sent, when capture is on; shared across restarts so one capture spans them.
    pub(crate) capture: Arc<crate::capture::Capture>,
}

impl EmulatorState {
    /// Consumes the faults firing for one event and counts them.
    pub(crate) fn take_faults(
        &self,
        phase: Phase,
        endpoint: Option<Endpoint>,
        identity: Option<&str>,
    ) -> Vec<Fault> {
        let fired = lock(&self.faults).take(phase, endpoint, identity);
        self.counters
            .add(&self.counters.faults_injected, fired.len() as u64);
        if !fired.is_empty() {
            tracing::info!(?endpoint, ?fired, "injecting faults");
        }
        fired
    }

    /// What the STT routes recognise now.
    pub(crate) fn transcript(&self) -> String {
        lock(&self.transcript).clone()
    }
}

/// A command to one open websocket, from the handle or the control API.
#[derive(Debug, Clone)]
pub(crate) enum SessionCommand {
    /// Drop the TCP connection without a close frame.
    Disconnect { rst: bool },
    /// Close with a code and reason.
    Close { code: u16, reason: String },
    /// Go silent with the socket open (see `Fault::Blackhole`).
    Blackhole,
}

/// One listening server, from start to shutdown: its tasks, its open websockets and its
/// per-key connection counts.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) emulator: Arc<EmulatorState>,
    /// Every task of this server (accept loop, connections, h2 streams, websockets), so
    /// shutdown can wait for all of them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled at shutdown; every task watches it.
    pub(crate) cancel: CancellationToken,
    /// The open websockets by session id, with the channel that reaches each.
    pub(crate) sessions: Mutex<HashMap<u64, (Endpoint, mpsc::Sender<SessionCommand>)>>,
    /// Open websockets per identity, for `max_connections_per_key`.
    pub(crate) per_key: Mutex<HashMap<String, usize>>,
    pub(crate) next_session_id: AtomicU64,
}

impl ServerState {
    /// Sends `command` to every open websocket matching `target`; returns how many.
    pub(crate) fn broadcast(&self, target: Target, command: &SessionCommand) -> usize {
        let sessions = lock(&self.sessions);
        sessions
            .values()
            .filter(|(e, _)| target.matches(Some(*e)))
            .filter(|(_, tx)| tx.try_send(command.clone()).is_ok())
            .count()
    }
}

/// Facts about one TCP connection that the routes need.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    /// Set by a session that wants its socket reset (RST) rather than closed when dropped.
    pub(crate) rst_on_drop: Arc<AtomicBool>,
}
