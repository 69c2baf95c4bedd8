//! The Replyway gateway: HTTP in, Kafka command out, reply back through Redis.
//!
//! [`Settings::build`] checks the settings once and builds a [`Config`];
//! [`run`] serves it on listeners the caller bound until a shutdown token is
//! cancelled; [`router`] builds the axum router alone, for tests.
//!
//! One module per capability: [`serving`] (configured routes), [`pickup`]
//! (`GET /v1/replies/{id}`), [`idempotency`], [`ratelimit`], [`auth`],
//! [`health`]; [`app`] puts them on one router, [`observe`] gives every
//! request its span, log line and metrics, [`server`] runs the connections.

pub mod app;
pub mod auth;
pub mod callbacks;
pub mod cancel;
pub mod config;
pub mod digest;
pub mod health;
pub mod idempotency;
pub mod lanes;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod pickup;
pub mod prefer;
pub mod problem;
pub mod ratelimit;
pub mod reply;
pub mod responders;
pub mod routes;
pub mod schema;
pub mod server;
pub mod serving;
pub mod state;
pub mod stream;
pub mod tls;
pub mod websocket;

use std::sync::Arc;

use anyhow::Context;
use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::{admin_router, router};
pub use config::{Config, Settings};
pub use state::AppState;

/// The address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The `correlation-id` response header.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("correlation-id");

/// Serves the gateway: the API on `listener`, the admin endpoints on `admin`
/// (when given), until `shutdown` is cancelled; then stops accepting, lets
/// requests in flight finish for at most `shutdown_grace`, stops the node's
/// subscription and flushes the producer.
///
/// # Errors
/// When a listener's address cannot be read.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState::new(config, shutdown.clone());
    let listen = listener
        .local_addr()
        .context("reading the listener's address")?;
    let admin_addr = admin
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("reading the admin listener's address")?;
    let admin = replyway_shared::admin::AdminServer::start(admin, admin_router(state.clone()));
    state.node.start();
    let stop_watch = CancellationToken::new();
    let responders = tokio::spawn(Arc::clone(&state.responders).watch(
        state.node.producer().clone(),
        state.settings.responder_check_interval,
        stop_watch.clone(),
    ));
    let callbacks = callbacks::worker::spawn(&state, stop_watch.clone());
    tracing::info!(
        %listen,
        admin = %admin_addr.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        node_id = %state.node.id(),
        routes = state.routes.routes().len(),
        redis = %state.settings.redis.redacted_url(),
        brokers = %state.settings.kafka.brokers,
        "gateway started"
    );
    server::serve(
        listener,
        callbacks::visibility::layer(router(state.clone()), &state),
        state.tls.clone(),
        &state.settings,
        &shutdown,
        &state.grace_over,
        &state.sessions,
    )
    .await;
    stop_watch.cancel();
    let _ = responders.await;
    if let Some(callbacks) = callbacks {
        let _ = callbacks.await;
    }
    state.node.stop().await;
    admin.stop().await;
    tracing::info!("gateway stopped");
    Ok(())
}
