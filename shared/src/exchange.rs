//! The request–reply core: one node's side of the correlation, shared by the
//! gateway (HTTP), the `Requester` and any other caller.
//!
//! A [`Node`] owns what a waiting request needs: the node id, the bounded map
//! of waiters, the node's one Redis subscription (through which the collector's
//! notifications arrive), the reply store and the Kafka producer.
//! [`Node::submit`] is the one place that sends a command and keeps the two
//! invariants of the correlation:
//!
//! 1. **Register before produce.** The waiter is in the map, and the pending
//!    record names this node, before the command can reach a service: a reply
//!    cannot arrive before anyone listens for it.
//! 2. **Never a pending record nobody can answer.** When the command is not
//!    produced (the broker refused it or did not acknowledge it in time), the
//!    pending record is deleted again: no service will ever reply to it, and a
//!    pick-up must not report it pending.
//!
//! [`Node::cancel`] is the one place that cancels a command, from any node:
//!
//! 3. **Mark before the cancel record, once.** The pending record is marked
//!    cancelled in one atomic step that also says whether it was cancelled
//!    before or answered already; only the step that marked it produces the
//!    cancel record (to the command's topic, with its key: the same
//!    partition, after the command), and removes the mark again when the
//!    record is not produced. So a request gets one cancel record (a retry
//!    after a failure may add one more, which a service ignores), a pick-up
//!    reports it cancelled as soon as a service may skip it, and a command
//!    whose reply is stored is not cancelled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::record::{Reply, Request, cancel_headers, unix_millis};
use crate::settings::{InvalidSetting, KafkaSettings, RedisSettings, is_valid_topic};
use crate::store::{CancelPending, Keys, NewPending, Store, StoreError};
use crate::subscriber::Subscriber;
use crate::waiters::{Full, Ticket, Waiter, Waiters};

/// How a [`Node`] is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The topic replies go to (`reply-to`); a collector must consume it.
    pub reply_topic: String,
    /// This node's id; generated when unset.
    pub node_id: Option<String>,
    /// Most requests waiting at once (see [`Node::admit`]).
    pub max_waiting: usize,
    /// Longest wait for the broker to acknowledge a command.
    pub produce_timeout: Duration,
}

/// Why a command was not sent. In every case nothing is left pending.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Redis failed before the command was produced.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// The broker refused the command.
    #[error("producing the command: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker did not acknowledge the command within the bound (it was
    /// not produced, or — rarely — is delivered later; its reply is then
    /// stored and can still be fetched by its id).
    #[error("the broker did not acknowledge the command within {0:?}")]
    KafkaTimeout(Duration),
}

/// A command for a service.
#[derive(Debug)]
pub struct Command<'a> {
    /// The record: its correlation id must be set. The node sets `reply_to`
    /// and `deadline`.
    pub request: Request,
    /// The request topic.
    pub topic: &'a str,
    /// The record key.
    pub key: Bytes,
    /// What the pending record names the request by (a route, a topic).
    pub label: &'a str,
    /// Who may pick the reply up, when the caller authenticated.
    pub principal: Option<String>,
    /// Whether the record also carries Spring's reply headers.
    pub spring_headers: bool,
    /// Longest wait for the broker's acknowledgement (bounded further by the
    /// node's `produce_timeout`).
    pub within: Duration,
}

/// A produced command. Holds the waiter when the caller waits.
#[derive(Debug)]
#[must_use = "a submitted command's waiter leaves the map when this is dropped"]
pub struct Submitted {
    waiter: Option<Waiter>,
}

impl Submitted {
    /// Waits up to `within` for the reply; `None` when it did not come (it is
    /// still stored when it comes, for a later pick-up). `None` at once when
    /// the command was submitted without a waiter.
    pub async fn reply(mut self, within: Duration) -> Option<Arc<Reply>> {
        self.wait(within).await
    }

    /// As [`Submitted::reply`], keeping the waiter: for a streamed reply the
    /// first part comes this way, the rest through [`Submitted::into_waiter`].
    pub async fn wait(&mut self, within: Duration) -> Option<Arc<Reply>> {
        let waiter = self.waiter.as_mut()?;
        tokio::time::timeout(within, waiter.reply()).await.ok()
    }

    /// The waiter, to hear of the further parts of a streamed reply.
    pub fn into_waiter(self) -> Option<Waiter> {
        self.waiter
    }
}

/// What cancelling a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// Marked cancelled, and its cancel record produced.
    Cancelled,
    /// Cancelled before: nothing was produced again.
    Already,
    /// Its reply is stored: not cancelled.
    Answered,
    /// No such pending request (never issued, or expired).
    Unknown,
}

/// Why a cancellation was not completed. Nothing is marked: it can be tried
/// again.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// The broker refused the cancel record.
    #[error("producing the cancel record: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker did not acknowledge the cancel record in time.
    #[error("the broker did not acknowledge the cancel record within {0:?}")]
    KafkaTimeout(Duration),
}

/// One node of the correlation. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    reply_topic: String,
    store: Store,
    producer: FutureProducer,
    waiters: Arc<Waiters>,
    produce_timeout: Duration,
    /// What the subscription needs; taken when it starts.
    subscriber: Mutex<Option<Subscriber>>,
    subscription: Mutex<Option<JoinHandle<()>>>,
    live: Arc<AtomicBool>,
    late_replies: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("reply_topic", &self.inner.reply_topic)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Checks the settings and creates the clients; connections are made
    /// lazily. The subscription starts with [`Node::start`].
    ///
    /// # Errors
    /// [`InvalidSetting`] naming a bad setting or a client that cannot be created.
    pub fn new(
        kafka: &KafkaSettings,
        redis: &RedisSettings,
        options: NodeOptions,
    ) -> Result<Self, InvalidSetting> {
        redis.validate()?;
        kafka.validate()?;
        if !is_valid_topic(&options.reply_topic) {
            return Err(InvalidSetting::new(
                "reply_topic",
                "not a legal Kafka topic name",
            ));
        }
        let id = options
            .node_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let store = Store::new(
            redis.store_connections()?,
            Keys::new(&redis.prefix),
            redis.timeout,
            redis.ttl,
        )
        .with_min_replicas(redis.min_replicas);
        let producer: FutureProducer = kafka
            .producer_config()
            .create()
            .map_err(|e| InvalidSetting::new("kafka", format!("creating the producer: {e}")))?;
        let waiters = Waiters::new(options.max_waiting.max(1));
        let live = Arc::new(AtomicBool::new(false));
        let late_replies = Arc::new(AtomicU64::new(0));
        let subscriber = Subscriber {
            client: redis.subscription_client()?,
            node: id.clone(),
            channel: store.keys().channel(&id),
            waiters: Arc::clone(&waiters),
            store: store.clone(),
            timeout: redis.timeout,
            live: Arc::clone(&live),
            unclaimed: Arc::clone(&late_replies),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                reply_topic: options.reply_topic,
                store,
                producer,
                waiters,
                produce_timeout: options.produce_timeout,
                subscriber: Mutex::new(Some(subscriber)),
                subscription: Mutex::new(None),
                live,
                late_replies,
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Starts the node's subscription on the current tokio runtime (once;
    /// later calls do nothing). Until it is live ([`Node::is_live`]), replies
    /// are read again when it comes up.
    pub fn start(&self) {
        let subscriber = lock(&self.inner.subscriber).take();
        if let Some(subscriber) = subscriber {
            let task = tokio::spawn(subscriber.run(self.inner.stop.clone()));
            *lock(&self.inner.subscription) = Some(task);
        }
    }

    /// Stops the subscription and flushes the producer (at most 5 s). Requests
    /// still waiting run into their own timeouts.
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        let task = lock(&self.inner.subscription).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let producer = self.inner.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }

    /// Whether [`Node::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The reply topic commands name in `reply-to`.
    pub fn reply_topic(&self) -> &str {
        &self.inner.reply_topic
    }

    /// The reply store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The Kafka producer (for metadata and group queries).
    pub fn producer(&self) -> &FutureProducer {
        &self.inner.producer
    }

    /// The requests waiting on this node.
    pub fn waiters(&self) -> &Arc<Waiters> {
        &self.inner.waiters
    }

    /// Whether the notification subscription is up.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// The subscription's liveness flag (for metrics).
    pub fn live_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.inner.live)
    }

    /// Replies heard after their waiters had gone (for metrics).
    pub fn late_replies(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.inner.late_replies)
    }

    /// Takes a place among the node's waiting requests before any work is
    /// done for a request (see [`Waiters::admit`]).
    ///
    /// # Errors
    /// [`Full`] at `max_waiting`.
    pub fn admit(&self) -> Result<Ticket, Full> {
        self.inner.waiters.admit()
    }

    /// Produces `command`. With a `ticket` the request waits: its waiter is
    /// registered and the pending record names this node before the command
    /// is produced (invariant 1); without one, the reply is only stored.
    /// When the command is not produced, its pending record is deleted
    /// (invariant 2) and the error says why. Nothing happens until the
    /// future is polled.
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is left pending.
    pub fn submit<'a>(
        &'a self,
        command: Command<'a>,
        ticket: Option<Ticket>,
    ) -> impl Future<Output = Result<Submitted, SubmitError>> + Send + 'a {
        let Command {
            mut request,
            topic,
            key,
            label,
            principal,
            spring_headers,
            within,
        } = command;
        let inner = &*self.inner;
        let created = SystemTime::now();
        request.reply_to.clone_from(&inner.reply_topic);
        // After the caller gave up, the reply can still be picked up for as
        // long as Redis keeps it: only then will nobody collect it.
        request.deadline = Some(unix_millis(created + inner.store.ttl()));
        // The record's headers are built before the first await, so that the
        // future holds them, the body and the id — not the whole request
        // (thousands of submissions can be in flight at once).
        let mut headers = request.record_headers();
        if spring_headers {
            headers = request.spring_headers(headers);
        }
        let Request {
            correlation_id: id,
            body,
            ..
        } = request;
        async move {
            // Invariant 1: listening before anything can reply.
            let waiter = ticket.map(|ticket| ticket.register(&id));
            let created = inner
                .store
                .create_pending(
                    &id,
                    NewPending {
                        route: label,
                        created_ms: unix_millis(created),
                        principal: principal.as_deref(),
                        topic,
                        key: &key,
                    },
                    waiter.as_ref().map(|_| inner.id.as_str()),
                )
                .await;
            if let Err(e) = created {
                // On the master but not on enough replicas: nothing is
                // produced, so the record goes (invariant 2).
                if matches!(e, StoreError::NotReplicated { .. }) {
                    inner.forget_pending(&id).await;
                }
                return Err(e.into());
            }

            let record = FutureRecord::to(topic)
                .key(&key[..])
                .payload(&body[..])
                .headers(headers);
            if let Err(e) = inner.produce(record, within).await {
                // Invariant 2: nobody will reply to a command that was not
                // produced.
                inner.forget_pending(&id).await;
                return Err(match e {
                    NotProduced::Refused(e) => SubmitError::Kafka(e),
                    NotProduced::Timeout(bound) => SubmitError::KafkaTimeout(bound),
                });
            }
            Ok(Submitted { waiter })
        }
    }
}

impl Node {
    /// Cancels request `id`: marks its pending record cancelled and produces
    /// its cancel record (invariant 3). The reply, if the service still
    /// sends one, is stored as usual.
    ///
    /// # Errors
    /// [`CancelError`]: Redis failed, or the cancel record was not produced.
    pub async fn cancel(&self, id: &str) -> Result<Cancellation, CancelError> {
        let inner = &*self.inner;
        let (topic, key) = match inner.store.cancel_pending(id).await? {
            CancelPending::Cancelled { topic, key } => (topic, key),
            CancelPending::Already => return Ok(Cancellation::Already),
            CancelPending::Answered => return Ok(Cancellation::Answered),
            CancelPending::Unknown => return Ok(Cancellation::Unknown),
        };
        let record = FutureRecord::to(&topic)
            .key(&key[..])
            .payload(&[][..])
            .headers(cancel_headers(id));
        let Err(e) = inner.produce(record, inner.produce_timeout).await else {
            return Ok(Cancellation::Cancelled);
        };
        // Not produced: the mark goes, so that a retry produces it.
        if let Err(e) = inner.store.unmark_cancelled(id).await {
            tracing::warn!(correlation_id = %id, error = %e, "could not remove the cancelled mark of a request whose cancel record was not produced");
        }
        Err(match e {
            NotProduced::Refused(e) => CancelError::Kafka(e),
            NotProduced::Timeout(bound) => CancelError::KafkaTimeout(bound),
        })
    }
}

/// Why a record was not produced.
enum NotProduced {
    /// The broker refused it.
    Refused(KafkaError),
    /// The broker did not acknowledge it within this bound.
    Timeout(Duration),
}

impl Inner {
    /// Produces `record`, acknowledged within `within` (at most
    /// `produce_timeout`). Bounded here as well as by the producer's
    /// `message.timeout.ms`: librdkafka notices an expired message only when
    /// its broker thread wakes, which can be seconds late while the broker
    /// is unreachable.
    async fn produce(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
        within: Duration,
    ) -> Result<(), NotProduced> {
        let bound = self.produce_timeout.min(within);
        match tokio::time::timeout(bound, self.producer.send(record, Timeout::After(bound))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(NotProduced::Refused(e)),
            Err(_) => Err(NotProduced::Timeout(bound)),
        }
    }

    /// Removes the pending record of a request whose command will not be
    /// produced (invariant 2); when Redis cannot, it expires with its TTL.
    async fn forget_pending(&self, id: &str) {
        if let Err(e) = self.store.delete_pending(id).await {
            tracing::warn!(correlation_id = %id, error = %e, "could not remove the pending record of a request that is not produced; it expires with its TTL");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Locks a mutex whose holder cannot leave it inconsistent (one assignment).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
