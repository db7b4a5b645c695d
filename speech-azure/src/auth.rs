//! Credentials and the token cache: subscription key, STS bearer tokens (cached, refreshed
//! ahead of expiry with single flight and back-off), and Microsoft Entra tokens in the
//! `aad#<resourceId>#<token>` form.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use speech_core::SpeechError;
use tokio::time::Instant;
use url::Url;

use crate::error::ConfigError;
use crate::secret::Secret;
use crate::util::{reqwest_error, retry_after};

/// Header carrying a subscription key.
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";
/// Header carrying a bearer token.
pub const AUTH_HEADER: &str = "Authorization";

/// An access token from Microsoft Entra ID, with its expiry.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The raw Entra access token (no `Bearer `, no `aad#` prefix).
    pub token: Secret,
    /// When it stops being valid.
    pub expires_at: SystemTime,
}

/// Supplies Microsoft Entra access tokens (scope `https://cognitiveservices.azure.com/.default`).
///
/// Why a trait instead of a dependency on `azure_identity`: that crate brings its own HTTP
/// and TLS stack, which would break the one-provider rule; a service can implement this in
/// a few lines over whatever identity library (or managed-identity endpoint) it uses. The
/// result is cached and refreshed like an STS token.
#[async_trait]
pub trait EntraTokenSource: fmt::Debug + Send + Sync + 'static {
    /// Fetches a fresh token. Errors must not contain the token or any client secret.
    async fn access_token(&self) -> Result<AccessToken, SpeechError>;
}

/// How to authenticate with the service.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `Ocp-Apim-Subscription-Key` on every request and handshake. Simplest, never
    /// expires, works with private endpoints.
    Key(Secret),
    /// Exchange the key for a 10-minute STS token (`issueToken`) and send
    /// `Authorization: Bearer` everywhere else. The key then travels only to the token
    /// endpoint.
    StsToken(Secret),
    /// Microsoft Entra ID: `Authorization: Bearer aad#<resource_id>#<token>`. Needs a
    /// custom-domain endpoint.
    Entra {
        /// The Speech resource's Azure resource id (`/subscriptions/…/accounts/<name>`).
        resource_id: String,
        /// Where tokens come from.
        source: Arc<dyn EntraTokenSource>,
    },
}

impl Credentials {
    /// A subscription key (`Ocp-Apim-Subscription-Key`).
    pub fn key(key: impl Into<Secret>) -> Self {
        Self::Key(key.into())
    }

    /// STS tokens fetched with `key`.
    pub fn sts_token(key: impl Into<Secret>) -> Self {
        Self::StsToken(key.into())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Key(k) | Self::StsToken(k) => {
                if k.is_empty() {
                    return Err(ConfigError::Credentials(
                        "the subscription key is empty".into(),
                    ));
                }
                if !k.expose().bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ConfigError::Credentials(
                        "the subscription key contains whitespace or non-ASCII characters".into(),
                    ));
                }
                Ok(())
            }
            Self::Entra { resource_id, .. } => {
                if resource_id.trim().is_empty()
                    || resource_id.contains('#')
                    || !resource_id.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(ConfigError::Credentials(
                        "the Entra resource id must be a non-empty ASCII resource id without '#'"
                            .into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// When tokens are refreshed. Tokens live ten minutes and are checked only when a
/// connection opens (docs/protocol.md#token-endpoint), so the defaults never use a token
/// with less than 60 s left and start a background refresh two minutes before expiry.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// A cached token with less life left than this is not used; callers wait for a fresh
    /// one. Default 60 s.
    pub min_validity: Duration,
    /// A cached token with less life left than this is still used, but a background refresh
    /// starts (once), so no caller waits for a fetch in steady state. Default 120 s.
    pub refresh_ahead: Duration,
    /// Token lifetime assumed when the token's `exp` cannot be read. Default 600 s.
    pub assumed_lifetime: Duration,
    /// First delay after a failed fetch before the next attempt; doubles per failure, with
    /// jitter. Default 500 ms.
    pub backoff_base: Duration,
    /// Longest back-off. Default 30 s.
    pub backoff_max: Duration,
    /// Bound on one token fetch. Default 10 s.
    pub fetch_timeout: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            min_validity: Duration::from_secs(60),
            refresh_ahead: Duration::from_secs(120),
            assumed_lifetime: Duration::from_secs(600),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// The authentication header for one request or handshake.
#[derive(Debug, Clone)]
pub struct AuthHeader {
    /// `Ocp-Apim-Subscription-Key` or `Authorization`.
    pub name: &'static str,
    /// The header value (`Bearer …` for tokens).
    pub value: Secret,
    /// When the token expires (`None` for a key).
    pub expires_at: Option<Instant>,
}

/// Produces authentication headers, caching tokens. Cheap to clone (shared state), so all
/// connections of a client share one token and one refresh.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner.mode {
            Mode::Key(_) => "key",
            Mode::Sts { .. } => "sts-token",
            Mode::Entra { .. } => "entra",
        };
        f.debug_struct("Authenticator")
            .field("kind", &kind)
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

enum Mode {
    Key(Secret),
    Sts {
        key: Secret,
        client: reqwest::Client,
        url: Url,
    },
    Entra {
        resource_id: String,
        source: Arc<dyn EntraTokenSource>,
    },
}

struct Inner {
    mode: Mode,
    policy: TokenPolicy,
    state: Mutex<State>,
    /// Held while fetching: the single flight. Waiters re-check the cache after it.
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    failures_total: AtomicU64,
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<SpeechError>,
    background: bool,
}

#[derive(Clone)]
struct Cached {
    header: Secret,
    expires_at: Instant,
}

impl Authenticator {
    pub(crate) fn new(
        credentials: Credentials,
        policy: TokenPolicy,
        client: reqwest::Client,
        token_url: Url,
    ) -> Self {
        let mode = match credentials {
            Credentials::Key(k) => Mode::Key(k),
            Credentials::StsToken(key) => Mode::Sts {
                key,
                client,
                url: token_url,
            },
            Credentials::Entra {
                resource_id,
                source,
            } => Mode::Entra {
                resource_id,
                source,
            },
        };
        Self {
            inner: Arc::new(Inner {
                mode,
                policy,
                state: Mutex::new(State::default()),
                refresh: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
                failures_total: AtomicU64::new(0),
            }),
        }
    }

    /// Whether requests carry a bearer token (which expires) rather than a key.
    pub fn is_token_based(&self) -> bool {
        !matches!(self.inner.mode, Mode::Key(_))
    }

    /// The secret the service could echo back in an error body (key or current token),
    /// for redaction.
    pub(crate) fn key_secret(&self) -> Option<&Secret> {
        match &self.inner.mode {
            Mode::Key(k) | Mode::Sts { key: k, .. } => Some(k),
            Mode::Entra { .. } => None,
        }
    }

    /// Token fetches attempted so far (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Token fetches that failed so far.
    pub fn failure_count(&self) -> u64 {
        self.inner.failures_total.load(Ordering::Relaxed)
    }

    /// Expiry of the cached token, if any.
    pub fn cached_expiry(&self) -> Option<Instant> {
        self.state().token.as_ref().map(|c| c.expires_at)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets `header` if it is the cached token: the service rejected it (401), so the
    /// next call fetches a new one. A newer token cached meanwhile is kept.
    pub fn invalidate(&self, header: &Secret) {
        let mut st = self.state();
        if st.token.as_ref().is_some_and(|c| &c.header == header) {
            st.token = None;
        }
    }

    /// The header to send now: the key, or a token with at least `min_validity` left,
    /// fetching one if needed (one fetch at a time; concurrent callers share it).
    ///
    /// After a failed fetch, callers within the back-off window get the last error
    /// immediately instead of hammering the token endpoint.
    pub async fn header(&self) -> Result<AuthHeader, SpeechError> {
        if let Mode::Key(k) = &self.inner.mode {
            return Ok(AuthHeader {
                name: KEY_HEADER,
                value: k.clone(),
                expires_at: None,
            });
        }
        if let Some(h) = self.cached(true) {
            return Ok(h);
        }
        let _flight = self.inner.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(h) = self.cached(false) {
            return Ok(h);
        }
        {
            let st = self.state();
            if let (Some(at), Some(err)) = (st.retry_at, &st.last_error)
                && Instant::now() < at
            {
                return Err(err.clone());
            }
        }
        let cached = self.fetch_and_store().await?;
        Ok(bearer(&cached))
    }

    /// The cached token if it is still usable; may start a background refresh.
    fn cached(&self, may_spawn: bool) -> Option<AuthHeader> {
        let p = self.inner.policy;
        let now = Instant::now();
        let mut st = self.state();
        let c = st.token.clone()?;
        let left = c.expires_at.saturating_duration_since(now);
        if left < p.min_validity {
            return None;
        }
        let in_backoff = st.retry_at.is_some_and(|at| now < at);
        if may_spawn
            && left < p.refresh_ahead
            && !st.background
            && !in_backoff
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            st.background = true;
            let me = self.clone();
            rt.spawn(async move {
                me.background_refresh().await;
            });
        }
        Some(bearer(&c))
    }

    async fn background_refresh(&self) {
        let _flight = self.inner.refresh.lock().await;
        let needed = {
            let st = self.state();
            let now = Instant::now();
            let left = st.token.as_ref().map_or(Duration::ZERO, |c| {
                c.expires_at.saturating_duration_since(now)
            });
            left < self.inner.policy.refresh_ahead && st.retry_at.is_none_or(|at| now >= at)
        };
        if needed && let Err(e) = self.fetch_and_store().await {
            tracing::warn!(error = %e, "background token refresh failed; the current token is kept");
        }
        self.state().background = false;
    }

    /// Fetches a token (caller holds the flight lock) and records the outcome.
    async fn fetch_and_store(&self) -> Result<Cached, SpeechError> {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let p = self.inner.policy;
        let result = match tokio::time::timeout(p.fetch_timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(SpeechError::timeout(format!(
                "token request took longer than {} ms",
                p.fetch_timeout.as_millis()
            ))),
        };
        let mut st = self.state();
        match result {
            Ok(c) => {
                st.token = Some(c.clone());
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                tracing::debug!(
                    valid_for_s = c
                        .expires_at
                        .saturating_duration_since(Instant::now())
                        .as_secs(),
                    "token refreshed"
                );
                Ok(c)
            }
            Err(e) => {
                self.inner.failures_total.fetch_add(1, Ordering::Relaxed);
                st.failures = st.failures.saturating_add(1);
                let exp = p
                    .backoff_base
                    .saturating_mul(1u32 << st.failures.saturating_sub(1).min(16))
                    .min(p.backoff_max);
                // Full jitter in [exp/2, exp], so many processes do not retry in step.
                let jittered = exp / 2 + exp.mul_f64(fastrand::f64() / 2.0);
                let wait = e.retry_after().map_or(jittered, |ra| ra.max(jittered));
                st.retry_at = Some(Instant::now() + wait);
                st.last_error = Some(e.clone());
                tracing::warn!(error = %e, failures = st.failures, retry_in_ms = wait.as_millis() as u64, "token fetch failed");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Cached, SpeechError> {
        let p = self.inner.policy;
        match &self.inner.mode {
            Mode::Key(_) => Err(SpeechError::protocol("a key needs no token")),
            Mode::Sts { key, client, url } => {
                let resp = client
                    .post(url.clone())
                    .header(KEY_HEADER, key.expose())
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    // The HTTP client writes no length for an empty body, and Azure
                    // answers a POST without one `411 Length Required`.
                    .header(reqwest::header::CONTENT_LENGTH, "0")
                    .body("")
                    .send()
                    .await
                    .map_err(|e| reqwest_error("token request", e))?;
                let status = resp.status().as_u16();
                let ra = retry_after(resp.headers());
                if status != 200 {
                    return Err(SpeechError::from_http_status(
                        status,
                        ra,
                        "the token endpoint refused the request",
                    ));
                }
                let body = resp
                    .text()
                    .await
                    .map_err(|e| reqwest_error("token response", e))?;
                let token = body.trim();
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SpeechError::protocol(
                        "the token endpoint returned an empty or malformed token",
                    ));
                }
                let expires_at = match jwt_exp(token) {
                    Some(exp) => instant_for(exp),
                    None => Instant::now() + p.assumed_lifetime,
                };
                Ok(Cached {
                    header: Secret::new(format!("Bearer {token}")),
                    expires_at,
                })
            }
            Mode::Entra {
                resource_id,
                source,
            } => {
                let t = source.access_token().await?;
                let raw = t.token.expose();
                if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SpeechError::auth(
                        "the Entra token source returned a malformed token",
                    ));
                }
                Ok(Cached {
                    header: Secret::new(format!("Bearer aad#{resource_id}#{raw}")),
                    expires_at: instant_for(t.expires_at),
                })
            }
        }
    }
}

fn bearer(c: &Cached) -> AuthHeader {
    AuthHeader {
        name: AUTH_HEADER,
        value: c.header.clone(),
        expires_at: Some(c.expires_at),
    }
}

/// The `exp` claim of a JWT, without verifying it (we only need to know when to refresh).
fn jwt_exp(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = v.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// Converts a wall-clock expiry to the monotonic clock used for all comparisons.
fn instant_for(at: SystemTime) -> Instant {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left.min(Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jwt_exp() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"exp":2000000000,"region":"x"}"#);
        let t = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        assert_eq!(
            jwt_exp(&t),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
        assert_eq!(
            jwt_exp(&format!("a.{}.c", URL_SAFE_NO_PAD.encode("[]"))),
            None
        );
    }

    #[test]
    fn credential_validation() {
        assert!(Credentials::key("").validate().is_err());
        assert!(Credentials::key("a b").validate().is_err());
        assert!(Credentials::sts_token("abc123").validate().is_ok());
        let dbg = format!("{:?}", Credentials::key("very-secret-key-1"));
        assert!(!dbg.contains("very-secret"), "{dbg}");
    }

    #[derive(Debug)]
    struct Fixed(AtomicU64);

    #[async_trait]
    impl EntraTokenSource for Fixed {
        async fn access_token(&self) -> Result<AccessToken, SpeechError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(AccessToken {
                token: Secret::new(format!("entra-token-{n}")),
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            })
        }
    }

    #[tokio::test]
    async fn entra_form_and_single_flight() {
        crate::tls::install_crypto_provider();
        let source = Arc::new(Fixed(AtomicU64::new(0)));
        let auth = Authenticator::new(
            Credentials::Entra {
                resource_id: "/subscriptions/s/accounts/a".into(),
                source: source.clone(),
            },
            TokenPolicy::default(),
            reqwest::Client::builder().build().expect("client"),
            Url::parse("https://example.invalid/").expect("url"),
        );
        let (a, b) = tokio::join!(auth.header(), auth.header());
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_eq!(a.name, AUTH_HEADER);
        assert_eq!(
            a.value.expose(),
            "Bearer aad#/subscriptions/s/accounts/a#entra-token-0"
        );
        assert_eq!(a.value, b.value);
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            1,
            "one fetch for two callers"
        );
        assert!(!format!("{auth:?}").contains("entra-token"));
        auth.invalidate(&a.value);
        let c = auth.header().await.expect("c");
        assert!(c.value.expose().ends_with("entra-token-1"));
    }
}
