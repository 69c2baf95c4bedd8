//! The `Responder`: how a backend service written in Rust serves a request topic.
//!
//! It consumes commands in a consumer group, hands each to the service's handler,
//! and produces the handler's reply to the command's `reply-to` topic with the
//! correlation id kept. At-least-once: a command's offset is stored only after its
//! reply was acknowledged by the broker, so a crash replays commands rather than
//! losing them (services should be idempotent, or dedupe by correlation id).
//!
//! Concurrency is bounded: the Responder takes up to `max_in_flight` commands that
//! are ready, runs their handlers concurrently, and stores their offsets when all
//! have replied. A slow handler therefore delays the commands taken with it; a
//! service that needs per-command flow should raise `max_in_flight`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::record::{Reply, Request};
use crate::settings::KafkaSettings;

/// What a handler may fail with; the Responder answers `500` with its message.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

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
    stats: Arc<ResponderStats>,
}

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
            stats: Arc::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ResponderStats> {
        Arc::clone(&self.stats)
    }

    /// Serves commands with `handler` until `shutdown` is cancelled, then commits
    /// what was answered and leaves the group.
    ///
    /// # Errors
    /// A [`KafkaError`] when the final commit fails.
    pub async fn run<H, F>(self, handler: H, shutdown: CancellationToken) -> Result<(), KafkaError>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Reply, HandlerError>>,
    {
        let mut batches = self.consumer.stream().ready_chunks(self.max_in_flight);
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break,
                batch = batches.next() => match batch { Some(b) => b, None => break },
            };
            let mut messages = Vec::with_capacity(batch.len());
            for result in batch {
                match result {
                    Ok(m) => messages.push(m),
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                }
            }
            let answered = futures::future::join_all(
                messages.iter().map(|m| self.serve(m, &handler, &shutdown)),
            )
            .await;
            for (message, done) in messages.iter().zip(answered) {
                if done && let Err(e) = self.consumer.store_offset_from_message(message) {
                    tracing::warn!(error = %e, partition = message.partition(), offset = message.offset(), "could not store offset");
                }
            }
        }
        drop(batches);
        match self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Serves one message. Returns whether its offset may be stored (the reply was
    /// acknowledged, or there is nothing to reply to).
    async fn serve<H, F>(
        &self,
        message: &BorrowedMessage<'_>,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> bool
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Reply, HandlerError>>,
    {
        let request = match Request::from_message(message) {
            Ok(r) => r,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), error = %e, "skipping a record that is not a command");
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
        let reply = match handler(request).await {
            Ok(reply) => reply,
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
        let headers = reply.record_headers(&id);
        let mut backoff = Duration::from_millis(50);
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
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
