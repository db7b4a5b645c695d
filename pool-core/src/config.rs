//! Pool configuration and its builder.

use std::time::Duration;

use crate::error::BuildError;
use crate::manager::Manager;
use crate::pool::Pool;

/// Everything that shapes a pool's behaviour. Built with [`PoolBuilder`]; every field has
/// a documented default chosen so that a pool with only a manager behaves like the Python
/// `OnDemandResourcePool` this crate replaces (no warm set, no background work, no sessions).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Name used in snapshots, metrics and logs (`speech-tts`, `speech-stt`). Default `"pool"`.
    pub name: String,
    /// How many ready, idle resources the pool tries to hold (`warm_pool_size` in the Python pool).
    /// Zero means every plain acquire is COLD. Default 0.
    pub warm_target: usize,
    /// Upper bound on all live resources: idle + handed out + bound to sessions + being
    /// created. Acquirers beyond it wait in FIFO order. Default 64.
    pub max_size: usize,
    /// Whether the idle target follows demand: the maintainer measures, each second, the
    /// hand-outs that need a new warm resource (WARM and COLD acquires) and the create+warm
    /// latency, and keeps enough idle resources for the demand expected during one create
    /// (Little's law) plus headroom for Poisson bursts. It rises within seconds of a burst
    /// (a 6 s window takes over while it asks for twice what the 60 s window asks for) and
    /// falls over a minute (the 60 s window), never below `warm_target` (the floor) nor
    /// above `max_size`. Needs `background_warmup`; without the maintainer it has no
    /// effect. Default false.
    pub adaptive_warm_target: bool,
    /// Most background creates (refill and refresh) started per second, on average, with
    /// bursts of one second's worth: backends throttle bursts of new connections. `None`
    /// means no limit beyond `create_concurrency`. [`Pool::prepare`] ignores it. Default
    /// `None`.
    pub create_rate_limit: Option<f64>,
    /// Whether `acquire_for_session` binds a resource to a session id (the Python pool's
    /// `session_awareness`). When off, every session acquire is a plain acquire. Default false.
    pub session_awareness: bool,
    /// A session not used for this long is evicted and its resource closed. Checked by the
    /// background maintainer once per `refresh_interval`, so eviction happens between
    /// `session_max_age` and `session_max_age + refresh_interval`. Default 1800 s.
    pub session_max_age: Duration,
    /// Whether a session's parked resource is a soft reservation: when the pool is at
    /// `max_size` and a caller must wait, the least recently used session resource that is
    /// not in a turn is reset (`Manager::reset`) and handed to the waiter (as WARM). That
    /// session loses its binding and gets WARM or COLD on its next turn, never an error.
    /// Without it, many quiet sessions can hold every resource until `session_max_age`.
    /// Finding the least recently used session scans the session map, which happens only
    /// when a caller waits on a full pool. Default false.
    pub reclaim_idle_sessions: bool,
    /// Whether a background maintainer runs (the Python pool's `enable_background_warmup`): it
    /// refills the idle set, refreshes idle resources before they expire and evicts stale
    /// sessions. Default false.
    pub background_warmup: bool,
    /// Period of the maintainer's housekeeping pass (the Python pool's `warmup_interval_sec`).
    /// Refills are also triggered immediately when an acquire drains the idle set below
    /// target, so this period bounds only session eviction, retry cadence, and how long an
    /// idle resource that stopped being ready (e.g. closed by the server) goes unnoticed
    /// without traffic: each pass closes such resources and refills. Default 30 s.
    pub refresh_interval: Duration,
    /// How long `acquire` may wait (for a free slot, a returned resource, or a create) before
    /// failing with [`PoolError::Timeout`](crate::PoolError::Timeout). `None` waits forever.
    /// Default 30 s.
    pub acquire_timeout: Option<Duration>,
    /// Bound on one `create` + `warm`; a create that takes longer counts as a failure so a
    /// hung connect never holds a slot forever. Default 30 s.
    pub create_timeout: Duration,
    /// Resources older than this are replaced while idle, before they expire (Azure closes
    /// websockets after about 10 minutes). `None` disables age-based refresh. Default `None`.
    pub max_age: Option<Duration>,
    /// Resources idle for this long are replaced while idle (Azure closes an idle websocket
    /// after about 180 s). `None` disables idle-based refresh. Default `None`.
    pub max_idle: Option<Duration>,
    /// How long before `max_age` / `max_idle` the maintainer starts a replacement, so the new
    /// resource is ready before the old one expires. Should exceed a create's latency.
    /// Default 5 s.
    pub refresh_lead: Duration,
    /// Each resource's refresh moment is moved earlier by a random amount up to this, so
    /// resources created together are not all replaced in the same instant. Default 2 s.
    pub refresh_jitter: Duration,
    /// Most background creates (refill and refresh) in flight at once, so a large target does
    /// not open a burst of connections. Also bounds [`Pool::prepare`]. Default 4.
    pub create_concurrency: usize,
    /// First delay after a background create fails; doubles per consecutive failure, with
    /// jitter, up to `backoff_max`. Default 100 ms.
    pub backoff_base: Duration,
    /// Longest delay between background create attempts while creates keep failing.
    /// Default 30 s.
    pub backoff_max: Duration,
    /// How long [`Pool::shutdown`] waits for in-flight closes and creates. Default 5 s.
    pub shutdown_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: "pool".to_owned(),
            warm_target: 0,
            max_size: 64,
            adaptive_warm_target: false,
            create_rate_limit: None,
            session_awareness: false,
            session_max_age: Duration::from_secs(1800),
            reclaim_idle_sessions: false,
            background_warmup: false,
            refresh_interval: Duration::from_secs(30),
            acquire_timeout: Some(Duration::from_secs(30)),
            create_timeout: Duration::from_secs(30),
            max_age: None,
            max_idle: None,
            refresh_lead: Duration::from_secs(5),
            refresh_jitter: Duration::from_secs(2),
            create_concurrency: 4,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl PoolConfig {
    /// Checks the invariants the pool relies on.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.max_size == 0 {
            return Err(BuildError::Invalid("max_size must be at least 1".into()));
        }
        if self.warm_target > self.max_size {
            return Err(BuildError::Invalid(format!(
                "warm_target ({}) must not exceed max_size ({})",
                self.warm_target, self.max_size
            )));
        }
        if let Some(rate) = self.create_rate_limit
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(BuildError::Invalid(format!(
                "create_rate_limit must be a positive number of creates per second, got {rate}"
            )));
        }
        if self.create_concurrency == 0 {
            return Err(BuildError::Invalid(
                "create_concurrency must be at least 1".into(),
            ));
        }
        if self.refresh_interval.is_zero() {
            return Err(BuildError::Invalid(
                "refresh_interval must be greater than zero".into(),
            ));
        }
        if self.create_timeout.is_zero() {
            return Err(BuildError::Invalid(
                "create_timeout must be greater than zero".into(),
            ));
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return Err(BuildError::Invalid(
                "backoff_base must be > 0 and not exceed backoff_max".into(),
            ));
        }
        Ok(())
    }
}

/// Builds a [`Pool`]. Every setter documents its default on the matching [`PoolConfig`] field.
#[derive(Debug)]
pub struct PoolBuilder<M: Manager> {
    manager: M,
    config: PoolConfig,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use = "the builder is consumed; use the returned one"]
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl<M: Manager> PoolBuilder<M> {
    pub(crate) fn new(manager: M) -> Self {
        Self {
            manager,
            config: PoolConfig::default(),
        }
    }

    /// Replaces the whole configuration.
    #[must_use = "the builder is consumed; use the returned one"]
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`PoolConfig::name`].
    #[must_use = "the builder is consumed; use the returned one"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    setter!(/// See [`PoolConfig::warm_target`].
        warm_target: usize);
    setter!(/// See [`PoolConfig::max_size`].
        max_size: usize);
    setter!(/// See [`PoolConfig::adaptive_warm_target`].
        adaptive_warm_target: bool);
    setter!(/// See [`PoolConfig::create_rate_limit`].
        create_rate_limit: Option<f64>);
    setter!(/// See [`PoolConfig::session_awareness`].
        session_awareness: bool);
    setter!(/// See [`PoolConfig::session_max_age`].
        session_max_age: Duration);
    setter!(/// See [`PoolConfig::reclaim_idle_sessions`].
        reclaim_idle_sessions: bool);
    setter!(/// See [`PoolConfig::background_warmup`].
        background_warmup: bool);
    setter!(/// See [`PoolConfig::refresh_interval`].
        refresh_interval: Duration);
    setter!(/// See [`PoolConfig::acquire_timeout`].
        acquire_timeout: Option<Duration>);
    setter!(/// See [`PoolConfig::create_timeout`].
        create_timeout: Duration);
    setter!(/// See [`PoolConfig::max_age`].
        max_age: Option<Duration>);
    setter!(/// See [`PoolConfig::max_idle`].
        max_idle: Option<Duration>);
    setter!(/// See [`PoolConfig::refresh_lead`].
        refresh_lead: Duration);
    setter!(/// See [`PoolConfig::refresh_jitter`].
        refresh_jitter: Duration);
    setter!(/// See [`PoolConfig::create_concurrency`].
        create_concurrency: usize);
    setter!(/// See [`PoolConfig::backoff_base`].
        backoff_base: Duration);
    setter!(/// See [`PoolConfig::backoff_max`].
        backoff_max: Duration);
    setter!(/// See [`PoolConfig::shutdown_timeout`].
        shutdown_timeout: Duration);

    /// Validates the configuration and creates the pool. With `background_warmup` on, this
    /// spawns the maintainer, so it must run inside a tokio runtime. The pool starts empty:
    /// call [`Pool::prepare`] to fill the idle set before serving traffic.
    pub fn build(self) -> Result<Pool<M>, BuildError> {
        self.config.validate()?;
        if self.config.background_warmup && tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        Ok(Pool::from_parts(self.manager, self.config))
    }
}
