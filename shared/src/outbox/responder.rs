//! The `OutboxResponder`: a consumer of commands whose handler works in a
//! PostgreSQL transaction, and whose reply and events are committed in that
//! same transaction, into the outbox, for the [`Relay`](super::Relay) to
//! publish.
//!
//! Per command, in one transaction:
//!
//! 1. if the dedup table holds the command's correlation id, the command was
//!    handled before (delivered again after a crash or a rebalance): its
//!    stored reply goes into the outbox once more, and the handler does not
//!    run;
//! 2. else the handler runs with the transaction and returns an
//!    [`Answer`](crate::responder::transactional::Answer) (reply and events);
//! 3. the reply goes into the dedup table (a second delivery handled at the
//!    same moment fails on its primary key, rolls back and is answered by
//!    step 1) and, with the events, into the outbox;
//! 4. commit; only then is the command's offset stored (and committed in the
//!    background).
//!
//! A handler failure rolls its transaction back and is answered `500` (in a
//! transaction of its own, recorded in the dedup table too), as the
//! Responder answers; [`Redeliver`] rolls back and leaves the command for
//! redelivery; [`Cancelled`] rolls back and replies nothing. A database error
//! (connection lost, serialization failure) rolls back and retries the
//! command with backoff until shutdown.
//!
//! Commands are read in batches of at most `postgres.connections`, each
//! handled on a connection of its own, concurrently; a batch's offsets are
//! stored when all of its commands are done. The reply record is built as
//! the Responder builds it: the record contract's headers, this hop's trace
//! context, Spring's `kafka_correlationId` when the command carried one,
//! keyed by the correlation id, to the command's `reply-to` (and partition).
//! Streamed replies ([`Request::parts`]) are not offered: a part could not
//! be committed with the transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::record::{Reply, Request, cancelled_id_of, spring};
use crate::responder::transactional::Answer;
use crate::responder::{Cancelled, HandlerError, Redeliver};
use crate::settings::KafkaSettings;

use super::database::Database;
use super::error::OutboxError;
use super::row::OutboxRow;
use super::schema;
use super::settings::PostgresSettings;

/// A service's command handler in outbox mode.
pub trait OutboxHandler: Send + Sync {
    /// Handles `request` in `tx` (which the responder commits, with the
    /// answer, or rolls back). Errors as with the
    /// [`Responder`](crate::Responder): [`Redeliver`], [`Cancelled`], or any
    /// other error (answered `500`).
    fn handle<'a>(
        &'a self,
        request: Request,
        tx: &'a Transaction<'_>,
    ) -> impl Future<Output = Result<Answer, HandlerError>> + Send + 'a;
}

/// Counters of what the outbox responder did.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Commands whose reply (and events) committed into the outbox.
    pub replied: AtomicU64,
    /// Commands delivered again and answered from the dedup record.
    pub replayed: AtomicU64,
    /// Handler failures answered with 500.
    pub failed: AtomicU64,
    /// Commands skipped because their deadline had passed.
    pub expired: AtomicU64,
    /// Records that are not commands.
    pub malformed: AtomicU64,
    /// Commands whose handler stopped on their cancellation: not answered.
    pub interrupted: AtomicU64,
    /// Transactions retried after a database error.
    pub retried: AtomicU64,
}

/// Consumes commands and answers them through the outbox.
pub struct OutboxResponder {
    consumer: StreamConsumer,
    database: Database,
    connections: Vec<Client>,
    stats: Arc<OutboxStats>,
}

impl std::fmt::Debug for OutboxResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxResponder")
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// Longest wait for a partition's position to be moved back.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

impl OutboxResponder {
    /// A responder in consumer group `group` over `topics`, with
    /// `postgres.connections` connections to `postgres.url`; creates the
    /// outbox's tables, publication and slot when missing.
    ///
    /// # Errors
    /// [`OutboxError`] when a setting is bad, PostgreSQL cannot be reached or
    /// the objects cannot be created, or the consumer cannot be created.
    pub async fn connect(
        kafka: &KafkaSettings,
        group: &str,
        topics: &[&str],
        postgres: &PostgresSettings,
    ) -> Result<Self, OutboxError> {
        postgres.validate()?;
        let database = postgres.database()?;
        let mut connections = Vec::with_capacity(postgres.connections);
        for _ in 0..postgres.connections {
            connections.push(
                database
                    .connect()
                    .await
                    .map_err(OutboxError::postgres("connecting"))?,
            );
        }
        let first = &connections[0];
        schema::install(first)
            .await
            .map_err(OutboxError::postgres("creating the outbox tables"))?;
        schema::create_slot(first, &postgres.slot)
            .await
            .map_err(OutboxError::postgres("creating the replication slot"))?;
        let consumer: StreamConsumer = kafka.consumer_config(group).create()?;
        consumer.subscribe(topics)?;
        Ok(Self {
            consumer,
            database,
            connections,
            stats: Arc::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<OutboxStats> {
        Arc::clone(&self.stats)
    }

    /// Serves commands with `handler` until `shutdown`; then finishes the
    /// batch in hand, commits what was answered and leaves the group.
    ///
    /// # Errors
    /// [`OutboxError::Close`] when the final commit fails or the group cannot
    /// be left in time.
    pub async fn run<H: OutboxHandler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), OutboxError> {
        let Self {
            consumer,
            database,
            mut connections,
            stats,
        } = self;
        let mut stream = consumer.stream();
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                message = stream.next() => message,
            };
            let Some(first) = first else { break };
            // A batch: what is there now, up to one command per connection.
            let mut messages = vec![first];
            while messages.len() < connections.len() {
                match stream.next().now_or_never() {
                    Some(Some(message)) => messages.push(message),
                    _ => break,
                }
            }
            let mut done: Vec<(Position, bool)> = Vec::with_capacity(messages.len());
            let mut commands = Vec::with_capacity(messages.len());
            for message in messages {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        continue;
                    }
                };
                let position = (
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                );
                match command(&message, &stats) {
                    Some(request) => commands.push((position, request)),
                    None => done.push((position, true)),
                }
            }
            let serving = commands.into_iter().zip(connections.iter_mut()).map(
                |((position, request), client)| {
                    let (handler, database, stats, shutdown) =
                        (&handler, &database, &stats, &shutdown);
                    async move {
                        let answered =
                            serve(client, database, handler, request, stats, shutdown).await;
                        (position, answered)
                    }
                },
            );
            done.extend(futures::future::join_all(serving).await);
            store_offsets(&consumer, done);
        }
        drop(stream);
        crate::consumer::close(consumer).await?;
        Ok(())
    }
}

/// Topic, partition, offset of a record read.
type Position = (String, i32, i64);

/// The command in `message`, or `None` for a record to skip (counted).
fn command<M: Message>(message: &M, stats: &OutboxStats) -> Option<Request> {
    if cancelled_id_of(message).is_some() {
        // The reply of a command in outbox mode is committed with its
        // transaction; a cancel record does not undo it.
        return None;
    }
    let request = match Request::from_message(message) {
        Ok(request) => request,
        Err(e) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, offset = message.offset(), "record is not a command; skipped");
            return None;
        }
    };
    if request.is_expired(SystemTime::now()) {
        stats.expired.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(correlation_id = %request.correlation_id, "command expired; skipped");
        return None;
    }
    Some(request)
}

/// Stores, per partition, the offset of the last record of the batch before
/// the first one left unanswered; a partition with one left unanswered is
/// moved back to it, so it is read again.
fn store_offsets(consumer: &StreamConsumer, mut done: Vec<(Position, bool)>) {
    done.sort();
    let mut partitions: BTreeMap<(String, i32), (Option<i64>, Option<i64>)> = BTreeMap::new();
    for ((topic, partition, offset), answered) in done {
        let (stored, left) = partitions.entry((topic, partition)).or_default();
        if left.is_some() {
            continue;
        }
        if answered {
            *stored = Some(offset);
        } else {
            *left = Some(offset);
        }
    }
    for ((topic, partition), (stored, left)) in partitions {
        if let Some(offset) = stored
            && let Err(e) = consumer.store_offset(&topic, partition, offset)
        {
            tracing::debug!(error = %e, partition, "offset not stored (partition revoked?)");
        }
        if let Some(offset) = left
            && let Err(e) = consumer.seek(&topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
        {
            tracing::warn!(error = %e, partition, offset, "could not move back to a command left for redelivery");
        }
    }
}

/// Serves one command, retrying its transaction after database errors.
/// Returns whether its offset may be stored.
async fn serve<H: OutboxHandler>(
    client: &mut Client,
    database: &Database,
    handler: &H,
    request: Request,
    stats: &OutboxStats,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    loop {
        if client.is_closed() {
            match database.connect().await {
                Ok(fresh) => *client = fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "could not reconnect to postgres; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                    continue;
                }
            }
        }
        match attempt(client, handler, request.clone(), stats).await {
            Ok(answered) => return answered,
            Err(e) => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(correlation_id = %request.correlation_id, error = %e, "outbox transaction failed; retrying");
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// One transaction for `request` (see the module docs). `Ok(false)`: left
/// for redelivery.
async fn attempt<H: OutboxHandler>(
    client: &mut Client,
    handler: &H,
    mut request: Request,
    stats: &OutboxStats,
) -> Result<bool, tokio_postgres::Error> {
    let id = request.correlation_id.clone();
    let tx = client.transaction().await?;
    if tx.query_opt(schema::REPLAY_REPLY, &[&id]).await?.is_some() {
        tx.commit().await?;
        stats.replayed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(correlation_id = %id, "command delivered again: answered from its dedup record, not executed");
        return Ok(true);
    }
    // This hop joins the command's trace; the reply carries it back.
    let span =
        tracing::info_span!("responder.handle", otel.kind = "consumer", correlation_id = %id);
    let trace = request.continue_trace(&span);
    let reply_to = request.reply_to.clone();
    let reply_partition = request.reply_partition;
    let spring_id = request.spring_correlation_id.clone();
    let result = handler.handle(request, &tx).instrument(span).await;
    let (tx, answer) = match result {
        Ok(answer) => (tx, answer),
        Err(e) if e.downcast_ref::<Redeliver>().is_some() => {
            tracing::info!(correlation_id = %id, reason = %e, "command left unanswered for redelivery");
            return Ok(false);
        }
        Err(e) if e.downcast_ref::<Cancelled>().is_some() => {
            stats.interrupted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(correlation_id = %id, "handler stopped on the command's cancellation; rolled back, nothing replied");
            return Ok(true);
        }
        Err(e) => {
            tx.rollback().await?;
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(correlation_id = %id, error = %e, "handler failed; rolled back, replying 500");
            let problem = Reply::problem(
                500,
                "Internal Server Error",
                "the service failed to handle the request",
            );
            (client.transaction().await?, Answer::from(problem))
        }
    };
    let headers = trace.add_to(answer.reply.record_headers(&id));
    let headers = match &spring_id {
        Some(spring_id) => spring::with_correlation_id(headers, spring_id),
        None => headers,
    };
    let reply = OutboxRow::new(
        &id,
        &reply_to,
        reply_partition,
        Some(Bytes::copy_from_slice(id.as_bytes())),
        &headers,
        answer.reply.body.clone(),
    );
    reply.insert_dedup(&tx).await?;
    reply.insert(&tx).await?;
    for event in &answer.events {
        OutboxRow::event(&id, event).insert(&tx).await?;
    }
    tx.commit().await?;
    stats.replied.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}
