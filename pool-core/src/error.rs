//! Errors of pool-core.

use std::time::Duration;

/// Why an acquire failed.
#[derive(Debug, thiserror::Error)]
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
}

/// The state of the pool when an acquire timed out: enough to tell "pool too small" from
/// "backend down" without reading logs.
#[derive(Debug, Clone)]
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
             (size {}/{}, idle {}, in use {}, creating {}, waiting {}, last create error: {})",
            self.waited,
            self.pool,
            self.size,
            self.max_size,
            self.idle,
            self.in_use,
            self.creating,
            self.waiting,
            self.last_error.as_deref().unwrap_or("none"),
        )
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration breaks an invariant.
    #[error("invalid pool configuration: {0}")]
    Invalid(String),
    /// `background_warmup` needs a tokio runtime to spawn the maintainer.
    #[error("background_warmup requires building the pool inside a tokio runtime")]
    NoRuntime,
}
