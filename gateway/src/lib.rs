//! The Replyway gateway: HTTP in, Kafka command out, reply back through Redis.
//!
//! [`run`] serves the HTTP API on a bound listener until a shutdown token is
//! cancelled; [`router`] builds the axum router alone, for tests.

pub mod auth;
pub mod config;
pub mod handlers;
pub mod metrics;
pub mod openapi;
pub mod prefer;
pub mod problem;
pub mod responders;
pub mod routes;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::HeaderName;
use axum::response::IntoResponse as _;
use axum::routing::get;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use replyway_shared::store::{Keys, Store};

pub use config::Settings;

use crate::routes::RouteTable;
use replyway_shared::subscriber::Subscriber;
use replyway_shared::waiters::Waiters;

/// Serves one connection until it ends (or graceful shutdown ends it).
async fn serve_connection<I, S>(
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    service: S,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    let connection = builder.serve_connection_with_upgrades(
        TokioIo::new(io),
        TowerToHyperService::new(tower::ServiceExt::map_request(
            service,
            |request: hyper::Request<hyper::body::Incoming>| request.map(axum::body::Body::new),
        )),
    );
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

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
    /// Requests waiting on this node.
    pub waiters: Arc<Waiters>,
    /// Whether the Redis subscription is live.
    pub subscription_live: Arc<AtomicBool>,
    /// Replies heard after their waiters had gone.
    pub late_replies: Arc<AtomicU64>,
    /// What the handlers count.
    pub metrics: crate::metrics::Metrics,
    /// Every metric, for `/metrics`.
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// Signs correlation ids, when `correlation_secret` is set.
    pub signer: Option<replyway_shared::correlation::Signer>,
    /// Checks credentials.
    pub auth: crate::auth::Authenticator,
    /// Active members of the routes' responder groups.
    pub responders: Arc<crate::responders::Responders>,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
    /// The validated settings.
    pub settings: Settings,
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
        let connections = settings.redis.connections()?;
        let store = Store::new(
            connections,
            Keys::new(&settings.redis.prefix),
            settings.redis.timeout,
            settings.redis.ttl,
        );
        let producer: FutureProducer = settings
            .kafka
            .producer_config()
            .create()
            .context("creating the Kafka producer")?;
        let signer = settings.signer()?;
        let auth = crate::auth::Authenticator::new(&settings.auth)?;
        let waiters = Waiters::new(settings.max_waiting);
        let subscription_live = Arc::new(AtomicBool::new(false));
        let late_replies = Arc::new(AtomicU64::new(0));
        let responders = Arc::new(crate::responders::Responders::new(
            routes
                .routes()
                .iter()
                .filter_map(|r| r.responder_group.as_deref()),
        ));
        let (metrics, registry) = crate::metrics::Metrics::register(
            Arc::clone(&waiters),
            Arc::clone(&subscription_live),
            Arc::clone(&late_replies),
            Arc::clone(&responders),
        );
        Ok(Self(Arc::new(Inner {
            node_id,
            routes,
            store,
            producer,
            waiters,
            subscription_live,
            late_replies,
            metrics,
            registry: Arc::new(registry),
            signer,
            auth,
            responders,
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
            node: self.node_id.clone(),
            channel: self.store.keys().channel(&self.node_id),
            waiters: Arc::clone(&self.waiters),
            store: self.store.clone(),
            timeout: self.settings.redis.timeout,
            live: Arc::clone(&self.subscription_live),
            unclaimed: Arc::clone(&self.late_replies),
        })
    }
}

/// The HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/replies/{id}", get(handlers::get_reply))
        .fallback(handlers::route_request)
        .with_state(state)
}

/// `431` when the request's headers together exceed `max_header_bytes` (the
/// HTTP/1 reader bounds its buffer, but a head read at once is not measured
/// there). Checked in the connection's service, ahead of the router, so that a
/// request costs no boxed middleware future while it waits.
fn head_too_large(request: &axum::extract::Request, max: usize) -> bool {
    /// Counts what is written: the URI's length without building its text.
    struct Length(usize);
    impl std::fmt::Write for Length {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut uri = Length(0);
    // Writing to a counter cannot fail.
    let _ = std::fmt::Write::write_fmt(&mut uri, format_args!("{}", request.uri()));
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    headers + uri.0 > max
}

/// The admin port: `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    replyway_shared::admin::router(Arc::clone(&state.registry))
        .route("/readyz", get(handlers::readyz))
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` is cancelled; then stops
/// accepting, lets requests in flight finish for at most `shutdown_grace`, and
/// closes what remains.
///
/// Connections are served with a bound on reading request headers
/// (`header_read_timeout`); handlers bound reading the body (`body_read_timeout`).
///
/// # Errors
/// When the settings are invalid.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState::new(settings, shutdown.clone())?;
    let admin = replyway_shared::admin::AdminServer::start(
        &state.settings.admin_listen,
        admin_router(state.clone()),
    )
    .await?;
    let subscription = state.subscriber()?;
    let stop_subscription = CancellationToken::new();
    let subscription = tokio::spawn(subscription.run(stop_subscription.clone()));
    let responders = tokio::spawn(Arc::clone(&state.responders).watch(
        state.producer.clone(),
        state.settings.responder_check_interval,
        stop_subscription.clone(),
    ));
    tracing::info!(
        listen = %listener.local_addr().context("reading the listener's address")?,
        node_id = %state.node_id,
        routes = state.routes.routes().len(),
        redis = %state.settings.redis.redacted_url(),
        brokers = %state.settings.kafka.brokers,
        "gateway started"
    );
    serve(listener, router(state.clone()), &state.settings, &shutdown).await;
    stop_subscription.cancel();
    let _ = subscription.await;
    let _ = responders.await;
    let producer = state.producer.clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    admin.stop().await;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &Settings,
    shutdown: &CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let tls = match &settings.tls {
        Some(tls) => match tls::acceptor(tls) {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                // Checked at start (validate), so only a file changed since.
                tracing::error!(error = %e, "TLS set-up failed; not serving");
                return;
            }
        },
        None => None,
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Headers beyond this are answered 431.
        .max_buf_size(settings.max_header_bytes.max(8192));
    // HTTP/2 (h2c without TLS, or negotiated with ALPN): many waiting requests
    // share one connection and its buffers.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, max_head) = (app.clone(), settings.max_header_bytes);
        let service = tower::service_fn(move |mut request: axum::extract::Request| {
            if head_too_large(&request, max_head) {
                let response =
                    axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.into_response();
                return futures::future::Either::Left(std::future::ready(Ok(response)));
            }
            request.extensions_mut().insert(PeerAddr(peer));
            futures::future::Either::Right(app.clone().oneshot(request))
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        match &tls {
            None => {
                tokio::spawn(serve_connection(builder, watcher, stream, service));
            }
            Some(acceptor) => {
                let (acceptor, handshake) = (acceptor.clone(), settings.header_read_timeout);
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(builder, watcher, stream, service).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!(grace = ?settings.shutdown_grace, "shutting down: no new connections; finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
    }
}
