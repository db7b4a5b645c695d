//! The configured client: endpoint, credentials, TLS, policies; and the factories that
//! open its connections.

use std::sync::Arc;
use std::time::Duration;

use speech_core::{RecognizerManager, SpeechError, SynthesizerManager};

use crate::auth::{Authenticator, Credentials, TokenPolicy};
use crate::endpoint::Endpoint;
use crate::error::ConfigError;
use crate::policy::ConnectionPolicy;
use crate::stt_ws::{SttWebSocket, SttWsFactory, SttWsOptions};
use crate::tls::{TlsConfigs, TlsOptions};
use crate::tts_rest::{TtsRest, TtsRestFactory};
use crate::tts_stream::{TtsStreamFactory, TtsStreamWebSocket};
use crate::tts_ws::{TtsWebSocket, TtsWsFactory, TtsWsOptions};
use crate::util::{excerpt, reqwest_error, retry_after};

/// The default `User-Agent`.
const USER_AGENT: &str = concat!("speech-azure/", env!("CARGO_PKG_VERSION"));

/// Builds an [`AzureSpeech`] client.
#[derive(Debug)]
pub struct AzureSpeechBuilder {
    endpoint: Endpoint,
    credentials: Credentials,
    tls: TlsOptions,
    policy: ConnectionPolicy,
    token_policy: TokenPolicy,
    user_agent: String,
}

impl AzureSpeechBuilder {
    /// Trust these roots in addition to the webpki roots.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// Connection lifetimes and timeouts.
    pub fn policy(mut self, policy: ConnectionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Token refresh timing.
    pub fn token_policy(mut self, policy: TokenPolicy) -> Self {
        self.token_policy = policy;
        self
    }

    /// The `User-Agent` sent with every request (the REST docs ask for an application
    /// name); at most 255 printable ASCII characters.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Validates everything and builds the shared TLS configuration and token client. No
    /// network I/O happens here.
    pub fn build(self) -> Result<AzureSpeech, ConfigError> {
        self.credentials.validate()?;
        self.policy.validate()?;
        if self.token_policy.min_validity > self.token_policy.refresh_ahead {
            return Err(ConfigError::Setting {
                name: "token_policy.refresh_ahead",
                reason: "must be at least min_validity".into(),
            });
        }
        if self.user_agent.is_empty()
            || self.user_agent.len() > 255
            || !self.user_agent.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(ConfigError::Setting {
                name: "user_agent",
                reason: "must be 1 to 255 printable ASCII characters".into(),
            });
        }
        let tls = self.tls.build()?;
        let http = http_client(
            &tls,
            &self.policy,
            &self.user_agent,
            Duration::from_secs(90),
        )?;
        let auth = Authenticator::new(
            self.credentials,
            self.token_policy,
            http.clone(),
            self.endpoint.token_url(),
        );
        Ok(AzureSpeech {
            inner: Arc::new(ClientInner {
                endpoint: self.endpoint,
                auth,
                tls,
                policy: self.policy,
                user_agent: self.user_agent,
                http,
            }),
        })
    }
}

/// Builds a reqwest client over the shared rustls configuration.
pub(crate) fn http_client(
    tls: &TlsConfigs,
    policy: &ConnectionPolicy,
    user_agent: &str,
    idle: Duration,
) -> Result<reqwest::Client, ConfigError> {
    // reqwest refuses to build a client (it panics) when no process-wide provider is
    // installed, even with a preconfigured TLS backend.
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls.rest).clone())
        .connect_timeout(policy.connect_timeout)
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(1)
        .user_agent(user_agent)
        // Never follow redirects with credentials attached to another host.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ConfigError::HttpClient(crate::util::with_sources(e.to_string(), &e)))
}

pub(crate) struct ClientInner {
    pub(crate) endpoint: Endpoint,
    pub(crate) auth: Authenticator,
    pub(crate) tls: TlsConfigs,
    pub(crate) policy: ConnectionPolicy,
    pub(crate) user_agent: String,
    /// For the client's own one-off requests (the voices list); the token client shares
    /// it. Pooled TTS REST connections have their own.
    pub(crate) http: reqwest::Client,
}

/// A configured Azure Speech client. Cheap to clone; clones share the token cache and TLS
/// configuration. Opens connections ([`connect_tts_ws`](Self::connect_tts_ws), …) and
/// hands out pool managers for them ([`tts_ws_manager`](Self::tts_ws_manager), …).
#[derive(Clone)]
pub struct AzureSpeech {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for AzureSpeech {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSpeech")
            .field("endpoint", &self.inner.endpoint)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

impl AzureSpeech {
    /// Starts a builder. Installs the ring crypto provider as the process default (see
    /// [`install_crypto_provider`](crate::install_crypto_provider)).
    pub fn builder(endpoint: Endpoint, credentials: Credentials) -> AzureSpeechBuilder {
        crate::tls::install_crypto_provider();
        AzureSpeechBuilder {
            endpoint,
            credentials,
            tls: TlsOptions::new(),
            policy: ConnectionPolicy::default(),
            token_policy: TokenPolicy::default(),
            user_agent: USER_AGENT.to_owned(),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The shared authenticator (token cache).
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// The connection policy.
    pub fn policy(&self) -> &ConnectionPolicy {
        &self.inner.policy
    }

    /// Opens a TTS websocket (not yet warmed: call `warm` or let the pool do it).
    pub async fn connect_tts_ws(&self, options: TtsWsOptions) -> Result<TtsWebSocket, SpeechError> {
        TtsWebSocket::connect(Arc::clone(&self.inner), options, None).await
    }

    /// Opens a v2 TTS websocket, the one that takes text as it is written (not yet
    /// warmed: call `warm` or let the pool do it).
    pub async fn connect_tts_stream_ws(&self) -> Result<TtsStreamWebSocket, SpeechError> {
        TtsStreamWebSocket::connect(Arc::clone(&self.inner), None).await
    }

    /// Creates a TTS REST connection (its HTTP connection opens on warm-up or first use).
    pub async fn connect_tts_rest(&self) -> Result<TtsRest, SpeechError> {
        TtsRest::connect(Arc::clone(&self.inner)).await
    }

    /// Opens an STT websocket for one (mode, language, format).
    pub async fn connect_stt_ws(&self, options: SttWsOptions) -> Result<SttWebSocket, SpeechError> {
        SttWebSocket::connect(Arc::clone(&self.inner), options, None).await
    }

    /// The voices list (`GET /cognitiveservices/voices/list`): the service's JSON body,
    /// unchanged (docs/protocol.md#voices-list). One request per call (callers cache it);
    /// a bearer token the service refuses is refreshed once, as for TTS REST. Errors are
    /// classified like any request's and carry no secret.
    pub async fn voices_list(&self) -> Result<bytes::Bytes, SpeechError> {
        let inner = &self.inner;
        let url = inner.endpoint.voices_url();
        let timeout = inner.policy.first_response_timeout;
        let mut retried = false;
        loop {
            let auth = inner.auth.header().await?;
            let req = inner
                .http
                .get(url.clone())
                .header(auth.name, auth.value.expose());
            let resp = tokio::time::timeout(timeout, req.send())
                .await
                .map_err(|_| SpeechError::timeout("the voices list did not answer in time"))?
                .map_err(|e| reqwest_error("voices list request", e))?;
            let status = resp.status().as_u16();
            let ra = retry_after(resp.headers());
            let body = tokio::time::timeout(timeout, resp.bytes())
                .await
                .map_err(|_| SpeechError::timeout("reading the voices list timed out"))?
                .map_err(|e| reqwest_error("reading the voices list", e))?;
            if status == 200 {
                return Ok(body);
            }
            if status == 401 && inner.auth.is_token_based() && !retried {
                retried = true;
                inner.auth.invalidate(&auth.value);
                continue;
            }
            let mut text = auth
                .value
                .redact_in(&excerpt(&String::from_utf8_lossy(&body)));
            if let Some(k) = inner.auth.key_secret() {
                text = k.redact_in(&text);
            }
            if text.is_empty() {
                text = "the service refused the voices list request".to_owned();
            }
            return Err(SpeechError::from_http_status(status, ra, text));
        }
    }

    /// A pool manager of TTS websockets.
    pub fn tts_ws_manager(&self, options: TtsWsOptions) -> SynthesizerManager {
        SynthesizerManager::new(TtsWsFactory {
            client: self.clone(),
            options,
            dead_signal: Arc::default(),
        })
    }

    /// A pool manager of v2 TTS websockets, for text streaming
    /// ([`Synthesizer::synthesize_text_stream`](speech_core::Synthesizer::synthesize_text_stream)).
    pub fn tts_stream_manager(&self) -> SynthesizerManager {
        SynthesizerManager::new(TtsStreamFactory {
            client: self.clone(),
            dead_signal: Arc::default(),
        })
    }

    /// A pool manager of TTS REST connections.
    pub fn tts_rest_manager(&self) -> SynthesizerManager {
        SynthesizerManager::new(TtsRestFactory {
            client: self.clone(),
        })
    }

    /// A pool manager of STT websockets for one (mode, language, format).
    pub fn stt_ws_manager(&self, options: SttWsOptions) -> Result<RecognizerManager, SpeechError> {
        options.validate()?;
        Ok(RecognizerManager::new(SttWsFactory {
            client: self.clone(),
            options,
            dead_signal: Arc::default(),
        }))
    }
}
