//! Real Azure Speech connections for the warm pools: TTS over REST, TTS over websocket and
//! STT over websocket, with their authentication and warm-up, implementing
//! `speech_core`'s [`Synthesizer`](speech_core::Synthesizer) /
//! [`Recognizer`](speech_core::Recognizer) traits and handing out `pool_core::Manager`s
//! for them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use speech_azure::{AzureSpeech, Credentials, Endpoint, SttWsOptions, TtsWsOptions};
//!
//! speech_azure::install_crypto_provider();
//! let azure = AzureSpeech::builder(Endpoint::region("westeurope")?, Credentials::key("…"))
//!     .build()?;
//! let tts = pool_core::Pool::builder(azure.tts_ws_manager(TtsWsOptions::default()))
//!     .warm_target(3)
//!     .background_warmup(true)
//!     .max_age(Some(std::time::Duration::from_secs(8 * 60)))
//!     .max_idle(Some(std::time::Duration::from_secs(120)))
//!     .build()?;
//! let stt = azure.stt_ws_manager(SttWsOptions::new("en-US"))?;
//! # let _ = (tts, stt); Ok(()) }
//! ```
//!
//! Map of the crate:
//! - [`Credentials`], [`Authenticator`], [`TokenPolicy`]: key, STS token (cached, refreshed
//!   ahead of expiry, one fetch at a time, back-off after failures), Entra `aad#` tokens.
//! - [`Endpoint`]: region (with sovereign-cloud suffixes), custom domain, explicit host.
//! - [`TlsOptions`], [`install_crypto_provider`]: one rustls configuration, ring only.
//! - [`frame`]: the websocket message codec.
//! - [`TtsWebSocket`], [`TtsRest`], [`SttWebSocket`]: the connections; [`TtsStreamWebSocket`]
//!   (the v2 path) speaks text while it is being written.
//! - [`ConnectionPolicy`]: when a connection counts as ready, and the timeouts.
//!
//! Error mapping (handshake statuses, close codes, in-band statuses) follows
//! `speech_core::SpeechError::{from_http_status, from_close_code}`; a server close 1000 on
//! an idle connection only makes it not ready. Secrets live in [`Secret`], which never
//! prints its value.

#![warn(missing_docs)]

mod auth;
mod client;
mod endpoint;
mod error;
mod policy;
mod secret;
mod stt_ws;
mod tls;
mod tts_rest;
mod tts_stream;
mod tts_ws;
mod util;
mod ws;

/// The websocket message codec, which lives in speech-core (the service frames the same
/// messages when it serves the protocol itself).
pub use speech_core::wire as frame;

pub use auth::{
    AUTH_HEADER, AccessToken, AuthHeader, Authenticator, Credentials, EntraTokenSource, KEY_HEADER,
    TokenPolicy,
};
pub use client::{AzureSpeech, AzureSpeechBuilder};
pub use endpoint::Endpoint;
pub use error::ConfigError;
pub use policy::ConnectionPolicy;
pub use secret::Secret;
pub use stt_ws::{SttWebSocket, SttWsFactory, SttWsOptions};
pub use tls::{TlsConfigs, TlsOptions, install_crypto_provider};
pub use tts_rest::{TtsRest, TtsRestFactory};
pub use tts_stream::{TtsStreamFactory, TtsStreamWebSocket};
pub use tts_ws::{TtsWebSocket, TtsWsFactory, TtsWsOptions};
