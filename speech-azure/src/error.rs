//! Configuration errors (turn errors are `speech_core::SpeechError`).

/// Why a client could not be configured. Raised at start-up, before any connection, so a
/// misconfiguration stops the service with a message naming what is wrong instead of
/// surfacing later as failed turns. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The region is not a plain Azure region name such as `westeurope`.
    #[error("invalid Azure region {0:?}: expected lowercase letters and digits, e.g. westeurope")]
    Region(String),
    /// The endpoint URL cannot be used.
    #[error("invalid endpoint {url:?}: {reason}")]
    Endpoint {
        /// The URL as given (endpoints carry no secrets; a query string is dropped).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The subscription key or token source is unusable.
    #[error("invalid credentials: {0}")]
    Credentials(String),
    /// A root certificate could not be read or used.
    #[error("invalid TLS certificate: {0}")]
    Certificate(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}
