//! How the outbox reaches PostgreSQL: the checked `postgres.url`, and TLS
//! (`postgres.tls_ca_file`). With a CA file every connection of a service in
//! outbox mode and of its relay — SQL and replication — is TLS, and the
//! server's certificate must be signed by a CA in that file and name the
//! URL's host; a server that does not offer TLS is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use crate::settings::InvalidSetting;

/// The database of the outbox, built once from the settings
/// ([`PostgresSettings::database`](super::PostgresSettings::database)).
#[derive(Clone, Debug)]
pub struct Database {
    /// The client configuration of `postgres.url`.
    pub config: Config,
    /// Plain or TLS.
    pub tls: Tls,
}

/// How connections to PostgreSQL are made: plain, or TLS verified against
/// the configured CAs.
#[derive(Clone)]
pub enum Tls {
    /// No TLS (`postgres.tls_ca_file` unset).
    Plain,
    /// TLS, the server verified against the CAs of `ca_file`.
    Verified {
        /// The CA file (the replication connection reads it itself).
        ca_file: PathBuf,
        /// The SQL connections' TLS.
        make: MakeRustlsConnect,
    },
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            Self::Verified { ca_file, .. } => f
                .debug_struct("Verified")
                .field("ca_file", ca_file)
                .finish(),
        }
    }
}

impl Tls {
    /// TLS with the CAs of `ca_file` (none: plain), read and checked now.
    ///
    /// # Errors
    /// [`InvalidSetting`] (`postgres.tls_ca_file`) when the file cannot be
    /// read or holds no certificate.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, InvalidSetting> {
        let Some(ca_file) = ca_file else {
            return Ok(Self::Plain);
        };
        let bad = |reason: String| InvalidSetting::new("postgres.tls_ca_file", reason);
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| bad(format!("cannot read {}: {e}", ca_file.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| bad(format!("{}: {e}", ca_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("{}: {e}", ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(bad(format!("{} holds no certificate", ca_file.display())));
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::Verified {
            ca_file: ca_file.to_owned(),
            make: MakeRustlsConnect::new(config),
        })
    }

    /// The replication connection's TLS settings, for the URL's `host`.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        match self {
            Self::Plain => pgwire_replication::TlsConfig::disabled(),
            // The host named as the server name, also when it is an IP
            // address (which pgwire-replication would refuse to verify
            // otherwise): the certificate must name that address.
            Self::Verified { ca_file, .. } => {
                pgwire_replication::TlsConfig::verify_full(Some(ca_file.clone()))
                    .with_sni_hostname(host)
            }
        }
    }
}

impl Database {
    /// Opens a connection and drives it in the background.
    ///
    /// # Errors
    /// As [`Database::connect_watched`].
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        Ok(self.connect_watched().await?.0)
    }

    /// Opens a connection and drives it in the background; the token is
    /// cancelled when the connection ends (the server stopped or closed it),
    /// for a task that would otherwise learn of it only at its next query.
    ///
    /// # Errors
    /// When PostgreSQL cannot be reached, refuses the connection, or (TLS)
    /// does not offer TLS or presents a certificate that does not verify.
    pub async fn connect_watched(
        &self,
    ) -> Result<(Client, CancellationToken), tokio_postgres::Error> {
        let config = &self.config;
        let closed = CancellationToken::new();
        let ended = closed.clone();
        let report = move |result: Result<(), tokio_postgres::Error>| {
            if let Err(e) = result {
                tracing::warn!(error = %e, "postgres connection closed");
            }
            ended.cancel();
        };
        let client = match &self.tls {
            Tls::Plain => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move { report(connection.await) });
                client
            }
            Tls::Verified { make, .. } => {
                let mut config = config.clone();
                // Never fall back to plain text.
                config.ssl_mode(SslMode::Require);
                let (client, connection) = config.connect(make.clone()).await?;
                tokio::spawn(async move { report(connection.await) });
                client
            }
        };
        Ok((client, closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_is_refused() {
        assert!(matches!(Tls::new(None), Ok(Tls::Plain)));
        let missing = Tls::new(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert_eq!(missing.setting, "postgres.tls_ca_file");
        let empty = std::env::temp_dir().join(format!("replyway-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("written");
        let none = Tls::new(Some(&empty)).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert_eq!(none.setting, "postgres.tls_ca_file");
        assert!(none.to_string().contains("holds no certificate"), "{none}");
    }
}
