//! The Replyway gateway: HTTP in, Kafka command out, reply back through Redis.
//!
//! [`run`] serves the HTTP API on a bound listener until a shutdown token is
//! cancelled; [`router`] builds the axum router alone, for tests.

pub mod config;
pub mod handlers;
pub mod prefer;
pub mod problem;
pub mod routes;
pub mod subscriber;
pub mod waiters;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::HeaderName;
use axum::routing::get;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use replyway_shared::store::{Keys, Store};

pub use config::Settings;

use crate::routes::RouteTable;
use crate::subscriber::Subscriber;
use crate::waiters::Waiters;

/// The `correlation-id` response header.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("correlation-id");

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The state's contents.
pub struct Inner {
    /// This node's id.
    pub node_id: String,
    /// Configured routes.
    pub routes: RouteTable,
    /// Redis operations.
    pub store: Store,
    /// The Kafka producer.
    pub producer: FutureProducer,
    /// The same producer for blocking metadata calls.
    pub producer_for_metadata: Arc<FutureProducer>,
    /// Requests waiting on this node.
    pub waiters: Arc<Waiters>,
    /// Whether the Redis subscription is live.
    pub subscription_live: Arc<AtomicBool>,
    /// `reply-to` of every command.
    pub reply_topic: String,
    /// How long replies are kept.
    pub reply_ttl: Duration,
    /// Longest long-poll.
    pub max_poll_wait: Duration,
    /// Longest wait for the broker's acknowledgement.
    pub produce_timeout: Duration,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
    settings: Settings,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state from validated settings. Connections are made lazily.
    ///
    /// # Errors
    /// When a setting is invalid or a client cannot be created.
    pub fn new(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let routes = settings.validate()?;
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let pool = settings.redis.pool()?;
        let store = Store::new(
            pool,
            Keys::new(&settings.redis.prefix),
            settings.redis.timeout,
            settings.redis.ttl,
        );
        let producer: FutureProducer = settings
            .kafka
            .producer_config()
            .create()
            .context("creating the Kafka producer")?;
        Ok(Self(Arc::new(Inner {
            node_id,
            routes,
            store,
            producer_for_metadata: Arc::new(producer.clone()),
            producer,
            waiters: Waiters::new(settings.max_waiting),
            subscription_live: Arc::new(AtomicBool::new(false)),
            reply_topic: settings.reply_topic.clone(),
            reply_ttl: settings.redis.ttl,
            max_poll_wait: settings.max_poll_wait,
            produce_timeout: settings.produce_timeout,
            shutdown,
            settings,
        })))
    }

    /// The node's subscription task.
    ///
    /// # Errors
    /// When the Redis URL cannot be used.
    pub fn subscriber(&self) -> anyhow::Result<Subscriber> {
        Ok(Subscriber {
            client: self.settings.redis.client()?,
            channel: self.store.keys().channel(&self.node_id),
            waiters: Arc::clone(&self.waiters),
            store: self.store.clone(),
            timeout: self.settings.redis.timeout,
            live: Arc::clone(&self.subscription_live),
        })
    }
}

/// The HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/v1/replies/{id}", get(handlers::get_reply))
        .fallback(handlers::route_request)
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish (each is bounded by its route's timeout).
///
/// # Errors
/// When the settings are invalid or serving fails.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState::new(settings, shutdown.clone())?;
    let subscription = state.subscriber()?;
    let stop_subscription = CancellationToken::new();
    let subscription = tokio::spawn(subscription.run(stop_subscription.clone()));
    tracing::info!(
        listen = %listener.local_addr().context("reading the listener's address")?,
        node_id = %state.node_id,
        routes = state.routes.routes().len(),
        redis = %state.settings.redis.redacted_url(),
        brokers = %state.settings.kafka.brokers,
        "gateway started"
    );
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving HTTP");
    stop_subscription.cancel();
    let _ = subscription.await;
    let producer = state.producer.clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    tracing::info!("gateway stopped");
    served
}
