//! The API port's server: HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS) with
//! hyper, bounds on reading request heads, and graceful shutdown.

use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::{PeerAddr, Settings};

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

/// Serves `app` on `listener` (TLS when `tls` is set) until `shutdown`; then
/// stops accepting, lets requests in flight — and the WebSocket sessions in
/// `sessions`, which the HTTP server no longer tracks once upgraded — finish
/// for at most `shutdown_grace`; then cancels `grace_over` (the requests
/// still waiting answer at once) and closes what remains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    settings: &Settings,
    shutdown: &CancellationToken,
    grace_over: &CancellationToken,
    sessions: &tokio_util::task::TaskTracker,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

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
    sessions.close();
    let drained = async {
        graceful.shutdown().await;
        sessions.wait().await;
    };
    tokio::pin!(drained);
    tokio::select! {
        () = &mut drained => {}
        () = tokio::time::sleep(settings.shutdown_grace) => {
            // Requests still waiting are answered now (504 with the reply's
            // Location, 202 for long-polls): their replies can be fetched from
            // another replica. The answers get a moment to be written.
            tracing::warn!("shutdown grace period over; answering the requests still waiting");
            grace_over.cancel();
            if tokio::time::timeout(ANSWER_AFTER_GRACE, &mut drained).await.is_err() {
                tracing::warn!("closing the remaining connections");
            }
        }
    }
}

/// How long the answers given when `shutdown_grace` runs out may take to be
/// written before the remaining connections are closed.
const ANSWER_AFTER_GRACE: Duration = Duration::from_secs(1);
