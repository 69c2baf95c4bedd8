//! The `Requester`: request–reply between backend services, over the same
//! Redis-backed correlation as the gateway.
//!
//! A service with any number of instances sends a command with
//! [`Requester::request`] and gets its own reply back, with no per-instance topic
//! and no special consumer group: the command names the shared reply topic in
//! `reply-to`, the collector writes every reply into Redis and notifies the
//! instance that waits on its channel, exactly as for a gateway node. Each
//! instance is one node: it subscribes once at start (one Redis connection for
//! notifications) and keeps a bounded map of the requests it waits for.
//!
//! ```no_run
//! # async fn demo(kafka: replyway_shared::settings::KafkaSettings,
//! #               redis: replyway_shared::settings::RedisSettings) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use replyway_shared::requester::{Requester, RequesterOptions};
//!
//! let requester = Requester::start(&kafka, &redis, RequesterOptions::new("replyway.replies"))?;
//! let reply = requester
//!     .request("kyc.requests", r#"{"customer":"c-42"}"#, Duration::from_secs(2))
//!     .await?;
//! assert_eq!(reply.status, 200);
//! requester.stop().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::record::{Reply, Request, is_valid_correlation_id, new_correlation_id, unix_millis};
use crate::settings::{InvalidSetting, KafkaSettings, RedisSettings, is_valid_topic};
use crate::store::{Keys, Lookup, Store, StoreError};
use crate::subscriber::Subscriber;
use crate::waiters::Waiters;
use tracing::Instrument;

/// How a [`Requester`] is set up; everything but the reply topic has a default.
#[derive(Debug, Clone)]
pub struct RequesterOptions {
    /// The topic replies go to (`reply-to`); a collector must consume it.
    pub reply_topic: String,
    /// This instance's node id; generated when unset.
    pub node_id: Option<String>,
    /// Most requests waiting at once; past it, [`RequesterError::Overloaded`].
    pub max_waiting: usize,
    /// Longest wait for the broker to acknowledge a command.
    pub produce_timeout: Duration,
    /// The deployment's `correlation_secret`, when collectors accept only
    /// signed ids.
    pub correlation_secret: Option<crate::settings::Secret>,
}

impl RequesterOptions {
    /// Defaults, with replies on `reply_topic`.
    pub fn new(reply_topic: impl Into<String>) -> Self {
        Self {
            reply_topic: reply_topic.into(),
            node_id: None,
            max_waiting: 10_000,
            produce_timeout: Duration::from_secs(5),
            correlation_secret: None,
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequesterError {
    /// No reply within the timeout. The reply is still collected when it comes
    /// and can be read with [`Requester::fetch`] until it expires.
    #[error("no reply to {correlation_id} within {timeout:?}")]
    Timeout {
        /// The request's correlation id.
        correlation_id: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// Too many requests wait on this instance.
    #[error("too many requests waiting on this instance")]
    Overloaded,
    /// Redis failed; nothing was produced.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// The command could not be produced; nothing is left pending.
    #[error("producing the command: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker did not acknowledge the command in time; nothing is left pending
    /// (a service may still receive it, and its reply is then ignored).
    #[error("the broker did not acknowledge the command within {0:?}")]
    KafkaTimeout(Duration),
    /// The request's correlation id is not 1–128 characters of `A-Za-z0-9._:-`.
    #[error("invalid correlation id")]
    InvalidCorrelationId,
    /// The Requester was stopped.
    #[error("the requester is stopped")]
    Stopped,
}

/// What a reply lookup found (see [`Requester::fetch`]).
#[derive(Debug)]
pub enum Fetched {
    /// The reply.
    Reply(Reply),
    /// The request is pending.
    Pending,
    /// Never issued, or expired.
    Unknown,
}

/// Sends commands and waits for their replies. Cheap to clone; clones share one
/// subscription and one producer.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    reply_topic: String,
    signer: Option<crate::correlation::Signer>,
    produce_timeout: Duration,
    store: Store,
    producer: FutureProducer,
    waiters: Arc<Waiters>,
    live: Arc<AtomicBool>,
    stop: CancellationToken,
    subscription: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("node_id", &self.inner.node_id)
            .field("reply_topic", &self.inner.reply_topic)
            .finish_non_exhaustive()
    }
}

impl Requester {
    /// Creates the clients and starts the node's subscription (on the current
    /// tokio runtime). Connections are made lazily; [`Requester::is_live`] tells
    /// when the subscription is up.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming a bad setting or a client that cannot be created.
    pub fn start(
        kafka: &KafkaSettings,
        redis: &RedisSettings,
        options: RequesterOptions,
    ) -> Result<Self, InvalidSetting> {
        redis.validate()?;
        kafka.validate()?;
        if !is_valid_topic(&options.reply_topic) {
            return Err(InvalidSetting::new(
                "reply_topic",
                "not a legal Kafka topic name",
            ));
        }
        let signer = crate::correlation::Signer::from_setting(options.correlation_secret.as_ref())?;
        let node_id = options
            .node_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let store = Store::new(
            redis.connections()?,
            Keys::new(&redis.prefix),
            redis.timeout,
            redis.ttl,
        );
        let producer: FutureProducer = kafka
            .producer_config()
            .create()
            .map_err(|e| InvalidSetting::new("kafka.producer", e.to_string()))?;
        let waiters = Waiters::new(options.max_waiting.max(1));
        let live = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let subscriber = Subscriber {
            client: redis.client()?,
            node: node_id.clone(),
            channel: store.keys().channel(&node_id),
            waiters: Arc::clone(&waiters),
            store: store.clone(),
            timeout: redis.timeout,
            live: Arc::clone(&live),
            unclaimed: Arc::default(),
        };
        let subscription = tokio::spawn(subscriber.run(stop.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                node_id,
                reply_topic: options.reply_topic,
                signer,
                produce_timeout: options.produce_timeout,
                store,
                producer,
                waiters,
                live,
                stop,
                subscription: std::sync::Mutex::new(Some(subscription)),
            }),
        })
    }

    /// This instance's node id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Whether the notification subscription is up (replies are heard at once;
    /// while it is down they are read again when it comes back).
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// How many requests wait for a reply now.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Sends `body` to `topic` and waits up to `timeout` for the reply.
    ///
    /// # Errors
    /// [`RequesterError`]; on [`RequesterError::Timeout`] the reply can still be
    /// fetched later.
    pub async fn request(
        &self,
        topic: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Reply, RequesterError> {
        let request = Request {
            body: body.into(),
            ..Request::default()
        };
        self.send(topic, request, timeout).await
    }

    /// Sends a request with everything a [`Request`] can carry (content type,
    /// key, `header-*`, trace context, client id). `reply_to` and `deadline` are
    /// set here; an empty correlation id is replaced by a fresh one (signed when
    /// the options carry the deployment's secret).
    ///
    /// # Errors
    /// As [`Requester::request`].
    pub async fn send(
        &self,
        topic: &str,
        mut request: Request,
        timeout: Duration,
    ) -> Result<Reply, RequesterError> {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return Err(RequesterError::Stopped);
        }
        if request.correlation_id.is_empty() {
            request.correlation_id = inner
                .signer
                .as_ref()
                .map_or_else(new_correlation_id, |s| s.issue());
        }
        if !is_valid_correlation_id(&request.correlation_id) {
            return Err(RequesterError::InvalidCorrelationId);
        }
        request.reply_to.clone_from(&inner.reply_topic);
        let span = tracing::info_span!("requester.request", otel.kind = "client", topic = %topic, correlation_id = %request.correlation_id);
        request.continue_trace(&span);
        self.exchange(topic, request, timeout)
            .instrument(span)
            .await
    }

    async fn exchange(
        &self,
        topic: &str,
        mut request: Request,
        timeout: Duration,
    ) -> Result<Reply, RequesterError> {
        let inner = &self.inner;
        let created = SystemTime::now();
        // A reply that comes after `timeout` can still be fetched (`fetch`) for
        // as long as the store keeps it: that is when nobody will collect it.
        request.deadline = Some(unix_millis(created + inner.store.ttl()));
        let id = request.correlation_id.clone();

        // Wait before anything can reply, so that the reply cannot be missed.
        let mut waiter = inner
            .waiters
            .register(&id)
            .map_err(|_| RequesterError::Overloaded)?;
        inner
            .store
            .create_pending(
                &id,
                topic,
                unix_millis(created),
                Some(&inner.node_id),
                request.client_id.as_deref(),
            )
            .await?;
        let key = request
            .key
            .clone()
            .unwrap_or_else(|| Bytes::from(id.clone()));
        let record = FutureRecord::to(topic)
            .key(&key[..])
            .payload(&request.body[..])
            .headers(request.record_headers());
        let bound = inner.produce_timeout.min(timeout);
        let produced =
            match tokio::time::timeout(bound, inner.producer.send(record, Timeout::After(bound)))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(RequesterError::Kafka(e)),
                Err(_) => Err(RequesterError::KafkaTimeout(bound)),
            };
        if let Err(e) = produced {
            if let Err(cleanup) = inner.store.delete_pending(&id).await {
                tracing::warn!(correlation_id = %id, error = %cleanup, "could not remove the pending record of an unproduced request; it expires with its TTL");
            }
            return Err(e);
        }
        let remaining = timeout.saturating_sub(created.elapsed().unwrap_or_default());
        match tokio::time::timeout(remaining, waiter.reply()).await {
            Ok(reply) => Ok(Arc::unwrap_or_clone(reply)),
            Err(_) => Err(RequesterError::Timeout {
                correlation_id: id,
                timeout,
            }),
        }
    }

    /// Reads the reply of an earlier request (after a [`RequesterError::Timeout`]).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub async fn fetch(&self, correlation_id: &str) -> Result<Fetched, StoreError> {
        if !is_valid_correlation_id(correlation_id) {
            return Ok(Fetched::Unknown);
        }
        Ok(match self.inner.store.lookup(correlation_id, None).await? {
            Lookup::Reply(reply, _) => Fetched::Reply(reply),
            Lookup::Pending(_) => Fetched::Pending,
            Lookup::Unknown => Fetched::Unknown,
        })
    }

    /// Stops the subscription and flushes the producer. Requests still waiting
    /// run into their timeouts; new ones fail with [`RequesterError::Stopped`].
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        let task = self
            .inner
            .subscription
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let producer = self.inner.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
