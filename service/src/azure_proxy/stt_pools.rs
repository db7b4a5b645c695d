//! STT pools for the combinations SDK clients ask for.
//!
//! Azure fixes an STT connection's mode, language and format at the handshake, and the
//! SDKs choose them per recognizer (`recognizeOnce` uses the interactive path, continuous
//! recognition the conversation path). The service's own STT pool serves its configured
//! combination (`STT_LANGUAGE` / `STT_MODE` / `STT_FORMAT`); every other combination an
//! SDK asks for gets a pool of its own, created on first use with the STT pool's settings
//! (max size, timeouts, refresh) and a warm target of one connection, so its second caller
//! is served warm. At most `max` such pools exist (`STT_ON_DEMAND_POOLS`), so clients cannot
//! make the service open connections for every language tag they can spell; when a new
//! combination needs room, the least recently used pool that has had no caller for
//! [`EVICT_AFTER`] and serves nobody now is shut down to make it, so a typo or a language
//! used once does not hold a place until the service restarts.
//!
//! `STT_LANGUAGES` names languages to serve warm from the first call: their pools (with
//! `STT_MODE` / `STT_FORMAT`) are made at start-up with the STT pool's own warm target,
//! count toward readiness and are filled by `AppState::warm_up`; they do not use up the
//! bound on pools made on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::{Pool, PoolConfig, PoolSnapshot};
use speech_core::{RecognitionFormat, RecognitionMode, RecognizerFactory, RecognizerManager};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// How long an on-demand pool must have gone without a caller before it may be shut down to
/// make room for another combination: far longer than the moment between a caller getting
/// its pool and acquiring from it, so no caller is handed a pool that is closing.
pub const EVICT_AFTER: Duration = Duration::from_secs(60);

type Key = (RecognitionMode, String, RecognitionFormat);

/// A pool and when a caller last asked for it.
#[derive(Debug)]
struct Held {
    pool: Pool<RecognizerManager>,
    /// Made for `STT_LANGUAGES`: never evicted, outside the on-demand bound.
    configured: bool,
    last_used: Instant,
}

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
    /// The bound on on-demand pools is reached, and every one of them is in use or was
    /// used in the last [`EVICT_AFTER`].
    #[error(
        "this service already serves {0} recognition combinations besides its own, all in \
         recent use; ask for one of them, list the language in STT_LANGUAGES, or raise \
         STT_ON_DEMAND_POOLS"
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
    /// Every pool, configured (`STT_LANGUAGES`) or made on demand, told apart by
    /// [`Held::configured`].
    pools: Mutex<HashMap<Key, Held>>,
    /// Shutdowns of evicted pools, awaited by [`shutdown`](Self::shutdown).
    evicted: TaskTracker,
}

impl SttPools {
    /// Pools of `factory`'s backend, configured like `template` (the service's STT pool).
    pub fn new(factory: Arc<dyn RecognizerFactory>, template: PoolConfig, max: usize) -> Self {
        Self {
            factory,
            template,
            max,
            pools: Mutex::new(HashMap::new()),
            evicted: TaskTracker::new(),
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
        if let Some(held) = pools.get_mut(&key) {
            held.configured = true;
            return Ok(held.pool.clone());
        }
        let pool = self.build(combination, self.template.warm_target)?;
        pools.insert(
            key,
            Held {
                pool: pool.clone(),
                configured: true,
                last_used: Instant::now(),
            },
        );
        Ok(pool)
    }

    /// The pools of `STT_LANGUAGES`, by name.
    pub fn configured(&self) -> Vec<Pool<RecognizerManager>> {
        let mut configured: Vec<_> = self
            .lock()
            .values()
            .filter(|h| h.configured)
            .map(|h| h.pool.clone())
            .collect();
        configured.sort_by(|a, b| a.config().name.cmp(&b.config().name));
        configured
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Held>> {
        // Only map operations run under this lock; a poisoned map is still valid.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool for `combination`, created on first use. Must run inside a tokio runtime.
    pub fn get(&self, combination: &Combination) -> Result<Pool<RecognizerManager>, SttPoolError> {
        let key = combination.key();
        let now = Instant::now();
        let mut pools = self.lock();
        if let Some(held) = pools.get_mut(&key) {
            held.last_used = now;
            return Ok(held.pool.clone());
        }
        let on_demand = pools.values().filter(|h| !h.configured).count();
        if on_demand >= self.max {
            let Some(lru) = Self::evictable(&pools, now) else {
                return Err(SttPoolError::Full(on_demand));
            };
            if let Some(held) = pools.remove(&lru) {
                tracing::info!(
                    pool = %held.pool.config().name,
                    "closing an on-demand STT pool unused for a while, to make room for another combination"
                );
                self.evicted
                    .spawn(async move { held.pool.shutdown().await });
            }
        }
        let pool = self.build(combination, self.template.warm_target.min(1))?;
        pools.insert(
            key,
            Held {
                pool: pool.clone(),
                configured: false,
                last_used: now,
            },
        );
        Ok(pool)
    }

    /// The least recently used on-demand pool that serves nobody (nothing checked out or
    /// bound to a session, nobody waiting) and has had no caller for [`EVICT_AFTER`].
    fn evictable(pools: &HashMap<Key, Held>, now: Instant) -> Option<Key> {
        pools
            .iter()
            .filter(|(_, h)| {
                let counts = h.pool.counts();
                !h.configured
                    && counts.in_use == 0
                    && counts.waiting == 0
                    && now.saturating_duration_since(h.last_used) >= EVICT_AFTER
            })
            .min_by_key(|(_, h)| h.last_used)
            .map(|(key, _)| key.clone())
    }

    /// Snapshots of every on-demand pool, by name.
    pub fn snapshots(&self) -> Vec<PoolSnapshot> {
        let mut s: Vec<_> = self.lock().values().map(|h| h.pool.snapshot()).collect();
        s.sort_by(|a, b| a.name.cmp(&b.name));
        s
    }

    /// Shuts every on-demand pool down, closing its connections.
    pub async fn shutdown(&self) {
        let pools: Vec<_> = self.lock().values().map(|h| h.pool.clone()).collect();
        futures_util::future::join_all(pools.iter().map(Pool::shutdown)).await;
        self.evicted.close();
        self.evicted.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use speech_mock::backend::{MockConfig, MockRecognizerFactory};

    fn pools(max: usize) -> SttPools {
        let template = PoolConfig {
            name: "speech-stt".into(),
            warm_target: 0,
            background_warmup: false,
            ..PoolConfig::default()
        };
        let factory: Arc<dyn RecognizerFactory> =
            Arc::new(MockRecognizerFactory::new(MockConfig::default()));
        SttPools::new(factory, template, max)
    }

    fn language(tag: &str) -> Combination {
        Combination {
            mode: RecognitionMode::Interactive,
            language: tag.into(),
            format: RecognitionFormat::Simple,
        }
    }

    fn names(p: &SttPools) -> Vec<String> {
        p.snapshots().into_iter().map(|s| s.name).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_idle_pool_makes_room_and_a_busy_one_never_does() {
        let p = pools(2);
        p.get(&language("de-DE")).expect("de");
        tokio::time::advance(Duration::from_secs(1)).await;
        let french = p.get(&language("fr-FR")).expect("fr");
        // Both in recent use: a third combination is refused, naming the setting.
        let refused = p.get(&language("it-IT")).expect_err("full").to_string();
        assert!(refused.contains("STT_ON_DEMAND_POOLS"), "{refused}");

        // A minute later the least recently used one (German) makes room.
        tokio::time::advance(EVICT_AFTER).await;
        p.get(&language("it-IT")).expect("room was made");
        assert_eq!(
            names(&p),
            [
                "speech-stt:interactive:fr-fr:simple",
                "speech-stt:interactive:it-it:simple"
            ]
        );

        // A pool serving a caller is never closed, however long ago it was asked for.
        let held = french.acquire().await.expect("a French connection");
        tokio::time::advance(EVICT_AFTER).await;
        p.get(&language("es-ES")).expect("Italian makes room");
        assert!(names(&p).contains(&"speech-stt:interactive:fr-fr:simple".to_owned()));
        let refused = p.get(&language("pt-PT"));
        assert!(matches!(refused, Err(SttPoolError::Full(2))), "{refused:?}");
        drop(held);

        p.shutdown().await;
        assert!(french.snapshot().size == 0 && !french.snapshot().ready);
    }

    #[tokio::test(start_paused = true)]
    async fn configured_pools_are_outside_the_bound_and_never_evicted() {
        let p = pools(0);
        p.add_configured(&language("de-DE")).expect("configured");
        tokio::time::advance(EVICT_AFTER * 2).await;
        // No room on demand at all, and the configured pool does not give up its place.
        assert!(matches!(
            p.get(&language("fr-FR")),
            Err(SttPoolError::Full(0))
        ));
        assert!(p.get(&language("de-DE")).is_ok());
        assert_eq!(names(&p), ["speech-stt:interactive:de-de:simple"]);
        p.shutdown().await;
    }
}
