//! TLS on the API port (rustls): certificate chain and key from PEM files,
//! HTTP/2 and HTTP/1.1 negotiated with ALPN.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use replyway_shared::settings::InvalidSetting;

/// `[tls]`: where the certificate and key are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// The acceptor for `config`, read from its files.
///
/// # Errors
/// [`InvalidSetting`] naming the file that cannot be used.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, InvalidSetting> {
    let certs = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| InvalidSetting::new("tls.cert_file", e.to_string()))?;
    if certs.is_empty() {
        return Err(InvalidSetting::new("tls.cert_file", "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| InvalidSetting::new("tls.key_file", e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| InvalidSetting::new("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| InvalidSetting::new("tls.key_file", e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
