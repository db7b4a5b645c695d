//! The emulator's TLS identity: a throwaway CA and a server certificate it signs for
//! `localhost` and `127.0.0.1`.
//!
//! A separate CA is needed because webpki (rustls) refuses a CA certificate used directly as
//! a server certificate; clients trust the CA ([`TlsIdentity::ca_cert_pem`]) and the server
//! presents the leaf.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA certificate plus the server certificate and key it signed.
#[derive(Clone)]
pub struct TlsIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    ca_der: Vec<u8>,
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_key_der: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Generates a fresh CA and a server certificate for `localhost`, `127.0.0.1` and `::1`
    /// plus any `extra_names` (e.g. `eastus.tts.speech.microsoft.com` for clients that map
    /// the real host names to loopback).
    pub fn generate(extra_names: &[String]) -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "speech-mock emulator CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(extra_names.iter().cloned());
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(names)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "speech-mock emulator");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

        Ok(Self {
            inner: Arc::new(Inner {
                ca_der: ca_cert.der().to_vec(),
                ca_pem: ca_cert.pem(),
                leaf_der: leaf.der().to_vec(),
                leaf_key_der: leaf_key.serialize_der(),
            }),
        })
    }

    /// The CA certificate in PEM, for clients to trust (e.g. `NODE_EXTRA_CA_CERTS`).
    pub fn ca_cert_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// The CA certificate in DER, for clients to trust.
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.inner.ca_der.clone())
    }

    /// A rustls server config (ring provider, ALPN `h2` then `http/1.1`).
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![
            CertificateDer::from(self.inner.leaf_der.clone()),
            CertificateDer::from(self.inner.ca_der.clone()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.inner.leaf_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}
