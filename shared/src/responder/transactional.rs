//! The `TransactionalResponder`: exactly-once replies. It consumes commands,
//! hands each to the handler, and commits a batch's replies, the handler's
//! events and the batch's command offsets in one Kafka transaction
//! (`send_offsets_to_transaction` with the consumer's group metadata, then
//! `commit_transaction`): a crash never leaves a reply without its events or
//! an event without its reply, and a command read again after a crash
//! produces no second committed reply. Readers that matter read with
//! `isolation.level=read_committed` (the collector does), so they never see
//! what an aborted transaction produced.
//!
//! Opt-in, per service instance: its `transactional.id` is
//! [`transactional_id`]`(prefix, instance)`, `<prefix>-<instance>`, with an
//! instance id that stays the same across restarts (a pod name, a host
//! name). [`TransactionalResponder::start`] calls `init_transactions`: a
//! previous run of the same instance that still has a transaction open is
//! fenced (its transaction aborted, its producer refused from then on), and
//! an instance that finds itself fenced stops with
//! [`TransactionError::Fenced`] and never commits again.
//!
//! # One transaction per batch
//!
//! A batch is at most [`DEFAULT_MAX_BATCH`] records, read until it is full or
//! [`DEFAULT_LINGER`] after its first record
//! ([`TransactionalResponder::with_max_batch`],
//! [`TransactionalResponder::with_linger`]). For each batch, in order:
//!
//! 1. `begin_transaction`;
//! 2. every command's handler runs (concurrently, the batch bounds them);
//!    a streamed reply's parts ([`Request::parts`]) are produced in the
//!    transaction, and as a handler returns, its reply (built as the
//!    [`Responder`](super::Responder) builds it) and its events are produced;
//! 3. the offsets after the batch's records go into the transaction, and it
//!    is committed.
//!
//! The consumer is not polled while a transaction is open, so a rebalance
//! (whose callbacks run inside the poll) never meets an open transaction:
//! each transaction is committed or aborted before a partition can go, and
//! the commands of partitions revoked while a batch was being read are
//! dropped before the batch begins (their new owner reads them again from
//! the committed offset).
//!
//! When a produce, the offsets or the commit fail, the transaction is
//! aborted, the consumer is rewound to where the batch began (the offsets
//! the last transaction committed) and the batch is read and handled again
//! after a pause ([`Backoff`]). Handlers therefore run at least once per
//! command: an effect outside Kafka must be idempotent. What reaches Kafka
//! is committed exactly once.
//!
//! # Cost
//!
//! Each batch pays a transaction's round trips to the transaction
//! coordinator (adding partitions, the offsets, the commit markers), and a
//! reply becomes visible to `read_committed` readers only when its batch
//! commits: a reply waits for the slowest handler of its batch.

mod answer;
mod batch;
mod error;
pub mod metrics;

pub use answer::{Answer, Event};
pub use error::TransactionError;
pub use metrics::TransactionalStats;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::{try_join, try_join_all};
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::record::{self, Request};
use crate::settings::KafkaSettings;

use super::handling::{Handling, Outcome};
use super::lanes::Rebalances;
use super::{DEFAULT_DRAIN_TIMEOUT, HandlerError};
use batch::Batch;
use error::{Failure, classify};

/// Most records in one transaction, by default.
pub const DEFAULT_MAX_BATCH: usize = 100;
/// Most records in one transaction that [`TransactionalResponder::with_max_batch`]
/// accepts.
pub const MAX_BATCH: usize = 10_000;
/// How long a batch waits for more records after its first, by default.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);
/// Bound of each blocking transaction call (`init_transactions`,
/// `send_offsets_to_transaction`, `commit_transaction`,
/// `abort_transaction`) and of a rewind.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a transaction call whose error librdkafka calls retriable,
/// before the transaction is aborted instead.
const CALL_ATTEMPTS: u32 = 3;
/// How long a reply or event may wait for room in the producer's queue.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `transactional.id` of one instance of a service: `<prefix>-<instance>`.
pub fn transactional_id(prefix: &str, instance: &str) -> String {
    format!("{prefix}-{instance}")
}

/// Consumes commands and commits their replies and events exactly once (see
/// the [module docs](self)).
pub struct TransactionalResponder {
    /// Shared with the blocking rewind; the only owner again at the end.
    consumer: Arc<StreamConsumer<Rebalances>>,
    producer: FutureProducer,
    transactional_id: String,
    max_batch: usize,
    linger: Duration,
    drain_timeout: Duration,
    stats: Arc<TransactionalStats>,
}

impl std::fmt::Debug for TransactionalResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalResponder")
            .field("transactional_id", &self.transactional_id)
            .field("max_batch", &self.max_batch)
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

impl TransactionalResponder {
    /// A Responder in consumer group `group` over `topics`, producing with
    /// `transactional_id` (see [`transactional_id`]). Calls
    /// `init_transactions` before it returns: from then on an older
    /// instance with the same id is fenced.
    ///
    /// The consumer reads with `isolation.level=read_committed` and
    /// `enable.auto.commit=false` whatever `kafka.consumer` says: its
    /// offsets are committed by the transactions alone.
    ///
    /// # Errors
    /// [`TransactionError`] when the clients cannot be created, the
    /// transactions not initialised within [`CALL_TIMEOUT`], or the topics
    /// not subscribed.
    pub async fn start(
        kafka: &KafkaSettings,
        group: &str,
        topics: &[&str],
        transactional_id: &str,
    ) -> Result<Self, TransactionError> {
        let mut config = kafka.consumer_config(group);
        config
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: StreamConsumer<Rebalances> = config
            .create_with_context(Rebalances::default())
            .map_err(|e| TransactionError::kafka("creating the consumer", e))?;
        let producer: FutureProducer = kafka
            .producer_config()
            .set("transactional.id", transactional_id)
            .create()
            .map_err(|e| TransactionError::kafka("creating the transactional producer", e))?;
        let this = Self {
            consumer: Arc::new(consumer),
            producer,
            transactional_id: transactional_id.to_owned(),
            max_batch: DEFAULT_MAX_BATCH,
            linger: DEFAULT_LINGER,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stats: Arc::new(TransactionalStats::default()),
        };
        this.call(|p| p.init_transactions(CALL_TIMEOUT))
            .await
            .map_err(|f| f.stop("initialising transactions"))?;
        tracing::info!(
            transactional_id,
            "transactions initialised; older instances with this id are fenced"
        );
        this.consumer
            .subscribe(topics)
            .map_err(|e| TransactionError::kafka("subscribing", e))?;
        Ok(this)
    }

    /// At most this many records per transaction (default
    /// [`DEFAULT_MAX_BATCH`]; at least 1, at most [`MAX_BATCH`]).
    #[must_use]
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.clamp(1, MAX_BATCH);
        self
    }

    /// How long a batch waits for more records after its first (default
    /// [`DEFAULT_LINGER`]).
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How long the handlers of the open batch may take to finish after
    /// shutdown (default [`DEFAULT_DRAIN_TIMEOUT`]); after that the batch is
    /// aborted, and delivered again to the group.
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Its `transactional.id`.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// The counters.
    pub fn stats(&self) -> Arc<TransactionalStats> {
        Arc::clone(&self.stats)
    }

    /// Serves commands with `handler` until `shutdown` is cancelled: the
    /// batch being read then is dropped uncommitted (delivered again), the
    /// batch being handled is finished and committed (within the drain
    /// timeout), then the Responder leaves the group.
    ///
    /// # Errors
    /// [`TransactionError::Fenced`] when another instance took its
    /// transactional id over; another [`TransactionError`] when the
    /// producer failed fatally, an abort or a rewind failed (the instance
    /// cannot tell where it is: a restart reads again from the committed
    /// offsets), or the group could not be left.
    pub async fn run<H, F>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), TransactionError>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Answer, HandlerError>>,
    {
        let served = self.serve(&handler, &shutdown).await;
        if let Err(e) = &served {
            tracing::error!(error = %e, transactional_id = %self.transactional_id, "transactional responder stops");
        }
        // The rewinds that shared the consumer have all returned: this is
        // its only owner. It has no offsets stored (the transactions commit
        // them), so closing only leaves the group.
        let closed = match Arc::try_unwrap(self.consumer) {
            Ok(consumer) => crate::consumer::close(consumer).await,
            Err(_) => Ok(()),
        };
        served?;
        Ok(closed?)
    }

    /// Batch after batch, each in a transaction, until shutdown or a
    /// failure this instance cannot go on after.
    async fn serve<H, F>(
        &self,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Result<(), TransactionError>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Answer, HandlerError>>,
    {
        let mut stream = self.consumer.stream();
        let mut rebalances = self.consumer.context().count();
        let mut backoff = Backoff::default();
        while let Some(mut batch) = self.collect(&mut stream, &mut rebalances, shutdown).await {
            if batch.is_empty() {
                continue;
            }
            let error = match self.transact(&mut batch, handler, shutdown).await {
                Ok(()) => {
                    backoff.reset();
                    continue;
                }
                Err(Failure::Stop(e)) => return Err(e),
                Err(Failure::Retry(e) | Failure::Abort(e)) => e.to_string(),
                Err(Failure::Unanswered(reason)) => reason,
            };
            tracing::warn!(
                error = %error,
                transactional_id = %self.transactional_id,
                pause = ?backoff.next(),
                "transaction failed: aborting it, and reading its commands again"
            );
            self.abort().await?;
            self.rewind(&batch).await?;
            if !backoff.wait(shutdown).await {
                break;
            }
        }
        Ok(())
    }

    /// Reads the next batch: until it holds `max_batch` records or `linger`
    /// has passed since its first. `None` at shutdown (what was read stays
    /// uncommitted) or when the consumer is gone.
    async fn collect(
        &self,
        stream: &mut MessageStream<'_, Rebalances>,
        rebalances: &mut u64,
        shutdown: &CancellationToken,
    ) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut deadline = None;
        while batch.records() < self.max_batch {
            let lingered = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                () = lingered => break,
                message = stream.next() => message,
            };
            // The poll that returned it may have run a rebalance first.
            self.drop_revoked(&mut batch, rebalances);
            match message {
                Some(Ok(message)) => {
                    self.take(&mut batch, &message);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                None => return None,
            }
        }
        Some(batch)
    }

    /// Takes a record read into `batch`: a command, a cancel record (which
    /// takes its command out of the batch if it is there), or a record that
    /// is skipped; the transaction commits past each.
    fn take(&self, batch: &mut Batch, message: &BorrowedMessage<'_>) {
        let (topic, partition) = (message.topic(), message.partition());
        batch.read(topic, partition, message.offset());
        if let Some(id) = record::cancelled_id_of(message) {
            if batch.cancel(&id) {
                tracing::info!(correlation_id = %id, "command cancelled in its batch: not handled, not answered");
            }
            return;
        }
        match Request::from_message(message) {
            Ok(request) if request.is_expired(SystemTime::now()) => {
                batch.skipped.expired += 1;
                tracing::debug!(correlation_id = %request.correlation_id, "skipping a command past its deadline");
            }
            Ok(request) => batch.push(topic, partition, request),
            Err(e) => {
                batch.skipped.malformed += 1;
                tracing::warn!(error = %e, "skipping a record that is not a command");
            }
        }
    }

    /// Drops from `batch` what it read of partitions revoked since the last
    /// look (`rebalances` counts the rebalances seen).
    fn drop_revoked(&self, batch: &mut Batch, rebalances: &mut u64) {
        let context = self.consumer.context();
        if context.count() == *rebalances {
            return;
        }
        *rebalances = context.count();
        let dropped = batch.drop_revoked(&context.take_revoked());
        if dropped > 0 {
            tracing::info!(
                dropped,
                "commands of revoked partitions dropped before their transaction began; they are read again from the committed offsets"
            );
        }
    }

    /// One batch in one transaction: begin, answer every command, add the
    /// offsets, commit.
    async fn transact<H, F>(
        &self,
        batch: &mut Batch,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Result<(), Failure>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Answer, HandlerError>>,
    {
        self.producer
            .begin_transaction()
            .map_err(|e| Failure::Stop(self.failure(e).stop("beginning a transaction")))?;
        let commands = batch.take_commands();
        let handled = commands.len() as u64;
        let answering = try_join_all(commands.into_iter().map(|c| self.answer(c, handler)));
        let cut_short = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.drain_timeout).await;
        };
        let answered = tokio::select! {
            answered = answering => answered?,
            () = cut_short => return Err(Failure::Unanswered(format!(
                "shutdown: the batch's handlers did not finish within {:?}", self.drain_timeout
            ))),
        };
        let offsets = batch.commit_offsets().map_err(Failure::Abort)?;
        let group = self.consumer.group_metadata().ok_or_else(|| {
            Failure::Stop(TransactionError::Fatal(
                "the consumer has no group metadata".into(),
            ))
        })?;
        self.call(move |p| p.send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT))
            .await?;
        self.call(|p| p.commit_transaction(CALL_TIMEOUT)).await?;
        let (replied, events) = answered.iter().fold((0, 0), |(r, e), (replied, events)| {
            (r + replied, e + events)
        });
        let s = &self.stats;
        s.committed.fetch_add(1, Ordering::Relaxed);
        s.commands.fetch_add(handled, Ordering::Relaxed);
        s.events.fetch_add(events, Ordering::Relaxed);
        let responder = s.responder();
        responder.replied.fetch_add(replied, Ordering::Relaxed);
        responder
            .expired
            .fetch_add(batch.skipped.expired, Ordering::Relaxed);
        responder
            .malformed
            .fetch_add(batch.skipped.malformed, Ordering::Relaxed);
        responder
            .cancelled
            .fetch_add(batch.skipped.cancelled, Ordering::Relaxed);
        tracing::debug!(commands = handled, replied, events, "transaction committed");
        Ok(())
    }

    /// Handles one command and produces its reply and events in the open
    /// transaction, once the broker has them. Returns (replies, events)
    /// produced.
    async fn answer<H, F>(&self, mut request: Request, handler: &H) -> Result<(u64, u64), Failure>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Answer, HandlerError>>,
    {
        let handling = Handling::start(&mut request, &self.producer);
        let result = handler(request).instrument(handling.span.clone()).await;
        let answer = match handling.outcome(result, &self.stats.responder()) {
            Outcome::Answer(answer) => answer,
            Outcome::Interrupted => return Ok((0, 0)),
            Outcome::Redeliver => {
                return Err(Failure::Unanswered(format!(
                    "the handler left command {} for redelivery",
                    handling.id()
                )));
            }
        };
        let reply = handling.last_part(answer.reply);
        let reply_sent = self.producer.send(
            handling.record(&reply, handling.headers(&reply)),
            PRODUCE_TIMEOUT,
        );
        let events_sent = try_join_all(answer.events.iter().map(|event| {
            let mut record = FutureRecord::to(&event.topic)
                .payload(&event.payload[..])
                .headers(handling.traced(event.record_headers()));
            if let Some(key) = &event.key {
                record = record.key(&key[..]);
            }
            self.producer.send(record, PRODUCE_TIMEOUT)
        }));
        try_join(reply_sent, events_sent)
            .await
            .map_err(|(e, _)| self.failure(e))?;
        Ok((1, answer.events.len() as u64))
    }

    /// Aborts the open transaction (counted).
    async fn abort(&self) -> Result<(), TransactionError> {
        self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        self.call(|p| p.abort_transaction(CALL_TIMEOUT))
            .await
            .map_err(|f| f.stop("aborting the transaction"))
    }

    /// Seeks the consumer back to where `batch` began in each of its
    /// partitions: the offsets the last committed transaction left.
    async fn rewind(&self, batch: &Batch) -> Result<(), TransactionError> {
        let rewind =
            |e| TransactionError::kafka("rewinding the consumer to the committed offsets", e);
        let offsets = batch.rewind_offsets().map_err(rewind)?;
        let consumer = Arc::clone(&self.consumer);
        let sought = blocking(move || consumer.seek_partitions(offsets, CALL_TIMEOUT))
            .await
            .map_err(rewind)?;
        for partition in sought.elements() {
            partition.error().map_err(rewind)?;
        }
        Ok(())
    }

    /// Runs a blocking transaction call off the async threads, again while
    /// librdkafka calls its error retriable (at most [`CALL_ATTEMPTS`]
    /// times; then the transaction is to be aborted).
    async fn call<T, C>(&self, call: C) -> Result<T, Failure>
    where
        T: Send + 'static,
        C: Fn(&FutureProducer) -> KafkaResult<T> + Send + Sync + 'static,
    {
        let call = Arc::new(call);
        let mut attempt = 1;
        loop {
            let (producer, call) = (self.producer.clone(), Arc::clone(&call));
            let e = match blocking(move || call(&producer)).await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            match self.failure(e) {
                Failure::Retry(e) if attempt < CALL_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "transaction call failed; trying it again");
                    attempt += 1;
                }
                Failure::Retry(e) => return Err(Failure::Abort(e)),
                other => return Err(other),
            }
        }
    }

    /// What a failed call or produce means, given the producer's state.
    fn failure(&self, error: KafkaError) -> Failure {
        classify(
            error,
            self.producer.client().fatal_error(),
            &self.transactional_id,
        )
    }
}

/// Runs `call` on the blocking threads (librdkafka's transaction calls and
/// seeks block until the broker answers); a panic in it goes on here.
async fn blocking<T, C>(call: C) -> KafkaResult<T>
where
    T: Send + 'static,
    C: FnOnce() -> KafkaResult<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(join) => match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(KafkaError::Canceled),
        },
    }
}
