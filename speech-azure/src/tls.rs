//! One rustls configuration, with one crypto provider (ring), for every TLS connection the
//! crate opens: token fetches and TTS REST (reqwest) and the websockets (tokio-tungstenite).
//!
//! Why one: two TLS stacks or two providers in one process double the attack surface and
//! make "which roots do we trust?" unanswerable. Both clients here take a preconfigured
//! `rustls::ClientConfig`, built once from the webpki roots plus any extra root CA (the
//! emulator's, an on-premises container's, a TLS-inspecting proxy's).

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::ConfigError;

/// Installs ring as the process-wide default rustls crypto provider. Idempotent, and
/// harmless if another part of the process already installed ring.
///
/// Why it exists although this crate never relies on the process default (it passes ring
/// explicitly): other crates in the same binary (axum-server, a metrics exporter, tests)
/// may call `ClientConfig::builder()`, which panics when no default is installed. Calling
/// this once at start-up makes the single-provider rule hold for the whole process.
pub fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // An error means a provider is already installed; the workspace builds rustls with
        // ring only, so it can only be ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Which certificate authorities to trust: always the webpki (Mozilla) roots, plus the
/// extra roots added here.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    extra_roots: Vec<CertificateDer<'static>>,
}

impl TlsOptions {
    /// Only the webpki roots: what real Azure needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts every certificate in a PEM bundle (e.g. the emulator's CA, or the CA of
    /// an on-premises container). Fails if the bundle holds no certificate, because a
    /// silently empty trust addition only shows up later as a baffling handshake failure.
    pub fn with_root_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ConfigError::Certificate(format!("bad PEM: {e}")))?;
            self.extra_roots.push(cert);
            added += 1;
        }
        if added == 0 {
            return Err(ConfigError::Certificate(
                "the PEM data contains no CERTIFICATE block".into(),
            ));
        }
        Ok(self)
    }

    /// Also trusts one DER-encoded certificate.
    pub fn with_root_der(mut self, der: CertificateDer<'static>) -> Self {
        self.extra_roots.push(der);
        self
    }

    /// How many extra roots were added.
    pub fn extra_root_count(&self) -> usize {
        self.extra_roots.len()
    }

    /// Builds the shared client configuration: ring, TLS 1.2 and 1.3, the roots, and ALPN
    /// `h2` then `http/1.1` (for REST). See [`TlsConfigs`] for the websocket variant.
    pub fn build(&self) -> Result<TlsConfigs, ConfigError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &self.extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| ConfigError::Certificate(format!("unusable root CA: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut rest = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Certificate(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        rest.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Websocket upgrades exist only in HTTP/1.1 (the SDKs never use RFC 8441), so the
        // websocket variant must not offer h2: a server picking it would break the upgrade.
        let mut ws = rest.clone();
        ws.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfigs {
            rest: Arc::new(rest),
            ws: Arc::new(ws),
        })
    }
}

/// The built configuration, in its two ALPN variants. Both share the same provider and
/// root store (one `ClientConfig` cloned; only `alpn_protocols` differs).
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// For reqwest (`tls_backend_preconfigured`): ALPN `h2`, `http/1.1`.
    pub rest: Arc<ClientConfig>,
    /// For tokio-tungstenite (`Connector::Rustls`): ALPN `http/1.1`.
    pub ws: Arc<ClientConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let err = TlsOptions::new().with_root_pem(b"not a pem").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let err = TlsOptions::new()
            .with_root_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn builds_with_webpki_roots() {
        let c = TlsOptions::new().build().expect("build");
        assert_eq!(c.rest.alpn_protocols.len(), 2);
        assert_eq!(c.ws.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
