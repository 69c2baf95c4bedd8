//! The Replyway collector: one consumer group over the reply topics; every reply
//! is stored in Redis and its waiting gateway nodes notified, in one round trip
//! per batch.
//!
//! At-least-once: a batch's offsets are stored (and later committed) only after
//! Redis acknowledged the whole batch. While Redis is unreachable the batch is
//! retried and nothing further is consumed, so no reply is skipped. A reply
//! without a usable correlation id, with a bad status or over the size bound is
//! counted, logged and sent to the dead-letter topic when one is configured; it
//! never stops the collector.

pub mod config;
pub mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use replyway_shared::backoff::Backoff;
use replyway_shared::record::{ReplyError, header_pairs, reply_from_message};
use replyway_shared::store::{Keys, ReplyToStore, Store, encode_reply};
use replyway_shared::trace::{TraceContext, continue_trace};

pub use config::Settings;

/// Counters of what the collector did, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Replies stored (first of their id).
    pub stored: AtomicU64,
    /// Replies for an id that already had one (the first wins).
    pub duplicates: AtomicU64,
    /// Records skipped as malformed.
    pub malformed: AtomicU64,
    /// Malformed records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Failed Redis round trips (each retried).
    pub redis_errors: AtomicU64,
    /// Consumer errors and failed dead-letter productions.
    pub kafka_errors: AtomicU64,
}

/// Logs rebalances and commit failures; keeps what librdkafka's statistics say
/// of consumer lag and brokers.
struct LoggingContext {
    observed: Arc<metrics::Observed>,
}

impl ClientContext for LoggingContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.observed.update(&statistics);
    }
}

impl ConsumerContext for LoggingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(
            ?rebalance,
            "rebalance: partitions being revoked or assigned"
        );
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        self.observed.set_assigned(assigned);
        tracing::info!(?rebalance, assigned, "rebalance done");
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// A collector, ready to run.
pub struct Collector {
    consumer: StreamConsumer<LoggingContext>,
    dead_letters: Option<(FutureProducer, String)>,
    store: Store,
    batch_max: usize,
    max_reply_bytes: usize,
    signer: Option<replyway_shared::correlation::Signer>,
    stats: Arc<Stats>,
    observed: Arc<metrics::Observed>,
    malformed: metrics::MalformedFamily,
}

/// librdkafka's statistics interval property.
const STATISTICS_INTERVAL: &str = "statistics.interval.ms";

impl Collector {
    /// Creates the consumer (subscribed) and the Redis pool; connects lazily.
    ///
    /// # Errors
    /// When a setting is invalid or the consumer cannot be created.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let mut config = settings.kafka.consumer_config(&settings.group_id);
        if config.get(STATISTICS_INTERVAL).is_none() {
            // Consumer lag and broker state for /metrics and /readyz.
            config.set(STATISTICS_INTERVAL, "5000");
        }
        let observed = Arc::new(metrics::Observed::default());
        let consumer: StreamConsumer<LoggingContext> = config
            .create_with_context(LoggingContext {
                observed: Arc::clone(&observed),
            })
            .context("creating the Kafka consumer")?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .context("subscribing to the reply topics")?;
        let dead_letters = match &settings.dead_letter_topic {
            Some(topic) => {
                let producer: FutureProducer = settings
                    .kafka
                    .producer_config()
                    .create()
                    .context("creating the dead-letter producer")?;
                Some((producer, topic.clone()))
            }
            None => None,
        };
        let connections = settings.redis.store_connections()?;
        let store = Store::new(
            connections,
            Keys::new(&settings.redis.prefix),
            settings.redis.timeout,
            settings.redis.ttl,
        )
        .with_min_replicas(settings.redis.min_replicas);
        tracing::info!(
            topics = ?settings.topics,
            group_id = %settings.group_id,
            redis = %settings.redis.redacted_url(),
            brokers = %settings.kafka.brokers,
            "collector started"
        );
        Ok(Self {
            consumer,
            dead_letters,
            store,
            batch_max: settings.batch_max,
            max_reply_bytes: settings.max_reply_bytes,
            signer: settings.signer()?,
            stats: Arc::default(),
            observed,
            malformed: prometheus_client::metrics::family::Family::default(),
        })
    }

    /// The metrics registry (read at scrape time) and the readiness check.
    pub fn admin(&self) -> (prometheus_client::registry::Registry, metrics::Readiness) {
        metrics::register(
            Arc::clone(&self.stats),
            Arc::clone(&self.observed),
            self.malformed.clone(),
            self.store.clone(),
        )
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Collects replies until `shutdown`; then commits what was stored and leaves
    /// the group.
    ///
    /// # Errors
    /// When the final commit fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut batches = self.consumer.stream().ready_chunks(self.batch_max);
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break,
                batch = batches.next() => match batch { Some(b) => b, None => break },
            };
            let mut messages = Vec::with_capacity(batch.len());
            for result in batch {
                match result {
                    Ok(m) => messages.push(m),
                    Err(e) => {
                        self.stats.kafka_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "kafka consumer error");
                    }
                }
            }
            if !self.store_batch(&messages, &shutdown).await {
                break;
            }
            for message in &messages {
                if let Err(e) = self.consumer.store_offset_from_message(message) {
                    // The partition was revoked meanwhile: its new owner re-reads it.
                    tracing::debug!(error = %e, partition = message.partition(), offset = message.offset(), "offset not stored");
                }
            }
        }
        drop(batches);
        replyway_shared::consumer::close(self.consumer).await?;
        tracing::info!("collector stopped");
        Ok(())
    }

    /// Stores the good replies of a batch, retrying until Redis acknowledges.
    /// Returns `false` when shutdown came first (nothing of the batch counts as
    /// stored, so its offsets must not be stored).
    async fn store_batch(
        &self,
        messages: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> bool {
        let mut replies = Vec::with_capacity(messages.len());
        // One span per reply, in the reply's trace, open until it is stored.
        let mut spans = Vec::with_capacity(messages.len());
        for message in messages {
            let parsed = reply_from_message(message, self.max_reply_bytes).and_then(
                |(id, reply)| match &self.signer {
                    Some(signer) if !signer.verify(&id) => Err(ReplyError::Unsigned),
                    _ => Ok((id, reply)),
                },
            );
            match parsed {
                Ok((id, reply)) => {
                    let parent = TraceContext::from_headers(header_pairs(message));
                    if let Some(parent) = parent {
                        let span = tracing::info_span!("collector.store_reply", otel.kind = "consumer", correlation_id = %id);
                        continue_trace(&span, Some(&parent));
                        spans.push(span);
                    }
                    replies.push(ReplyToStore {
                        id,
                        encoded: encode_reply(&reply),
                        part: reply.part.map(|part| (part, reply.last)),
                    });
                }
                Err(e) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.malformed
                        .get_or_create(&metrics::Reason { reason: e.label() })
                        .inc();
                    tracing::warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        reason = e.label(),
                        error = %e,
                        "malformed reply"
                    );
                    if !self.dead_letter(message, &e, shutdown).await {
                        return false;
                    }
                }
            }
        }
        let mut backoff = Backoff::default();
        loop {
            match self.store.store_replies(&replies).await {
                Ok(stored) => {
                    let fresh = stored.iter().filter(|s| **s).count() as u64;
                    self.stats.stored.fetch_add(fresh, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(stored.len() as u64 - fresh, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, replies = replies.len(), retry_in_ms = backoff.next().as_millis() as u64, "could not store replies; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

impl Collector {
    /// Sends a malformed reply to the dead-letter topic (if configured), with the
    /// reason and its origin in headers, retrying until the broker acknowledges.
    /// Returns `false` when shutdown came first.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        error: &ReplyError,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some((producer, topic)) = &self.dead_letters else {
            return true;
        };
        let mut headers = OwnedHeaders::new();
        for h in message.headers().into_iter().flat_map(|h| h.iter()) {
            headers = headers.insert(h);
        }
        let reason = error.to_string();
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        for (key, value) in [
            (DEAD_LETTER_REASON, error.label()),
            (DEAD_LETTER_ERROR, reason.as_str()),
            (DEAD_LETTER_TOPIC, message.topic()),
            (DEAD_LETTER_PARTITION, partition.as_str()),
            (DEAD_LETTER_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut backoff = Backoff::default();
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            match producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err((e, _)) => {
                    self.stats.kafka_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, topic = %topic, "could not dead-letter a malformed reply; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Header of a dead-lettered record: a fixed label of why it was rejected.
pub const DEAD_LETTER_REASON: &str = "replyway-dead-letter-reason";
/// Header of a dead-lettered record: the reason in words.
pub const DEAD_LETTER_ERROR: &str = "replyway-dead-letter-error";
/// Header of a dead-lettered record: the topic it came from.
pub const DEAD_LETTER_TOPIC: &str = "replyway-source-topic";
/// Header of a dead-lettered record: the partition it came from.
pub const DEAD_LETTER_PARTITION: &str = "replyway-source-partition";
/// Header of a dead-lettered record: its offset there.
pub const DEAD_LETTER_OFFSET: &str = "replyway-source-offset";

/// Runs a collector until `shutdown`, binding its admin address itself (for
/// tests and embedding; the binary binds it in `main`).
///
/// # Errors
/// As [`Collector::new`] and [`Collector::run`], or when the admin address
/// cannot be bound.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let collector = Collector::new(settings)?;
    let admin = replyway_shared::admin::AdminServer::bind(&settings.admin_listen).await?;
    collector.run_with_admin(admin, shutdown).await
}

impl Collector {
    /// Runs with the admin port (`/healthz`, `/readyz`, `/metrics`) on
    /// `admin` (none when `None`) until `shutdown`.
    ///
    /// # Errors
    /// As [`Collector::run`].
    pub async fn run_with_admin(
        self,
        admin: Option<tokio::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let (registry, readiness) = self.admin();
        let router = replyway_shared::admin::router_with_readiness(Arc::new(registry), move || {
            let readiness = readiness.clone();
            async move { readiness.check().await }
        });
        let admin = replyway_shared::admin::AdminServer::start(admin, router);
        let result = self.run(shutdown).await;
        admin.stop().await;
        result
    }
}
