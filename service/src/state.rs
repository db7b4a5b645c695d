//! The application state shared by every handler: the two pools, options, metrics and the
//! drain machinery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::{BuildError, Pool, PoolConfig, PoolSnapshot};
use speech_core::{
    AudioFormat, RecognitionFormat, RecognitionMode, RecognizerManager, SynthesizerManager,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, PoolKind};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Name of the text-to-speech pool (also its key in `/api/v1/pools`).
pub const TTS_POOL: &str = PoolKind::Tts.name();
/// Name of the speech-to-text pool.
pub const STT_POOL: &str = PoolKind::Stt.name();
/// Name of the text-streaming TTS pool.
pub const TTS_STREAM_POOL: &str = PoolKind::TtsStream.name();

/// The service's pools.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Text-to-speech connections.
    pub tts: Pool<SynthesizerManager>,
    /// Speech-to-text connections.
    pub stt: Pool<RecognizerManager>,
    /// Text-to-speech connections that take text as it is written
    /// (`GET /api/v1/tts/stream`).
    pub tts_stream: Pool<SynthesizerManager>,
}

impl Pools {
    /// Builds the pools from the configuration (warm targets, sizes, timeouts, refresh).
    /// With background refresh on this spawns the maintainers, so it must run inside a
    /// tokio runtime. The pools start empty; [`AppState::warm_up`] fills them.
    ///
    /// The text-streaming pool opens its connections with `tts`'s factory too, whose
    /// connections serve a streamed turn by gathering the text first (speech-core's
    /// default). Use [`build_with_stream`](Self::build_with_stream) to give it a backend
    /// that speaks while the text arrives.
    pub fn build(
        config: &Config,
        tts: SynthesizerManager,
        stt: RecognizerManager,
    ) -> Result<Self, BuildError> {
        let stream = tts.clone();
        Self::build_with_stream(config, tts, stt, stream)
    }

    /// Builds the pools with a separate manager for the text-streaming pool.
    pub fn build_with_stream(
        config: &Config,
        tts: SynthesizerManager,
        stt: RecognizerManager,
        tts_stream: SynthesizerManager,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            tts: Pool::builder(tts)
                .config(pool_config(config, PoolKind::Tts))
                .build()?,
            stt: Pool::builder(stt)
                .config(pool_config(config, PoolKind::Stt))
                .build()?,
            tts_stream: Pool::builder(tts_stream)
                .config(pool_config(config, PoolKind::TtsStream))
                .build()?,
        })
    }
}

/// The pool configuration for one of the service's pools.
pub fn pool_config(config: &Config, pool: PoolKind) -> PoolConfig {
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    PoolConfig {
        name: pool.name().to_owned(),
        // Disabled warm pools connect on demand: no idle set, no background work, but a
        // session's turns still reuse its connection.
        warm_target: if config.warm_pool_enabled {
            config.warm_size(pool)
        } else {
            0
        },
        max_size: config.max_size(pool),
        adaptive_warm_target: config.warm_pool_enabled && config.warm_pool_adaptive,
        create_rate_limit: (config.pool_create_rate_limit > 0)
            .then_some(config.pool_create_rate_limit as f64),
        create_concurrency: config.pool_create_concurrency,
        // Always on: a call's turns must reuse its connection (the DEDICATED tier).
        session_awareness: true,
        session_max_age: config.warm_pool_session_max_age,
        // A quiet call's connection is a soft reservation: when the pool is full and
        // someone waits, the least recently used idle session connection is handed over,
        // so sessions that are never deleted cannot lock everyone else out.
        reclaim_idle_sessions: true,
        background_warmup: config.warm_pool_enabled && config.warm_pool_background_refresh,
        refresh_interval: config.warm_pool_refresh_interval,
        acquire_timeout: Some(config.pool_acquire_timeout),
        create_timeout: config.pool_create_timeout,
        max_age: nonzero(config.pool_max_age),
        max_idle: nonzero(config.pool_max_idle),
        ..PoolConfig::default()
    }
}

/// Settings the handlers need besides the pools.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// When set, requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<Secret>,
    /// Voice for text requests that name none.
    pub default_voice: String,
    /// Format for requests that name none.
    pub default_format: AudioFormat,
    /// The STT pool's language.
    pub stt_language: String,
    /// The STT pool's recognition mode.
    pub stt_mode: RecognitionMode,
    /// The STT pool's phrase format.
    pub stt_format: RecognitionFormat,
    /// Extra languages whose SDK STT pools are made and warmed at start-up
    /// (`STT_LANGUAGES`).
    pub stt_languages: Vec<String>,
    /// Most STT pools made on demand for SDK clients (`STT_ON_DEMAND_POOLS`).
    pub stt_on_demand_pools: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Which backend serves the pools (`mock` or `azure`), reported in `/api/v1/pools`.
    pub backend: String,
    /// How long a request waits for a session's connection while another request of the
    /// same session holds it.
    pub session_wait: Duration,
    /// Timeouts, caps and allowed origins that keep one client from starving the others.
    pub limits: crate::limits::Limits,
    /// How long a session is remembered unused (the pools' session age limit).
    pub session_max_age: Duration,
    /// Continuous STT streams: connection age of a switch, replay bound, attempts.
    pub stt_continuous: crate::continuous::ContinuousSettings,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self::from_config(&Config::defaults(), "mock")
    }
}

impl ServiceOptions {
    /// The options a configuration implies.
    pub fn from_config(config: &Config, backend: &str) -> Self {
        Self {
            api_key: config.service_api_key.clone(),
            default_voice: config.tts_default_voice.clone(),
            default_format: config.tts_default_format,
            stt_language: config.stt_language.clone(),
            stt_mode: config.stt_mode,
            stt_format: config.stt_format,
            stt_languages: config.stt_languages.tags().to_vec(),
            stt_on_demand_pools: config.stt_on_demand_pools,
            max_body_bytes: config.max_body_bytes,
            backend: backend.to_owned(),
            // Slightly longer than the pool's own acquire timeout, so that an exhausted
            // pool reports itself (429) before the session wait gives up (409).
            session_wait: config.pool_acquire_timeout + Duration::from_millis(500),
            limits: config.limits.clone(),
            stt_continuous: config.stt_continuous.clone(),
            session_max_age: config.warm_pool_session_max_age,
        }
    }
}

/// Shared state of one app. Cloning is cheap (an `Arc`).
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pools: Pools,
    options: ServiceOptions,
    metrics: Metrics,
    draining: AtomicBool,
    /// Cancelled when draining starts: open STT websockets finish their turn and close.
    drain: CancellationToken,
    /// Work that outlives its HTTP response (synthesis streams, websockets), so that
    /// shutdown can wait for it before closing the pools.
    tasks: TaskTracker,
    streams: StreamRegistry,
    tts_turns: crate::routes::tts::TurnRegistry,
    session_cap: crate::limits::SessionCap,
    /// STT pools of other combinations, for the official SDKs.
    sdk_stt: crate::azure_proxy::stt_pools::SttPools,
    /// Signs and checks the bearer tokens of `/sts/v1.0/issueToken`.
    token_issuer: crate::azure_proxy::token::TokenIssuer,
    /// The voices list, cached briefly.
    voices: crate::azure_proxy::voices::VoicesCache,
}

impl AppState {
    /// State around two pools.
    pub fn new(pools: Pools, options: ServiceOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics: Metrics::new(),
                draining: AtomicBool::new(false),
                drain: CancellationToken::new(),
                tasks: TaskTracker::new(),
                streams: StreamRegistry::default(),
                tts_turns: Default::default(),
                session_cap: crate::limits::SessionCap::new(
                    options.limits.max_sessions_per_client,
                    options.session_max_age,
                ),
                sdk_stt: crate::azure_proxy::stt_pools::SttPools::new(
                    std::sync::Arc::clone(pools.stt.manager().factory()),
                    pools.stt.config().clone(),
                    options.stt_on_demand_pools,
                ),
                token_issuer: crate::azure_proxy::token::TokenIssuer::new(options.api_key.as_ref()),
                voices: Default::default(),
                pools,
                options,
            }),
        }
    }

    /// Issues and checks the bearer tokens of the Azure-protocol endpoints
    /// (`/sts/v1.0/issueToken`).
    pub fn token_issuer(&self) -> &crate::azure_proxy::token::TokenIssuer {
        &self.inner.token_issuer
    }

    /// The cached voices list of `/cognitiveservices/voices/list`.
    pub(crate) fn voices(&self) -> &crate::azure_proxy::voices::VoicesCache {
        &self.inner.voices
    }

    /// The STT pools created for SDK clients asking for other combinations.
    pub fn sdk_stt_pools(&self) -> &crate::azure_proxy::stt_pools::SttPools {
        &self.inner.sdk_stt
    }

    /// The pools.
    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// The options.
    pub fn options(&self) -> &ServiceOptions {
        &self.inner.options
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Snapshots of every pool: TTS, STT, text-streaming TTS, then the STT pools made for
    /// SDK clients.
    pub fn snapshots(&self) -> Vec<PoolSnapshot> {
        let mut s = vec![
            self.pools().tts.snapshot(),
            self.pools().stt.snapshot(),
            self.pools().tts_stream.snapshot(),
        ];
        s.extend(self.inner.sdk_stt.snapshots());
        s
    }

    /// Makes the STT pools of `STT_LANGUAGES` (each with `STT_MODE` / `STT_FORMAT`; the
    /// main STT pool's own language is skipped). Called once when the state is built; they
    /// fill in [`warm_up`](Self::warm_up) and count toward readiness. Fails when the
    /// backend cannot serve a language.
    pub fn configure_stt_languages(&self) -> Result<(), String> {
        let options = self.options();
        for language in &options.stt_languages {
            if language.eq_ignore_ascii_case(&options.stt_language) {
                continue;
            }
            let combination = crate::azure_proxy::stt_pools::Combination {
                mode: options.stt_mode,
                language: language.clone(),
                format: options.stt_format,
            };
            self.inner
                .sdk_stt
                .add_configured(&combination)
                .map_err(|e| format!("STT_LANGUAGES: {language}: {e}"))?;
        }
        Ok(())
    }

    /// Ready to take traffic: not draining, and the configured pools (TTS, STT,
    /// text-streaming TTS and those of `STT_LANGUAGES`) have reached their warm targets at
    /// least once. Pools created on demand for SDK clients do not count: one warming up
    /// must not take the replica out of its load balancer.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.readiness_snapshots().iter().all(|s| s.ready)
    }

    /// The snapshots of the pools that decide readiness ([`is_ready`](Self::is_ready)):
    /// the configured ones, not those made on demand.
    pub fn readiness_snapshots(&self) -> Vec<PoolSnapshot> {
        let mut s = vec![
            self.pools().tts.snapshot(),
            self.pools().stt.snapshot(),
            self.pools().tts_stream.snapshot(),
        ];
        s.extend(self.inner.sdk_stt.configured().iter().map(|p| p.snapshot()));
        s
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Starts draining: `/readyz` turns 503, new speech requests get 503, open STT
    /// websockets end after their current turn. Idempotent.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.drain.cancel();
    }

    /// The token cancelled by [`begin_drain`](Self::begin_drain).
    pub fn drain_token(&self) -> &CancellationToken {
        &self.inner.drain
    }

    /// Tracks work that outlives its response.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Live sessions per client, for `MAX_SESSIONS_PER_CLIENT`.
    pub fn session_cap(&self) -> &crate::limits::SessionCap {
        &self.inner.session_cap
    }

    /// Live STT streams, by session.
    pub(crate) fn streams(&self) -> &StreamRegistry {
        &self.inner.streams
    }

    /// TTS turns in flight, by request id, for `DELETE /api/v1/tts/{request_id}`.
    pub(crate) fn tts_turns(&self) -> &crate::routes::tts::TurnRegistry {
        &self.inner.tts_turns
    }

    /// Fills the configured pools (TTS, STT, text-streaming TTS, those of `STT_LANGUAGES`)
    /// to their warm targets, concurrently. Failures are logged, not returned: the
    /// maintainer keeps retrying and `/readyz` stays 503 meanwhile.
    pub async fn warm_up(&self) {
        let languages = self.inner.sdk_stt.configured();
        let (tts, stt, stream, languages) = tokio::join!(
            self.pools().tts.prepare(),
            self.pools().stt.prepare(),
            self.pools().tts_stream.prepare(),
            futures_util::future::join_all(
                languages
                    .iter()
                    .map(|p| async move { (p.name().to_owned(), p.prepare().await) })
            )
        );
        let main = [(TTS_POOL, tts), (STT_POOL, stt), (TTS_STREAM_POOL, stream)]
            .into_iter()
            .map(|(n, r)| (n.to_owned(), r));
        for (name, result) in main.chain(languages) {
            match result {
                Ok(()) => tracing::info!(pool = %name, "pool warm"),
                Err(e) => tracing::warn!(
                    pool = %name,
                    error = %e,
                    "could not reach the warm target yet; the maintainer keeps retrying"
                ),
            }
        }
    }

    /// Waits (up to `timeout`) for tracked work to finish, then shuts both pools down,
    /// closing every connection. Returns whether the tracked work finished in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.begin_drain();
        self.inner.tasks.close();
        let drained = tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.inner.tasks.len(),
                "in-flight speech work did not finish within the shutdown grace period"
            );
        }
        tokio::join!(
            self.pools().tts.shutdown(),
            self.pools().stt.shutdown(),
            self.pools().tts_stream.shutdown(),
            self.inner.sdk_stt.shutdown()
        );
        drained
    }
}

/// The STT websockets open per session, so that `DELETE /api/v1/sessions/{id}` can end
/// them (otherwise releasing the session would wait for the client to hang up).
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    next: AtomicU64,
    by_session: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
}

/// Deregisters a stream when dropped.
#[derive(Debug)]
pub(crate) struct StreamGuard<'a> {
    registry: &'a StreamRegistry,
    session: String,
    id: u64,
}

impl StreamRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, CancellationToken>>> {
        // Only plain map operations run under this lock; a poisoned map is still valid.
        self.by_session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream of `session` ended by `token`.
    pub(crate) fn register(&self, session: &str, token: CancellationToken) -> StreamGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(session.to_owned())
            .or_default()
            .insert(id, token);
        StreamGuard {
            registry: self,
            session: session.to_owned(),
            id,
        }
    }

    /// Ends every stream of `session`; returns how many there were.
    pub(crate) fn cancel(&self, session: &str) -> usize {
        let streams = self.lock().remove(session).unwrap_or_default();
        for token in streams.values() {
            token.cancel();
        }
        streams.len()
    }
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if let Some(streams) = map.get_mut(&self.session) {
            streams.remove(&self.id);
            if streams.is_empty() {
                map.remove(&self.session);
            }
        }
    }
}

/// A state over zero-latency mock pools without background work (so it builds outside a
/// runtime), for the crate's unit tests.
#[cfg(test)]
pub(crate) fn unit_test_state() -> AppState {
    use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};

    let mut config = Config::defaults();
    config.warm_pool_background_refresh = false;
    let (tts, _) = mock_tts_manager(MockConfig::default());
    let (stt, _) = mock_stt_manager(MockConfig::default());
    let pools = Pools::build(&config, tts, stt).expect("pools");
    AppState::new(pools, ServiceOptions::from_config(&config, "mock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_registry_cancels_and_cleans_up() {
        let reg = StreamRegistry::default();
        let a = CancellationToken::new();
        let b = CancellationToken::new();
        let ga = reg.register("s1", a.clone());
        let gb = reg.register("s1", b.clone());
        drop(gb);
        assert!(!b.is_cancelled());
        assert_eq!(reg.cancel("s1"), 1);
        assert!(a.is_cancelled());
        drop(ga);
        assert_eq!(reg.cancel("s1"), 0);
        assert!(reg.lock().is_empty());
    }

    #[test]
    fn disabled_warm_pool_is_on_demand() {
        let mut c = Config::defaults();
        c.warm_pool_enabled = false;
        let p = pool_config(&c, PoolKind::Tts);
        assert_eq!(p.warm_target, 0);
        assert!(!p.background_warmup);
        assert!(p.session_awareness);
        let c = Config::defaults();
        assert_eq!(pool_config(&c, PoolKind::Tts).warm_target, 3);
        assert_eq!(pool_config(&c, PoolKind::Stt).warm_target, 2);
        assert_eq!(pool_config(&c, PoolKind::Stt).name, STT_POOL);
    }

    #[test]
    fn the_create_concurrency_reaches_every_pool() {
        let mut c = Config::defaults();
        for pool in PoolKind::ALL {
            assert_eq!(pool_config(&c, pool).create_concurrency, 16);
        }
        c.pool_create_concurrency = 3;
        for pool in PoolKind::ALL {
            assert_eq!(pool_config(&c, pool).create_concurrency, 3);
        }
    }
}
