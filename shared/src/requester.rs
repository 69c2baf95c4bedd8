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
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::KafkaError;
use tracing::Instrument;

use crate::exchange::{CancelError, Cancellation, Command, Node, NodeOptions, SubmitError};
use crate::record::{Reply, Request, is_valid_correlation_id, new_correlation_id};
use crate::settings::{InvalidSetting, KafkaSettings, RedisSettings};
use crate::store::{Lookup, StoreError};

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

impl From<SubmitError> for RequesterError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Redis(e) => Self::Redis(e),
            SubmitError::Kafka(e) => Self::Kafka(e),
            SubmitError::KafkaTimeout(bound) => Self::KafkaTimeout(bound),
        }
    }
}

/// What a reply lookup found (see [`Requester::fetch`]).
#[derive(Debug)]
pub enum Fetched {
    /// The reply.
    Reply(Reply),
    /// The request is pending.
    Pending,
    /// The service streams its reply in parts: read them with
    /// [`Store::read_parts`](crate::store::Store::read_parts).
    Streamed,
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
    node: Node,
    signer: Option<crate::correlation::Signer>,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("node", &self.inner.node)
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
        let signer = crate::correlation::Signer::from_setting(options.correlation_secret.as_ref())?;
        let node = Node::new(
            kafka,
            redis,
            NodeOptions {
                reply_topic: options.reply_topic,
                node_id: options.node_id,
                max_waiting: options.max_waiting,
                produce_timeout: options.produce_timeout,
            },
        )?;
        node.start();
        Ok(Self {
            inner: Arc::new(Inner { node, signer }),
        })
    }

    /// This instance's node id.
    pub fn node_id(&self) -> &str {
        self.inner.node.id()
    }

    /// Whether the notification subscription is up (replies are heard at once;
    /// while it is down they are read again when it comes back).
    pub fn is_live(&self) -> bool {
        self.inner.node.is_live()
    }

    /// How many requests wait for a reply now.
    pub fn waiting(&self) -> usize {
        self.inner.node.waiters().len()
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
        if inner.node.is_stopped() {
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
        let span = tracing::info_span!("requester.request", otel.kind = "client", topic = %topic, correlation_id = %request.correlation_id);
        request.continue_trace(&span);
        self.exchange(topic, request, timeout)
            .instrument(span)
            .await
    }

    async fn exchange(
        &self,
        topic: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, RequesterError> {
        let started = Instant::now();
        let node = &self.inner.node;
        let ticket = node.admit().map_err(|_| RequesterError::Overloaded)?;
        let id = request.correlation_id.clone();
        let key = request
            .key
            .clone()
            .unwrap_or_else(|| Bytes::from(id.clone()));
        let principal = request.client_id.clone();
        let command = Command {
            request,
            topic,
            key,
            label: topic,
            principal,
            spring_headers: false,
            within: timeout,
        };
        let submitted = node.submit(command, Some(ticket)).await?;
        match submitted
            .reply(timeout.saturating_sub(started.elapsed()))
            .await
        {
            Some(reply) => Ok(Arc::unwrap_or_clone(reply)),
            None => Err(RequesterError::Timeout {
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
        Ok(
            match self.inner.node.store().lookup(correlation_id, None).await? {
                Lookup::Reply(reply, _) => Fetched::Reply(reply),
                Lookup::Pending(_) => Fetched::Pending,
                // A streamed reply: its parts are read with `Store::read_parts`.
                Lookup::Streamed(_) => Fetched::Streamed,
                Lookup::Unknown => Fetched::Unknown,
            },
        )
    }

    /// Cancels an earlier request (after a [`RequesterError::Timeout`], or one
    /// whose answer is no longer wanted): its cancel record goes to the
    /// command's partition, and a `Responder` skips or stops the command
    /// (see [`Node::cancel`](crate::exchange::Node::cancel)).
    ///
    /// # Errors
    /// [`CancelError`] when Redis fails or the broker does not take the
    /// cancel record; nothing is marked then.
    pub async fn cancel(&self, correlation_id: &str) -> Result<Cancellation, CancelError> {
        if !is_valid_correlation_id(correlation_id) {
            return Ok(Cancellation::Unknown);
        }
        self.inner.node.cancel(correlation_id).await
    }

    /// Stops the subscription and flushes the producer. Requests still waiting
    /// run into their timeouts; new ones fail with [`RequesterError::Stopped`].
    pub async fn stop(&self) {
        self.inner.node.stop().await;
    }
}
