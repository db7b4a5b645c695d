//! Choosing and building the speech backend.
//!
//! Backends compile in through Cargo features (`azure`, `mock`); which one runs is chosen
//! at start-up from `SPEECH_BACKEND` and the Azure credentials. Either way the pools hold
//! speech-core's type-erased managers, so nothing past this module knows which it is.

use speech_core::{RecognizerManager, SynthesizerManager};

use crate::config::{BackendChoice, Config};

/// The backend serving the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Real Azure Speech.
    Azure,
    /// The in-process mock.
    Mock,
}

impl BackendKind {
    /// `azure` or `mock`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Azure => "azure",
            Self::Mock => "mock",
        }
    }

    /// Whether this binary was built with the backend's feature.
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Azure => cfg!(feature = "azure"),
            Self::Mock => cfg!(feature = "mock"),
        }
    }
}

/// Why the service could not start. Messages name the variables to change.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is incomplete or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The chosen backend's Cargo feature was not enabled at build time.
    #[error(
        "the {0} backend was requested but this binary was built without the `{0}` feature; \
         rebuild with `cargo build -p service --features {0}` or set SPEECH_BACKEND to a \
         compiled-in backend"
    )]
    NotCompiled(&'static str),
    /// The backend could not be set up (bad endpoint, unreadable CA file, …).
    #[error("setting up the {backend} backend failed: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Why (never contains a secret).
        message: String,
    },
    /// The pool configuration is invalid.
    #[error(transparent)]
    Pool(#[from] pool_core::BuildError),
}

/// Picks the backend: `SPEECH_BACKEND` when it says `azure` or `mock`; otherwise Azure when
/// `AZURE_SPEECH_KEY` and a region or endpoint are set, else the mock.
pub fn choose(config: &Config) -> Result<BackendKind, StartupError> {
    let has_key = config.azure_speech_key.is_some();
    let has_target = config.azure_speech_region.is_some() || config.azure_speech_endpoint.is_some();
    let kind = match config.backend {
        BackendChoice::Mock => BackendKind::Mock,
        BackendChoice::Azure => {
            if !has_key {
                return Err(StartupError::Config(
                    "SPEECH_BACKEND=azure needs AZURE_SPEECH_KEY (the Speech resource key)".into(),
                ));
            }
            if !has_target {
                return Err(StartupError::Config(
                    "SPEECH_BACKEND=azure needs AZURE_SPEECH_REGION (e.g. eastus) or \
                     AZURE_SPEECH_ENDPOINT (a base URL)"
                        .into(),
                ));
            }
            BackendKind::Azure
        }
        BackendChoice::Auto if has_key && has_target => BackendKind::Azure,
        BackendChoice::Auto if has_key => {
            // Half-configured Azure is almost certainly a mistake; silently serving mock
            // audio would hide it.
            return Err(StartupError::Config(
                "AZURE_SPEECH_KEY is set but neither AZURE_SPEECH_REGION nor \
                 AZURE_SPEECH_ENDPOINT is; set one of them, or SPEECH_BACKEND=mock"
                    .into(),
            ));
        }
        BackendChoice::Auto => BackendKind::Mock,
    };
    if !kind.compiled_in() {
        if config.backend == BackendChoice::Auto {
            // Nothing was requested explicitly: say what was missing for each backend.
            return Err(StartupError::Config(
                "no Azure credentials are set (AZURE_SPEECH_KEY with AZURE_SPEECH_REGION or \
                 AZURE_SPEECH_ENDPOINT) and this binary was built without the `mock` feature \
                 that would serve without them; set the credentials or rebuild with \
                 `--features mock`"
                    .into(),
            ));
        }
        return Err(StartupError::NotCompiled(kind.as_str()));
    }
    Ok(kind)
}

/// The two pool managers of a backend.
#[derive(Debug, Clone)]
pub struct Managers {
    /// Which backend.
    pub kind: BackendKind,
    /// Opens TTS connections.
    pub tts: SynthesizerManager,
    /// Opens STT connections.
    pub stt: RecognizerManager,
}

/// Builds the managers of the chosen backend.
pub fn build(config: &Config, kind: BackendKind) -> Result<Managers, StartupError> {
    match kind {
        BackendKind::Mock => build_mock(config),
        BackendKind::Azure => build_azure(config),
    }
}

/// Builds the manager of the text-streaming TTS pool (`GET /api/v1/tts/stream`): Azure's
/// v2 websocket, or the mock (which gathers the text, then speaks it).
pub fn build_tts_stream(
    config: &Config,
    kind: BackendKind,
) -> Result<SynthesizerManager, StartupError> {
    match kind {
        BackendKind::Mock => build_mock(config).map(|m| m.tts),
        BackendKind::Azure => build_azure_stream(config),
    }
}

#[cfg(feature = "azure")]
fn build_azure_stream(config: &Config) -> Result<SynthesizerManager, StartupError> {
    crate::azure::tts_stream_manager(config)
}

#[cfg(not(feature = "azure"))]
fn build_azure_stream(_: &Config) -> Result<SynthesizerManager, StartupError> {
    Err(StartupError::NotCompiled("azure"))
}

#[cfg(feature = "mock")]
fn build_mock(config: &Config) -> Result<Managers, StartupError> {
    use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};

    let mock = match config.mock_profile {
        crate::config::MockProfile::Realistic => MockConfig::realistic(),
        crate::config::MockProfile::Instant => MockConfig::default(),
    };
    let (tts, _) = mock_tts_manager(mock.clone());
    let (stt, _) = mock_stt_manager(mock);
    Ok(Managers {
        kind: BackendKind::Mock,
        tts,
        stt,
    })
}

#[cfg(not(feature = "mock"))]
fn build_mock(_: &Config) -> Result<Managers, StartupError> {
    Err(StartupError::NotCompiled("mock"))
}

#[cfg(feature = "azure")]
fn build_azure(config: &Config) -> Result<Managers, StartupError> {
    crate::azure::managers(config)
}

#[cfg(not(feature = "azure"))]
fn build_azure(_: &Config) -> Result<Managers, StartupError> {
    Err(StartupError::NotCompiled("azure"))
}

/// The one log line that says which backend runs and why.
pub fn log_choice(config: &Config, kind: BackendKind) {
    match (kind, config.backend) {
        (BackendKind::Mock, BackendChoice::Auto) => tracing::warn!(
            backend = "mock",
            "no Azure credentials (AZURE_SPEECH_KEY with AZURE_SPEECH_REGION or \
             AZURE_SPEECH_ENDPOINT): using the in-process MOCK backend, whose audio and \
             transcripts are synthetic"
        ),
        (BackendKind::Mock, _) => tracing::warn!(
            backend = "mock",
            "SPEECH_BACKEND=mock: using the in-process MOCK backend, whose audio and \
             transcripts are synthetic"
        ),
        (BackendKind::Azure, _) => tracing::info!(
            backend = "azure",
            region = config.azure_speech_region.as_deref(),
            endpoint = config.azure_speech_endpoint.as_deref(),
            "using Azure Speech"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn auto_picks_mock_without_credentials_and_azure_with_them() {
        let mut c = Config::defaults();
        assert_eq!(choose(&c).unwrap(), BackendKind::Mock);
        c.azure_speech_key = Some(Secret::new("k"));
        let e = choose(&c).unwrap_err().to_string();
        assert!(e.contains("AZURE_SPEECH_REGION"), "{e}");
        c.azure_speech_region = Some("eastus".into());
        assert_eq!(choose(&c).unwrap(), BackendKind::Azure);
        c.backend = BackendChoice::Mock;
        assert_eq!(choose(&c).unwrap(), BackendKind::Mock);
    }

    #[test]
    fn explicit_azure_needs_credentials() {
        let mut c = Config::defaults();
        c.backend = BackendChoice::Azure;
        let e = choose(&c).unwrap_err().to_string();
        assert!(e.contains("AZURE_SPEECH_KEY"), "{e}");
        c.azure_speech_key = Some(Secret::new("k"));
        let e = choose(&c).unwrap_err().to_string();
        assert!(e.contains("AZURE_SPEECH_ENDPOINT"), "{e}");
    }

    #[test]
    fn not_compiled_is_a_clear_error() {
        let e = StartupError::NotCompiled("azure").to_string();
        assert!(e.contains("--features azure"), "{e}");
    }
}
