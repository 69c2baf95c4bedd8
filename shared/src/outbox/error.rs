//! What can stop the outbox's responder or relay from starting or running.

use crate::settings::InvalidSetting;

/// Why the outbox responder or relay could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A setting is out of bounds.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// PostgreSQL failed, while `doing` something.
    #[error("postgres, {doing}: {source}")]
    Postgres {
        /// What was being done.
        doing: &'static str,
        /// The database's error.
        source: tokio_postgres::Error,
    },
    /// The connection to PostgreSQL ended (the server stopped or closed it).
    #[error("postgres: the connection closed")]
    Disconnected,
    /// The replication stream failed.
    #[error("logical replication: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    /// The replication stream carried a message the relay cannot read.
    #[error(transparent)]
    Decode(#[from] super::pgoutput::DecodeError),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The consumer could not leave its group in time at shutdown.
    #[error(transparent)]
    Close(#[from] crate::consumer::CloseError),
}

impl OutboxError {
    /// A PostgreSQL error met while `doing` something.
    pub fn postgres(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Postgres { doing, source }
    }
}
