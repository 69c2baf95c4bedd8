//! The relay: publishes the outbox's rows to Kafka in commit order, read from
//! PostgreSQL's logical replication, the log-mining way (a row is streamed
//! once its transaction committed, in commit order, and a slot cannot skip
//! one the way polling by a timestamp can).
//!
//! It reads the publication `replyway_outbox` through the slot
//! `postgres.slot` (plugin `pgoutput`), collects the rows of committed
//! transactions into a batch (at most `max_batch` rows, or what arrived
//! within `batch_wait`), produces them in order and waits for the broker's
//! acknowledgement of every one; only then does it delete them from the
//! outbox and acknowledge the batch's last commit position (LSN) to the slot
//! (sent every `ack_interval`).
//! A crash in between streams the unacknowledged transactions again: a row is
//! published at least once, and a duplicate carries the same correlation id.
//! Replies and events of one command go out in the order the handler made
//! them, and commands in the order they committed (the producer is
//! idempotent, so per partition that order holds through retries).
//!
//! Rows left in the outbox when the relay has to create the slot (someone
//! dropped it) committed before it and are not streamed: they are published
//! first, oldest first. The relay also forgets dedup records older than
//! `dedup_retention`, once a minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use rdkafka::producer::FutureProducer;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::settings::InvalidSetting;

use super::database::Database;
use super::error::OutboxError;
use super::pgoutput::Decoder;
use super::row::OutboxRow;
use super::schema;
use super::settings::RelaySettings;

/// Counters of what the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Rows the broker acknowledged.
    pub published: AtomicU64,
    /// Batches published, deleted and acknowledged.
    pub batches: AtomicU64,
    /// Attempts to publish a batch that failed (and were repeated).
    pub failed_attempts: AtomicU64,
    /// Sessions that failed and were started again.
    pub session_failures: AtomicU64,
    /// Whether a session streams the outbox now.
    pub streaming: AtomicBool,
    /// Committed rows read and not yet acknowledged by the broker.
    pub pending_rows: AtomicU64,
    /// The last commit position acknowledged to the slot (0: none yet).
    pub acknowledged_lsn: AtomicU64,
}

/// How often old dedup records are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for the replication stream to close at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the server to start the replication stream (connect,
/// TLS, authentication, START_REPLICATION); then the session starts again.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay waits for the stream when nothing is pending.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Publishes the outbox to Kafka.
pub struct Relay {
    settings: RelaySettings,
    database: Database,
    producer: FutureProducer,
    stats: Arc<RelayStats>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("slot", &self.settings.postgres.slot)
            .finish_non_exhaustive()
    }
}

/// Committed rows not published yet, and the commit position after them.
#[derive(Debug, Default)]
struct Batch {
    rows: Vec<OutboxRow>,
    lsn: Option<Lsn>,
}

impl Relay {
    /// A relay with `settings` (checked here).
    ///
    /// # Errors
    /// [`OutboxError`] when a setting is bad or the producer cannot be made.
    pub fn new(settings: &RelaySettings) -> Result<Self, OutboxError> {
        settings.validate()?;
        Ok(Self {
            database: settings.postgres.database()?,
            producer: settings.kafka.producer_config().create()?,
            settings: settings.clone(),
            stats: Arc::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Relays until `shutdown`; a failed session (database restarted,
    /// connection lost) is started again after a pause.
    ///
    /// # Errors
    /// [`OutboxError`] only when the stream carries what the relay cannot
    /// read: relaying further would skip a row.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        let mut backoff = Backoff::default();
        loop {
            let session = self.session(&shutdown).await;
            self.stats.streaming.store(false, Ordering::Relaxed);
            self.stats.pending_rows.store(0, Ordering::Relaxed);
            match session {
                Ok(()) => return Ok(()),
                Err(e @ OutboxError::Decode(_)) => return Err(e),
                Err(e) => {
                    self.stats.session_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "outbox relay session failed; starting again");
                    if !backoff.wait(&shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Runs with the admin port (`/healthz`, `/readyz`: `200` while
    /// streaming, `/metrics`) on `admin` (none when `None`) until `shutdown`.
    ///
    /// # Errors
    /// As [`Relay::run`].
    pub async fn run_with_admin(
        self,
        admin: Option<tokio::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), OutboxError> {
        let (registry, readiness) = super::metrics::register(self.stats());
        let router = crate::admin::router_with_readiness(Arc::new(registry), move || {
            let readiness = readiness.clone();
            async move { readiness.check() }
        });
        let admin = crate::admin::AdminServer::start(admin, router);
        let result = self.run(shutdown).await;
        admin.stop().await;
        result
    }

    /// One session: set up, then stream until `shutdown` or an error.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), OutboxError> {
        // The replication stream does not always fail when the server goes:
        // after a fast shutdown (`pg_ctl stop -m fast`, done in 0.1 s) an
        // idle relay's `recv` was still pending a minute later, and the
        // relay would have slept through the restart. The session ends when
        // the connection beside the stream closes.
        let (client, disconnected) = self
            .database
            .connect_watched()
            .await
            .map_err(OutboxError::postgres("connecting"))?;
        schema::install(&client)
            .await
            .map_err(OutboxError::postgres("creating the outbox tables"))?;
        let slot = &self.settings.postgres.slot;
        let created = schema::create_slot(&client, slot)
            .await
            .map_err(OutboxError::postgres("creating the replication slot"))?;
        if created && !self.publish_left_rows(&client, shutdown).await? {
            return Ok(());
        }
        let mut stream = ReplicationClient::connect(self.replication_config()?).await?;
        // Connecting, TLS, authentication and START_REPLICATION run in the
        // stream's task: streaming once the server accepted the start.
        let started = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            started = tokio::time::timeout(START_TIMEOUT, stream.wait_started()) => started,
        };
        started.map_err(|_| {
            OutboxError::Replication(pgwire_replication::PgWireError::Protocol(format!(
                "the server did not start the replication stream within {START_TIMEOUT:?}"
            )))
        })??;
        self.stats.streaming.store(true, Ordering::Relaxed);
        tracing::info!(
            slot = %slot,
            created,
            postgres = %self.settings.postgres.redacted_url(),
            "outbox relay started"
        );
        let mut decoder = Decoder::default();
        let mut open: Vec<OutboxRow> = Vec::new();
        let mut batch = Batch::default();
        let mut purge = tokio::time::interval(PURGE_EVERY);
        loop {
            let pending = !batch.rows.is_empty() || batch.lsn.is_some();
            let wait = if pending {
                self.settings.batch_wait
            } else {
                IDLE_WAIT
            };
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                () = disconnected.cancelled() => return Err(OutboxError::Disconnected),
                _ = purge.tick() => {
                    self.purge_dedup(&client).await;
                    continue;
                }
                event = tokio::time::timeout(wait, stream.recv()) => event,
            };
            let event = match event {
                Err(_waited) => {
                    if !self.flush(&client, &stream, &mut batch, shutdown).await? {
                        break;
                    }
                    continue;
                }
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => {
                    return Err(OutboxError::Replication(
                        pgwire_replication::PgWireError::Protocol(
                            "the server ended the replication stream".into(),
                        ),
                    ));
                }
                Ok(Err(e)) => return Err(e.into()),
            };
            match event {
                ReplicationEvent::Begin { .. } => open.clear(),
                ReplicationEvent::XLogData { data, .. } => {
                    if let Some(row) = decoder.decode(&data)? {
                        open.push(row);
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    batch.rows.append(&mut open);
                    batch.lsn = Some(end_lsn);
                    self.stats
                        .pending_rows
                        .store(batch.rows.len() as u64, Ordering::Relaxed);
                    if batch.rows.len() >= self.settings.max_batch
                        && !self.flush(&client, &stream, &mut batch, shutdown).await?
                    {
                        break;
                    }
                }
                ReplicationEvent::KeepAlive { .. }
                | ReplicationEvent::Message { .. }
                | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
        // What is not acknowledged is streamed again by the next session.
        match tokio::time::timeout(STOP_TIMEOUT, stream.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the replication stream closed with an error"),
            Err(_) => {
                tracing::warn!(timeout = ?STOP_TIMEOUT, "the replication stream did not close in time")
            }
        }
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    /// The replication connection's settings, from `postgres.url`.
    fn replication_config(&self) -> Result<ReplicationConfig, OutboxError> {
        let c = &self.database.config;
        let [tokio_postgres::config::Host::Tcp(host)] = c.get_hosts() else {
            return Err(InvalidSetting::new("postgres.url", "must name one TCP host").into());
        };
        let password = c
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        Ok(ReplicationConfig::new(
            host.clone(),
            c.get_user().unwrap_or_default(),
            password,
            c.get_dbname().unwrap_or_default(),
            self.settings.postgres.slot.clone(),
            schema::PUBLICATION,
        )
        .with_port(c.get_ports().first().copied().unwrap_or(5432))
        .with_tls(self.database.tls.replication(host))
        .with_status_interval(self.settings.ack_interval))
    }

    /// Publishes the batch, deletes its rows and acknowledges its position.
    /// Returns `false` when shutdown came first (nothing acknowledged).
    async fn flush(
        &self,
        client: &Client,
        stream: &ReplicationClient,
        batch: &mut Batch,
        shutdown: &CancellationToken,
    ) -> Result<bool, OutboxError> {
        if !self
            .publish_and_delete(client, &batch.rows, shutdown)
            .await?
        {
            return Ok(false);
        }
        if let Some(lsn) = batch.lsn {
            stream.update_applied_lsn(lsn);
            self.stats.acknowledged_lsn.store(lsn.0, Ordering::Relaxed);
        }
        *batch = Batch::default();
        self.stats.pending_rows.store(0, Ordering::Relaxed);
        Ok(true)
    }

    /// Publishes `rows`, then deletes them. Returns `false` on shutdown.
    async fn publish_and_delete(
        &self,
        client: &Client,
        rows: &[OutboxRow],
        shutdown: &CancellationToken,
    ) -> Result<bool, OutboxError> {
        if rows.is_empty() {
            return Ok(true);
        }
        if !self.publish(rows, shutdown).await {
            return Ok(false);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        client
            .execute(schema::DELETE_PUBLISHED, &[&ids])
            .await
            .map_err(OutboxError::postgres("deleting published rows"))?;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(rows = ids.len(), first = ids[0], "outbox batch published");
        Ok(true)
    }

    /// Rows that committed before the slot existed, oldest first, in batches.
    /// Returns `false` on shutdown.
    async fn publish_left_rows(
        &self,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<bool, OutboxError> {
        let limit = i64::try_from(self.settings.max_batch).unwrap_or(i64::MAX);
        loop {
            let rows = client
                .query(schema::LEFT_BEFORE_SLOT, &[&limit])
                .await
                .map_err(OutboxError::postgres(
                    "reading rows left from before the slot",
                ))?;
            if rows.is_empty() {
                return Ok(true);
            }
            let rows = rows.iter().map(stored_row).collect::<Result<Vec<_>, _>>()?;
            tracing::info!(
                rows = rows.len(),
                "publishing outbox rows older than the slot"
            );
            if !self.publish_and_delete(client, &rows, shutdown).await? {
                return Ok(false);
            }
        }
    }

    /// Produces `rows` in order until the broker acknowledged every one
    /// (a failed attempt is repeated whole). Returns `false` on shutdown.
    async fn publish(&self, rows: &[OutboxRow], shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match self.publish_once(rows).await {
                Ok(()) => {
                    self.stats
                        .published
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, rows = rows.len(), "could not publish outbox rows; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn publish_once(&self, rows: &[OutboxRow]) -> Result<(), rdkafka::error::KafkaError> {
        // Enqueued in order now, acknowledged later: the idempotent producer
        // keeps each partition's order.
        let mut acks = Vec::with_capacity(rows.len());
        for row in rows {
            let mut record = row.record();
            loop {
                match self.producer.send_result(record) {
                    Ok(ack) => break acks.push(ack),
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        for ack in acks {
            match ack.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e),
                Err(_cancelled) => return Err(rdkafka::error::KafkaError::Canceled),
            }
        }
        Ok(())
    }

    async fn purge_dedup(&self, client: &Client) {
        let seconds = self.settings.dedup_retention.as_secs_f64();
        match client.execute(schema::PURGE_DEDUP, &[&seconds]).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "old dedup records forgotten"),
            Err(e) => tracing::warn!(error = %e, "could not forget old dedup records"),
        }
    }
}

/// A row as `LEFT_BEFORE_SLOT` reads it.
fn stored_row(row: &tokio_postgres::Row) -> Result<OutboxRow, OutboxError> {
    let read = OutboxError::postgres;
    let key: Option<Vec<u8>> = row.try_get(4).map_err(read("reading an outbox row"))?;
    let headers: String = row.try_get(5).map_err(read("reading an outbox row"))?;
    let payload: Vec<u8> = row.try_get(6).map_err(read("reading an outbox row"))?;
    Ok(OutboxRow {
        id: row.try_get(0).map_err(read("reading an outbox row"))?,
        correlation_id: row.try_get(1).map_err(read("reading an outbox row"))?,
        topic: row.try_get(2).map_err(read("reading an outbox row"))?,
        partition: row.try_get(3).map_err(read("reading an outbox row"))?,
        key: key.map(Into::into),
        headers: OutboxRow::headers_from_json(&headers)
            .map_err(|e| super::pgoutput::DecodeError(e.to_string()))?,
        payload: payload.into(),
    })
}
