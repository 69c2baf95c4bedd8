//! What every handler shares: the checked configuration, the node of the
//! correlation, the responder watch and the metrics.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use tokio_util::sync::CancellationToken;

use replyway_shared::correlation::Signer;
use replyway_shared::exchange::Node;

use crate::auth::{AuthError, Authenticator};
use crate::config::{Config, Settings};
use crate::problem::GatewayError;
use crate::responders::Responders;
use crate::routes::RouteTable;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The state's contents.
pub struct Inner {
    /// This node: waiters, subscription, reply store and producer.
    pub node: Node,
    /// Configured routes.
    pub routes: RouteTable,
    /// What the handlers count.
    pub metrics: crate::metrics::Metrics,
    /// Every metric, for `/metrics`.
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// Signs correlation ids, when `correlation_secret` is set.
    pub signer: Option<Signer>,
    /// Checks credentials.
    pub auth: Authenticator,
    /// Active members of the routes' responder groups.
    pub responders: Arc<Responders>,
    /// The OpenAPI document, built once.
    pub openapi: Bytes,
    /// The TLS acceptor, when the API port serves TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
    /// Cancelled when `shutdown_grace` has run out: requests still waiting
    /// answer at once.
    pub grace_over: CancellationToken,
    /// The open WebSocket sessions (the stop waits for them, as for requests).
    pub sessions: tokio_util::task::TaskTracker,
    /// The settings the configuration was built from.
    pub settings: Settings,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The state of a gateway with `config`; nothing is started (see
    /// [`crate::run`]).
    pub fn new(config: Config, shutdown: CancellationToken) -> Self {
        let Config {
            settings,
            routes,
            auth,
            signer,
            tls,
            node,
        } = config;
        let responders = Arc::new(Responders::new(
            routes
                .routes()
                .iter()
                .filter_map(|r| r.responder_group.as_deref()),
        ));
        let (metrics, registry) = crate::metrics::Metrics::register(
            Arc::clone(node.waiters()),
            node.live_flag(),
            node.late_replies(),
            Arc::clone(&responders),
        );
        let openapi = crate::openapi::document(&routes, &settings);
        Self(Arc::new(Inner {
            node,
            routes,
            metrics,
            registry: Arc::new(registry),
            signer,
            auth,
            responders,
            openapi,
            tls,
            shutdown,
            grace_over: CancellationToken::new(),
            sessions: tokio_util::task::TaskTracker::new(),
            settings,
        }))
    }

    /// The answer to a refused authentication: `401` or `403`, with the challenge.
    pub fn auth_error(&self, error: AuthError) -> GatewayError {
        let challenge = self.auth.challenge(&error);
        match error {
            AuthError::Forbidden(_) => GatewayError::Forbidden(error, challenge),
            _ => GatewayError::Unauthenticated(error, challenge),
        }
    }

    /// Runs a request's wait for its reply (`None`: no reply in time), cut
    /// short when the gateway is stopping and its `shutdown_grace` ran out, so
    /// that every waiting request is answered before its connection closes.
    pub async fn within_grace<T>(&self, wait: impl Future<Output = Option<T>>) -> Option<T> {
        tokio::select! {
            reply = wait => reply,
            () = self.grace_over.cancelled() => None,
        }
    }

    /// Counts a Redis or Kafka failure.
    pub fn count_error(&self, error: &GatewayError) {
        match error {
            GatewayError::Redis(_) => {
                self.metrics.redis_errors.inc();
            }
            GatewayError::Kafka(_) | GatewayError::KafkaTimeout(..) => {
                self.metrics.kafka_errors.inc();
            }
            _ => {}
        }
    }
}
