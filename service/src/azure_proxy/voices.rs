//! `GET /cognitiveservices/voices/list` (and `/tts/cognitiveservices/voices/list`): the
//! voices the backend speaks, as Azure's JSON array.
//!
//! The list comes from the TTS pool's backend
//! ([`SynthesizerFactory::voices`](speech_core::SynthesizerFactory::voices)): with the
//! azure backend it is Azure's own list, fetched from the region's voices endpoint and
//! passed through unchanged; with the mock backend a small fixed list of the mock's voices
//! in the same schema. It is cached for [`VOICES_TTL`]: the list changes when Microsoft
//! adds voices, not per request, and SDKs ask for it on start-up (`getVoicesAsync`), so
//! a fleet of restarting clients costs the upstream one request a minute. Concurrent
//! misses wait for one fetch. A failed fetch is not cached; its error reaches the client
//! with the status Azure would give (429 with `Retry-After` when throttled, 502 / 503 for
//! an upstream that failed).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use speech_core::SpeechError;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::auth;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a fetched list is served before it is fetched again.
pub const VOICES_TTL: Duration = Duration::from_secs(60);

/// The cached voices list.
#[derive(Debug, Default)]
pub struct VoicesCache {
    /// The list and when it was fetched. An async mutex, held across the fetch, so
    /// concurrent misses make one request.
    entry: Mutex<Option<(Instant, Bytes)>>,
}

impl VoicesCache {
    /// The list: cached if younger than [`VOICES_TTL`], else fetched with `fetch`.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Bytes, SpeechError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, SpeechError>>,
    {
        let mut entry = self.entry.lock().await;
        if let Some((at, list)) = entry.as_ref()
            && at.elapsed() < VOICES_TTL
        {
            return Ok(list.clone());
        }
        let list = fetch().await?;
        *entry = Some((Instant::now(), list.clone()));
        Ok(list)
    }
}

/// `GET /cognitiveservices/voices/list`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = auth::check(&state, &headers, &query) {
        return r;
    }
    let factory = std::sync::Arc::clone(state.pools().tts.manager().factory());
    match state
        .voices()
        .get(|| async move { factory.voices().await })
        .await
    {
        Ok(list) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=60"),
                ),
            ],
            list,
        )
            .into_response(),
        Err(e) => {
            state
                .metrics()
                .record_upstream_error(crate::state::TTS_POOL, e.class());
            tracing::warn!(error = %e, "the voices list could not be fetched");
            ApiError::from_speech(&e).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fetched_once_per_ttl_and_failures_are_not_cached() {
        let cache = VoicesCache::default();
        let calls = AtomicU32::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, SpeechError>(Bytes::from_static(b"[]"))
        };
        assert_eq!(cache.get(fetch).await.unwrap(), "[]");
        assert_eq!(cache.get(fetch).await.unwrap(), "[]");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(VOICES_TTL).await;
        let failed = cache
            .get(|| async { Err::<Bytes, _>(SpeechError::transient("down")) })
            .await;
        assert!(failed.is_err());
        assert_eq!(cache.get(fetch).await.unwrap(), "[]");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
