//! STT pools for the combinations SDK clients ask for.
//!
//! Azure fixes an STT connection's mode, language and format at the handshake, and the
//! SDKs choose them per recognizer (`recognizeOnce` uses the interactive path, continuous
//! recognition the conversation path). The service's own STT pool serves its configured
//! combination (`STT_LANGUAGE` / `STT_MODE` / `STT_FORMAT`); every other combination an
//! SDK asks for gets a pool of its own, created on first use with the STT pool's settings
//! (max size, timeouts, refresh) and a warm target of one connection, so its second caller
//! is served warm. At most `max` such pools exist, so clients cannot make the service open
//! connections for every language tag they can spell.
//!
//! `STT_LANGUAGES` names languages to serve warm from the first call: their pools (with
//! `STT_MODE` / `STT_FORMAT`) are made at start-up with the STT pool's own warm target,
//! count toward readiness and are filled by `AppState::warm_up`; they do not use up the
//! bound on pools made on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pool_core::{Pool, PoolConfig, PoolSnapshot};
use speech_core::{RecognitionFormat, RecognitionMode, RecognizerFactory, RecognizerManager};

/// Default bound on pools created on demand.
pub const DEFAULT_MAX_POOLS: usize = 8;

/// One STT combination, as Azure fixes it per connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Combination {
    /// Recognition mode (from the path).
    pub mode: RecognitionMode,
    /// BCP 47 tag, as the client spelled it (Azure compares tags case-insensitively; the
    /// key lower-cases it).
    pub language: String,
    /// Phrase format.
    pub format: RecognitionFormat,
}

impl Combination {
    fn key(&self) -> (RecognitionMode, String, RecognitionFormat) {
        (self.mode, self.language.to_ascii_lowercase(), self.format)
    }
}

/// Why no pool can serve a combination.
#[derive(Debug, thiserror::Error)]
pub enum SttPoolError {
    /// The bound on on-demand pools is reached.
    #[error(
        "this service already serves {0} recognition combinations besides its own; \
         ask for one of them or raise the limit"
    )]
    Full(usize),
    /// The backend cannot open connections for this combination (e.g. a bad language tag).
    #[error("{0}")]
    Backend(#[from] speech_core::SpeechError),
    /// The pool could not be built.
    #[error("{0}")]
    Build(#[from] pool_core::BuildError),
}

/// The on-demand STT pools.
#[derive(Debug)]
pub struct SttPools {
    factory: Arc<dyn RecognizerFactory>,
    template: PoolConfig,
    max: usize,
    pools: Mutex<HashMap<(RecognitionMode, String, RecognitionFormat), Pool<RecognizerManager>>>,
    /// The pools `STT_LANGUAGES` asked for (also in `pools`), in the order configured.
    configured: Mutex<Vec<Pool<RecognizerManager>>>,
}

impl SttPools {
    /// Pools of `factory`'s backend, configured like `template` (the service's STT pool).
    pub fn new(factory: Arc<dyn RecognizerFactory>, template: PoolConfig, max: usize) -> Self {
        Self {
            factory,
            template,
            max,
            pools: Mutex::new(HashMap::new()),
            configured: Mutex::new(Vec::new()),
        }
    }

    /// Makes the pool of a configured combination (`STT_LANGUAGES`): warm target as the
    /// template's, outside the on-demand bound. Idempotent. Must run inside a tokio
    /// runtime when the template has background warm-up.
    pub fn add_configured(
        &self,
        combination: &Combination,
    ) -> Result<Pool<RecognizerManager>, SttPoolError> {
        let key = combination.key();
        let mut pools = self.lock();
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let pool = self.build(combination, self.template.warm_target)?;
        pools.insert(key, pool.clone());
        drop(pools);
        self.configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool.clone());
        Ok(pool)
    }

    /// The pools of `STT_LANGUAGES`.
    pub fn configured(&self) -> Vec<Pool<RecognizerManager>> {
        self.configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn build(
        &self,
        combination: &Combination,
        warm_target: usize,
    ) -> Result<Pool<RecognizerManager>, SttPoolError> {
        let factory = self.factory.for_combination(
            combination.mode,
            &combination.language,
            combination.format,
        )?;
        let config = PoolConfig {
            name: format!(
                "{}:{}:{}:{}",
                self.template.name,
                combination.mode.as_str(),
                combination.key().1,
                combination.format.as_str()
            ),
            warm_target,
            ..self.template.clone()
        };
        Ok(Pool::builder(RecognizerManager::from_arc(factory))
            .config(config)
            .build()?)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<(RecognitionMode, String, RecognitionFormat), Pool<RecognizerManager>>,
    > {
        // Only map operations run under this lock; a poisoned map is still valid.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool for `combination`, created on first use. Must run inside a tokio runtime.
    pub fn get(&self, combination: &Combination) -> Result<Pool<RecognizerManager>, SttPoolError> {
        let key = combination.key();
        let mut pools = self.lock();
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let configured = self
            .configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let on_demand = pools.len().saturating_sub(configured);
        if on_demand >= self.max {
            return Err(SttPoolError::Full(on_demand));
        }
        let pool = self.build(combination, self.template.warm_target.min(1))?;
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    /// Snapshots of every on-demand pool, by name.
    pub fn snapshots(&self) -> Vec<PoolSnapshot> {
        let mut s: Vec<_> = self.lock().values().map(Pool::snapshot).collect();
        s.sort_by(|a, b| a.name.cmp(&b.name));
        s
    }

    /// Shuts every on-demand pool down, closing its connections.
    pub async fn shutdown(&self) {
        let pools: Vec<_> = self.lock().values().cloned().collect();
        futures_util::future::join_all(pools.iter().map(Pool::shutdown)).await;
    }
}
