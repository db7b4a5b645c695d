//! Wiring of the Azure backend (speech-azure) into the service's managers.

use crate::backend::{BackendKind, Managers, StartupError};
use crate::config::Config;

/// Builds the Azure TTS and STT managers from the configuration.
pub fn managers(_config: &Config) -> Result<Managers, StartupError> {
    let _ = BackendKind::Azure;
    Err(StartupError::Backend {
        backend: "azure",
        message: "speech-azure is not wired in yet".into(),
    })
}

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {}
