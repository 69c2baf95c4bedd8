//! The outbox's database objects, created at start when missing (by a service
//! in outbox mode and by the relay, whichever comes first):
//!
//! | object | what it holds |
//! |---|---|
//! | table `replyway_outbox` | records (replies, events) committed and not yet published, by `id` |
//! | table `replyway_outbox_dedup` | per command handled: its correlation id, its reply, when |
//! | publication `replyway_outbox` | the inserts into `replyway_outbox`, for logical replication |
//! | logical replication slot (`postgres.slot`, plugin `pgoutput`) | where the relay is in the stream of those inserts |
//!
//! The slot is created before any row can be inserted (the service creates
//! it too), because a slot streams only what commits after it exists.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// The outbox table.
pub const OUTBOX_TABLE: &str = "replyway_outbox";
/// The dedup table.
pub const DEDUP_TABLE: &str = "replyway_outbox_dedup";
/// The publication over the outbox table.
pub const PUBLICATION: &str = "replyway_outbox";

/// Tables and publication (idempotent). The publication streams inserts only:
/// the relay's deletes are not streamed back to it.
const CREATE: &str = r"
CREATE TABLE IF NOT EXISTS replyway_outbox (
    id bigserial PRIMARY KEY,
    correlation_id text NOT NULL,
    topic text NOT NULL,
    kafka_partition integer,
    record_key bytea,
    headers text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS replyway_outbox_dedup (
    correlation_id text PRIMARY KEY,
    topic text NOT NULL,
    kafka_partition integer,
    record_key bytea,
    headers text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS replyway_outbox_dedup_created ON replyway_outbox_dedup (created_at);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'replyway_outbox') THEN
        CREATE PUBLICATION replyway_outbox FOR TABLE replyway_outbox WITH (publish = 'insert');
    END IF;
END $$;
";

/// Inserts a record into the outbox: correlation id, topic, partition, key,
/// headers, payload.
pub const INSERT_OUTBOX: &str = "INSERT INTO replyway_outbox \
    (correlation_id, topic, kafka_partition, record_key, headers, payload) \
    VALUES ($1, $2, $3, $4, $5, $6)";

/// Records a command as handled, with its reply (same parameters as
/// [`INSERT_OUTBOX`]).
pub const INSERT_DEDUP: &str = "INSERT INTO replyway_outbox_dedup \
    (correlation_id, topic, kafka_partition, record_key, headers, payload) \
    VALUES ($1, $2, $3, $4, $5, $6)";

/// Answers a command delivered again: its stored reply goes into the outbox
/// once more. Returns a row when the command was handled before.
pub const REPLAY_REPLY: &str = "INSERT INTO replyway_outbox \
    (correlation_id, topic, kafka_partition, record_key, headers, payload) \
    SELECT correlation_id, topic, kafka_partition, record_key, headers, payload \
    FROM replyway_outbox_dedup WHERE correlation_id = $1 RETURNING id";

/// Deletes published rows by id.
pub const DELETE_PUBLISHED: &str = "DELETE FROM replyway_outbox WHERE id = ANY($1)";

/// Forgets dedup records older than `$1` seconds.
pub const PURGE_DEDUP: &str =
    "DELETE FROM replyway_outbox_dedup WHERE created_at < now() - make_interval(secs => $1)";

/// Rows still in the outbox, oldest first, at most `$1`: the relay publishes
/// them once, after it created its slot (they committed before the slot
/// existed, so the stream does not carry them).
pub const LEFT_BEFORE_SLOT: &str = "SELECT id, correlation_id, topic, kafka_partition, \
    record_key, headers, payload FROM replyway_outbox ORDER BY id LIMIT $1";

/// Creates the tables and the publication when missing.
///
/// # Errors
/// The database's error.
pub async fn install(client: &Client) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(CREATE).await {
        // Two processes creating the same objects at once: one wins.
        Err(e) if is_concurrent_creation(&e) => Ok(()),
        other => other,
    }
}

/// Creates the logical replication slot `slot` (plugin `pgoutput`) when
/// missing. Returns whether it was created now.
///
/// # Errors
/// The database's error (the role needs the `REPLICATION` attribute).
pub async fn create_slot(client: &Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_concurrent_creation(e: &tokio_postgres::Error) -> bool {
    [SqlState::UNIQUE_VIOLATION, SqlState::DUPLICATE_OBJECT]
        .iter()
        .any(|code| e.code() == Some(code))
}
