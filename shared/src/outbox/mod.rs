//! The transactional outbox on PostgreSQL (cargo feature `outbox`), for
//! services whose state lives in a database (see docs/outbox.md).
//!
//! * [`OutboxResponder`] — consumes commands like the
//!   [`Responder`](crate::Responder), but hands each handler a database
//!   transaction; the handler's reply and events are inserted into the outbox
//!   table in that transaction, with the command's correlation id in the dedup
//!   table, and the command's offset is stored only after the commit;
//! * [`Relay`] — publishes the outbox rows to Kafka in commit order, read from
//!   PostgreSQL's logical replication (pgoutput), acknowledging the WAL position
//!   and deleting the rows only after the broker acknowledged them (the binary
//!   `replyway-outbox-relay` runs one);
//!   with `admin_listen` it serves `/healthz`, `/readyz` (`200` while it
//!   streams the outbox) and `/metrics` (`replyway_outbox_relay_*`);
//! * [`schema`] — the tables, the publication and the replication slot;
//! * [`row`] — an outbox row: a Kafka record kept in the database;
//! * [`pgoutput`] — decoding the inserts of the replication stream;
//! * [`settings`] — `postgres.*` and the relay's settings;
//! * [`OutboxError`] — why either could not start or stopped.

mod database;
mod error;
mod metrics;
pub mod pgoutput;
mod relay;
mod responder;
pub mod row;
pub mod schema;
pub mod settings;

pub use database::{Database, Tls};
pub use error::OutboxError;
pub use relay::{Relay, RelayStats};
pub use responder::{OutboxHandler, OutboxResponder, OutboxStats};
pub use row::OutboxRow;
pub use settings::{PostgresSettings, RelaySettings};

pub use tokio_postgres;
