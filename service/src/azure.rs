//! Wiring of the Azure backend (speech-azure) into the service's managers.

use speech_azure::{
    AzureSpeech, ConnectionPolicy, Credentials, Endpoint, Secret as AzureSecret, SttWsOptions,
    TlsOptions, TtsWsOptions,
};

use speech_core::SynthesizerManager;

use crate::backend::{BackendKind, Managers, StartupError};
use crate::config::{AzureAuth, Config, TtsTransport};

fn failed(message: String) -> StartupError {
    StartupError::Backend {
        backend: "azure",
        message,
    }
}

/// Builds the Azure TTS and STT managers from the configuration. No network I/O: the
/// first connections open when the pools warm up. Every error names the variable to fix.
pub fn managers(config: &Config) -> Result<Managers, StartupError> {
    let client = client(config)?;
    let tts = match config.azure_tts_transport {
        TtsTransport::Websocket => client.tts_ws_manager(TtsWsOptions::default()),
        TtsTransport::Rest => client.tts_rest_manager(),
    };
    let mut stt_options = SttWsOptions::new(config.stt_language.clone());
    stt_options.mode = config.stt_mode;
    stt_options.format = config.stt_format;
    let stt = client
        .stt_ws_manager(stt_options)
        .map_err(|e| failed(format!("STT_LANGUAGE / STT_MODE / STT_FORMAT: {e}")))?;
    Ok(Managers {
        kind: BackendKind::Azure,
        tts,
        stt,
    })
}

/// The manager of the text-streaming pool: Azure's v2 TTS websocket, whatever
/// `AZURE_TTS_TRANSPORT` says (only v2 takes text as it is written).
pub fn tts_stream_manager(config: &Config) -> Result<SynthesizerManager, StartupError> {
    Ok(client(config)?.tts_stream_manager())
}

/// The Azure client the configuration describes.
fn client(config: &Config) -> Result<AzureSpeech, StartupError> {
    let key = config
        .azure_speech_key
        .as_ref()
        .ok_or_else(|| failed("AZURE_SPEECH_KEY is not set".into()))?;
    let endpoint = match (&config.azure_speech_endpoint, &config.azure_speech_region) {
        (Some(url), _) => {
            Endpoint::parse(url).map_err(|e| failed(format!("AZURE_SPEECH_ENDPOINT: {e}")))?
        }
        (None, Some(region)) => {
            Endpoint::region(region).map_err(|e| failed(format!("AZURE_SPEECH_REGION: {e}")))?
        }
        (None, None) => {
            return Err(failed(
                "set AZURE_SPEECH_REGION or AZURE_SPEECH_ENDPOINT".into(),
            ));
        }
    };
    let secret = AzureSecret::new(key.expose());
    let credentials = match config.azure_speech_auth {
        AzureAuth::Key => Credentials::key(secret),
        AzureAuth::Token => Credentials::sts_token(secret),
    };
    let mut tls = TlsOptions::new();
    if let Some(path) = &config.azure_speech_ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            failed(format!(
                "AZURE_SPEECH_CA_CERT: cannot read {}: {e}",
                path.display()
            ))
        })?;
        tls = tls
            .with_root_pem(&pem)
            .map_err(|e| failed(format!("AZURE_SPEECH_CA_CERT ({}): {e}", path.display())))?;
    }
    let policy = ConnectionPolicy {
        liveness_gap: config.azure_speech_liveness_gap,
        ..ConnectionPolicy::default()
    };
    AzureSpeech::builder(endpoint, credentials)
        .tls(tls)
        .policy(policy)
        .user_agent(concat!("speech-pool/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| failed(e.to_string()))
}

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    speech_azure::install_crypto_provider();
}
