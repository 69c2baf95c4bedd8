//! Settings of the outbox: how to reach PostgreSQL (`postgres.*`, shared by a
//! service in outbox mode and its relay) and the relay's own.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{InvalidSetting, KafkaSettings, LogSettings, Secret};

/// The replication slot's name by default.
pub const DEFAULT_SLOT: &str = "replyway_outbox";

/// How to reach PostgreSQL, and the replication slot the relay reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// `postgres://user[:password]@host[:port]/database` (a secret: it may
    /// hold a password). Unset: no PostgreSQL (a service keeps its other
    /// store).
    pub url: Option<Secret>,
    /// The logical replication slot the relay reads the outbox from (created
    /// at start when missing, by the service or the relay, whichever comes
    /// first: rows inserted before it exists would not be streamed).
    pub slot: String,
    /// Connections a service opens: at most this many commands are handled
    /// (each in its own transaction) at once.
    pub connections: usize,
    /// Longest wait for a connection to be established.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PEM file of the CAs that sign the server's certificate. Set: every
    /// connection is TLS and the server must present a certificate of one of
    /// them for the URL's host (a server without TLS is refused); unset: no
    /// TLS.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: None,
            slot: DEFAULT_SLOT.into(),
            connections: 8,
            connect_timeout: Duration::from_secs(5),
            tls_ca_file: None,
        }
    }
}

/// Most connections a service may open.
pub const MAX_CONNECTIONS: usize = 256;

impl PostgresSettings {
    /// Whether a URL is set (the outbox mode is on).
    pub fn is_set(&self) -> bool {
        self.url.is_some()
    }

    /// Checks the bounds (the URL only when it is set).
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.url.is_some() {
            self.config()?;
        }
        if !is_valid_slot(&self.slot) {
            return Err(InvalidSetting::new(
                "postgres.slot",
                "a slot name is 1 to 63 characters of a-z 0-9 _",
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(InvalidSetting::new(
                "postgres.connections",
                format!("must be 1 to {MAX_CONNECTIONS}"),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(InvalidSetting::new(
                "postgres.connect_timeout",
                "must be more than 0",
            ));
        }
        Ok(())
    }

    /// The client configuration of [`PostgresSettings::url`].
    ///
    /// # Errors
    /// [`InvalidSetting`] when the URL is unset or is not a PostgreSQL URL
    /// with one TCP host, a user and a database.
    pub fn config(&self) -> Result<tokio_postgres::Config, InvalidSetting> {
        let bad = |reason: &str| InvalidSetting::new("postgres.url", reason);
        let url = self.url.as_ref().ok_or_else(|| bad("is not set"))?;
        let mut config = tokio_postgres::Config::from_str(url.expose())
            .map_err(|e| bad(&format!("not a PostgreSQL URL: {e}")))?;
        match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(_)] => {}
            _ => return Err(bad("must name one TCP host")),
        }
        if config.get_user().is_none() || config.get_dbname().is_none() {
            return Err(bad("must name a user and a database"));
        }
        config.connect_timeout(self.connect_timeout);
        Ok(config)
    }

    /// The database: the URL's configuration and TLS, checked and read once.
    ///
    /// # Errors
    /// [`InvalidSetting`] as [`PostgresSettings::config`], or when the CA
    /// file cannot be read or holds no certificate.
    pub fn database(&self) -> Result<super::database::Database, InvalidSetting> {
        Ok(super::database::Database {
            config: self.config()?,
            tls: super::database::Tls::new(self.tls_ca_file.as_deref())?,
        })
    }

    /// The URL with any password hidden, for logs.
    pub fn redacted_url(&self) -> String {
        let Ok(config) = self.config() else {
            return "(unset)".into();
        };
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(host)] => host.as_str(),
            _ => "?",
        };
        format!(
            "postgres://{}@{host}:{}/{}",
            config.get_user().unwrap_or("?"),
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_dbname().unwrap_or("?")
        )
    }
}

/// Whether `slot` is a legal replication slot name.
pub fn is_valid_slot(slot: &str) -> bool {
    (1..=63).contains(&slot.len())
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The relay's settings (`replyway-outbox-relay`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// PostgreSQL (`postgres.url` is required).
    pub postgres: PostgresSettings,
    /// Most rows published (and then acknowledged and deleted) in one batch.
    pub max_batch: usize,
    /// How long a batch waits for more committed rows before it is published.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// How often the acknowledged position is sent to PostgreSQL: after a
    /// crash, what was published since the last one is published again.
    #[serde(with = "humantime_serde")]
    pub ack_interval: Duration,
    /// How long a command's dedup record is kept: a command delivered again
    /// later than this is executed again.
    #[serde(with = "humantime_serde")]
    pub dedup_retention: Duration,
    /// The admin port's address (`/healthz`, `/readyz`, `/metrics`); empty:
    /// none.
    pub admin_listen: String,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            postgres: PostgresSettings::default(),
            max_batch: 500,
            batch_wait: Duration::from_millis(5),
            ack_interval: Duration::from_secs(1),
            dedup_retention: Duration::from_secs(7 * 24 * 60 * 60),
            admin_listen: String::new(),
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// Largest batch of the relay.
pub const MAX_BATCH: usize = 10_000;

impl crate::service::ServiceSettings for RelaySettings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

impl RelaySettings {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !self.postgres.is_set() {
            return Err(InvalidSetting::new(
                "postgres.url",
                "the relay needs the database of the outbox",
            ));
        }
        self.postgres.validate()?;
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(InvalidSetting::new(
                "max_batch",
                format!("must be 1 to {MAX_BATCH}"),
            ));
        }
        if self.batch_wait > Duration::from_secs(10) {
            return Err(InvalidSetting::new("batch_wait", "must be at most 10s"));
        }
        if self.ack_interval < Duration::from_millis(10)
            || self.ack_interval > Duration::from_secs(60)
        {
            return Err(InvalidSetting::new("ack_interval", "must be 10ms to 1m"));
        }
        if self.dedup_retention < Duration::from_secs(60) {
            return Err(InvalidSetting::new(
                "dedup_retention",
                "must be at least 1m",
            ));
        }
        self.kafka.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_checked_only_when_set_and_its_password_never_shown() {
        let mut s = PostgresSettings::default();
        assert!(s.validate().is_ok());
        assert!(!s.is_set());
        s.url = Some("postgres://ledger:hunter2@127.0.0.1:5433/ledger".into());
        assert!(s.validate().is_ok());
        assert_eq!(s.redacted_url(), "postgres://ledger@127.0.0.1:5433/ledger");
        s.url = Some("mysql://x".into());
        assert_eq!(s.validate().unwrap_err().setting, "postgres.url");
        s.url = Some("postgres://127.0.0.1/db".into());
        assert_eq!(s.validate().unwrap_err().setting, "postgres.url");
        let mut s = PostgresSettings {
            slot: "Bad-Slot".into(),
            ..PostgresSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().setting, "postgres.slot");
        s.slot = DEFAULT_SLOT.into();
        s.connections = 0;
        assert_eq!(s.validate().unwrap_err().setting, "postgres.connections");
    }

    #[test]
    fn the_relay_needs_a_database() {
        let mut s = RelaySettings::default();
        assert_eq!(s.validate().unwrap_err().setting, "postgres.url");
        s.postgres.url = Some("postgres://u@127.0.0.1/db".into());
        assert!(s.validate().is_ok());
        s.max_batch = 0;
        assert_eq!(s.validate().unwrap_err().setting, "max_batch");
    }
}
