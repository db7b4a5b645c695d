//! Errors of pool-core.

use std::time::Duration;

/// Why an acquire failed.
///
/// To reach the backend's own error without matching [`Create`](PoolError::Create) and
/// [`Warm`](PoolError::Warm) separately, use [`backend_error`](PoolError::backend_error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError<E: std::error::Error + 'static> {
    /// No resource became available within the acquire timeout. The details say why.
    #[error("{0}")]
    Timeout(Box<TimeoutDetails>),
    /// The pool was shut down (or shut down while this caller waited).
    #[error("pool is shut down")]
    Closed,
    /// Creating a resource for this caller failed.
    #[error("creating a resource failed: {0}")]
    Create(#[source] E),
    /// A new resource was created but its warm-up failed; it was closed, not handed out.
    #[error("warming a new resource failed: {0}")]
    Warm(#[source] E),
    /// Creating and warming a resource took longer than the create timeout.
    #[error("creating a resource took longer than {0:?}")]
    CreateTimeout(Duration),
    /// Another caller held the session's resource for the whole acquire timeout. A session's
    /// resource serves one user at a time, so a second acquire for the same session waits
    /// for the first guard to drop; a task that acquires its own session twice without
    /// dropping the first guard gets this error instead of waiting forever.
    #[error("{0}")]
    SessionBusy(Box<SessionBusyDetails>),
}

impl<E: std::error::Error + 'static> PoolError<E> {
    /// The backend's error, when the backend caused the failure (a failed `create` or
    /// `warm`); `None` for the pool's own refusals (timeouts, shutdown, a busy session).
    pub fn backend_error(&self) -> Option<&E> {
        match self {
            PoolError::Create(error) | PoolError::Warm(error) => Some(error),
            _ => None,
        }
    }
}

/// Which session was busy and for how long the caller waited for it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionBusyDetails {
    /// The pool's name.
    pub pool: String,
    /// The session id that stayed in use.
    pub session: String,
    /// How long the caller waited for the session's current user to let go (the acquire
    /// timeout in force for this call).
    pub waited: Duration,
}

impl std::fmt::Display for SessionBusyDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session '{}' of pool '{}' is busy: another caller held its resource for the whole \
             acquire timeout ({:?}); a session serves one user at a time, so drop the first \
             guard before acquiring the session again",
            self.session, self.pool, self.waited,
        )
    }
}

/// The state of the pool when an acquire timed out: enough to tell "pool too small" from
/// "backend down" without reading logs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TimeoutDetails {
    /// The pool's name.
    pub pool: String,
    /// How long the caller waited.
    pub waited: Duration,
    /// Live resources (the bounded quantity).
    pub size: usize,
    /// The bound on `size`.
    pub max_size: usize,
    /// Idle, ready resources.
    pub idle: usize,
    /// Resources handed out, including those bound to sessions.
    pub in_use: usize,
    /// Resources being created.
    pub creating: usize,
    /// Resources being closed (they still count against `max_size`).
    pub closing: usize,
    /// Callers waiting, including this one.
    pub waiting: usize,
    /// The most recent create or warm failure, if any.
    pub last_error: Option<String>,
}

impl std::fmt::Display for TimeoutDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for a resource from pool '{}' \
             (size {}/{}, idle {}, in use {}, creating {}, closing {}, waiting {}, \
             last create error: {})",
            self.waited,
            self.pool,
            self.size,
            self.max_size,
            self.idle,
            self.in_use,
            self.creating,
            self.closing,
            self.waiting,
            self.last_error.as_deref().unwrap_or("none"),
        )
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration breaks an invariant.
    #[error("invalid pool configuration: {0}")]
    Invalid(String),
    /// `background_warmup` needs a tokio runtime to spawn the maintainer.
    #[error("background_warmup requires building the pool inside a tokio runtime")]
    NoRuntime,
}
