//! The `Responder`: how a backend service written in Rust serves a request topic.
//!
//! It consumes commands in a consumer group, hands each to the service's handler,
//! and produces the handler's reply to the command's `reply-to` topic with the
//! correlation id kept. At-least-once: a command's offset is stored only after its
//! reply was acknowledged by the broker, so a crash replays commands rather than
//! losing them (services should be idempotent, or dedupe by correlation id).
//!
//! Concurrency is bounded: at most `max_in_flight` commands are handled at once;
//! at the bound the Responder stops taking commands until one finishes. Commands
//! finish in any order; a partition's offset is stored up to its lowest command
//! still in flight, so a slow command delays no other command's reply, only the
//! commit of the offsets after it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use std::collections::{BTreeSet, HashMap};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::consumer::CloseError;
use crate::record::{Reply, Request};
use crate::settings::KafkaSettings;
use tracing::Instrument;

/// What a handler may fail with; the Responder answers `500` (the message is
/// logged, not sent), except for [`Redeliver`].
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A handler error that leaves the command unanswered and its offset
/// uncommitted, so it is delivered again after a restart or rebalance. Meant for
/// a handler interrupted by shutdown half-way (its effects must be idempotent);
/// any other failure should be answered.
#[derive(Debug, thiserror::Error)]
#[error("left for redelivery: {0}")]
pub struct Redeliver(pub String);

/// Counters of what the Responder did, readable while it runs.
#[derive(Debug, Default)]
pub struct ResponderStats {
    /// Commands answered (including handler failures answered with 500).
    pub replied: AtomicU64,
    /// Commands skipped because their deadline had passed.
    pub expired: AtomicU64,
    /// Records that are not commands (no correlation id or reply-to).
    pub malformed: AtomicU64,
    /// Handler failures answered with 500.
    pub failed: AtomicU64,
}

/// Consumes commands and replies to them.
pub struct Responder {
    consumer: StreamConsumer,
    producer: FutureProducer,
    max_in_flight: usize,
    drain_timeout: Duration,
    stats: Arc<ResponderStats>,
}

/// How long commands in flight may take to finish after shutdown, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A Responder in consumer group `group` over `topics`.
    ///
    /// # Errors
    /// A [`KafkaError`] when the clients cannot be created or subscribed.
    pub fn new(
        kafka: &KafkaSettings,
        group: &str,
        topics: &[&str],
        max_in_flight: usize,
    ) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer = kafka.consumer_config(group).create()?;
        consumer.subscribe(topics)?;
        let producer: FutureProducer = kafka.producer_config().create()?;
        Ok(Self {
            consumer,
            producer,
            max_in_flight: max_in_flight.max(1),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stats: Arc::default(),
        })
    }

    /// How long the commands in flight at shutdown may take to finish
    /// (default [`DEFAULT_DRAIN_TIMEOUT`]); those still running then are
    /// abandoned uncommitted, and delivered again to the group.
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ResponderStats> {
        Arc::clone(&self.stats)
    }

    /// Serves commands with `handler` until `shutdown` is cancelled, then lets the
    /// commands in flight finish, commits what was answered and leaves the group.
    ///
    /// # Errors
    /// A [`CloseError`] when the final commit fails or the group cannot be left in time.
    pub async fn run<H, F>(self, handler: H, shutdown: CancellationToken) -> Result<(), CloseError>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Reply, HandlerError>>,
    {
        let mut in_flight = FuturesUnordered::new();
        let mut offsets = Offsets::default();
        let mut stream = self.consumer.stream();
        loop {
            let room = in_flight.len() < self.max_in_flight;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((position, answered)) = in_flight.next() => {
                    self.completed(&mut offsets, position, answered);
                }
                message = stream.next(), if room => match message {
                    Some(Ok(message)) => {
                        let position = Position { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() };
                        offsets.started(&position);
                        let request = Request::from_message(&message);
                        let (this, handler, shutdown) = (&self, &handler, &shutdown);
                        in_flight.push(async move { let answered = this.serve(request, handler, shutdown).await; (position, answered) });
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                    None => break,
                },
            }
        }
        // Finish what was taken (replies being produced give up on shutdown),
        // for at most `drain_timeout`.
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while let Some((position, answered)) = in_flight.next().await {
                self.completed(&mut offsets, position, answered);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                drain_timeout = ?self.drain_timeout,
                "commands still running at the end of the drain are abandoned uncommitted; the group delivers them again"
            );
        }
        drop(stream);
        drop(in_flight);
        crate::consumer::close(self.consumer).await
    }

    /// Records a finished command and stores the partition's offset up to the
    /// lowest command still in flight.
    fn completed(&self, offsets: &mut Offsets, position: Position, answered: bool) {
        if !answered {
            // Not answered (shutdown): its offset must not be committed; it and
            // everything after it in its partition will be delivered again.
            return;
        }
        if let Some(done) = offsets.finished(&position)
            && let Err(e) = self
                .consumer
                .store_offset(&position.topic, position.partition, done)
        {
            tracing::debug!(error = %e, partition = position.partition, "offset not stored (partition revoked?)");
        }
    }

    /// Serves one command. Returns whether its offset may be stored (the reply was
    /// acknowledged, or there is nothing to reply to).
    async fn serve<H, F>(
        &self,
        request: Result<Request, crate::record::RequestError>,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> bool
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Reply, HandlerError>>,
    {
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "skipping a record that is not a command");
                return true;
            }
        };
        if request.is_expired(SystemTime::now()) {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(correlation_id = %request.correlation_id, "skipping a command past its deadline");
            return true;
        }
        let id = request.correlation_id.clone();
        let reply_to = request.reply_to.clone();
        // This hop joins the command's trace; the handler sees (and passes on)
        // this hop's context, and the reply carries it back.
        let span =
            tracing::info_span!("responder.handle", otel.kind = "consumer", correlation_id = %id);
        let mut request = request;
        let trace = request.continue_trace(&span);
        let reply = match handler(request).instrument(span).await {
            Ok(reply) => reply,
            Err(e) if e.downcast_ref::<Redeliver>().is_some() => {
                tracing::info!(correlation_id = %id, reason = %e, "command left unanswered for redelivery");
                return false;
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(correlation_id = %id, error = %e, "handler failed; replying 500");
                Reply::problem(
                    500,
                    "Internal Server Error",
                    "the service failed to handle the request",
                )
            }
        };
        let headers = trace.add_to(reply.record_headers(&id));
        let mut backoff = Backoff::default();
        loop {
            let record = FutureRecord::to(&reply_to)
                .key(&id)
                .payload(&reply.body[..])
                .headers(headers.clone());
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.stats.replied.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err((e, _)) => {
                    tracing::warn!(correlation_id = %id, error = %e, "could not produce reply; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Where a command came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Per partition: offsets in flight and the highest finished one.
#[derive(Debug, Default)]
struct Offsets {
    partitions: HashMap<(String, i32), (BTreeSet<i64>, i64)>,
}

impl Offsets {
    fn started(&mut self, p: &Position) {
        let entry = self
            .partitions
            .entry((p.topic.clone(), p.partition))
            .or_insert_with(|| (BTreeSet::new(), -1));
        entry.0.insert(p.offset);
    }

    /// Marks `p` finished; returns the offset that is now processed with
    /// everything before it (to store), if any.
    fn finished(&mut self, p: &Position) -> Option<i64> {
        let (in_flight, done) = self.partitions.get_mut(&(p.topic.clone(), p.partition))?;
        in_flight.remove(&p.offset);
        *done = (*done).max(p.offset);
        match in_flight.first() {
            Some(lowest) if *lowest > 0 => Some(lowest - 1),
            Some(_) => None,
            None => Some(*done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn offsets_advance_only_past_finished_commands() {
        let mut o = Offsets::default();
        for n in 5..=7 {
            o.started(&at(n));
        }
        assert_eq!(o.finished(&at(6)), Some(4), "5 is still in flight");
        assert_eq!(o.finished(&at(7)), Some(4));
        assert_eq!(o.finished(&at(5)), Some(7), "all done");
        o.started(&at(0));
        o.started(&at(1));
        assert_eq!(o.finished(&at(1)), None, "nothing below 0 to store");
    }
}
