//! One span, one log line and the metrics of every API request (configured
//! routes, reply pick-ups, and requests that match nothing).
//!
//! The span `gateway.request` continues the client's W3C trace context and
//! carries `route`, `correlation_id` and `status`; handlers fill the first two
//! as they learn them, so everything they log (internal errors included) is on
//! a line with the route and the id. The handler names its route for the
//! metrics with a [`Label`] in the response's extensions.

use std::sync::Arc;
use std::time::Instant;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use tower::{Layer, Service};

use replyway_shared::trace::{TraceContext, continue_trace};

use crate::CORRELATION_ID;
use crate::problem::GatewayError;
use crate::routes::Route;
use crate::state::AppState;

/// Which route answered, for the metrics and the log line.
#[derive(Debug, Clone)]
pub enum Label {
    /// A configured route.
    Route(Arc<Route>),
    /// One of the gateway's own endpoints.
    Own(&'static str),
}

impl Label {
    fn as_str(&self) -> &str {
        match self {
            Self::Route(route) => &route.name,
            Self::Own(name) => name,
        }
    }
}

/// The label of requests that matched no route (`404`, `405`).
const UNMATCHED: &str = "-";

/// The layer of the API router.
///
/// A hand-written service rather than `axum::middleware::from_fn`: its future
/// is the inner future plus the span and a clock, where `from_fn`'s keeps the
/// request's slot, a clone of the inner service and a box of its own — about
/// 1 KB more per waiting request (bench/profile/waiting-heap.sh).
#[derive(Clone)]
pub struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    /// The layer counting into `state`'s metrics.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The observing service around a route.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    /// Runs the request inside its span, which continues the client's trace.
    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let span = tracing::info_span!(
            "gateway.request",
            otel.kind = "server",
            route = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let trace = continue_trace(
            &span,
            TraceContext::from_http_headers(request.headers()).as_ref(),
        );
        request.extensions_mut().insert(trace);
        let inner = span.in_scope(|| self.inner.call(request));
        Observed {
            inner,
            span,
            started,
            state: self.state.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request running inside its span; counts and logs its answer.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        started: Instant,
        state: AppState,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut response = match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if response.status() == StatusCode::METHOD_NOT_ALLOWED
            && !response
                .headers()
                .contains_key(axum::http::header::CONTENT_TYPE)
        {
            // axum's answer for a path served with other methods, as a
            // problem; axum's method router adds `Allow` to it.
            response = GatewayError::MethodNotAllowed(Vec::new()).into_response();
        }
        let label = response.extensions().get::<Label>().cloned();
        let matched = label.is_some()
            || matches!(
                response.status(),
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            );
        if matched {
            let route = label.as_ref().map_or(UNMATCHED, Label::as_str);
            answered(this.state, route, *this.started, &response);
        }
        Poll::Ready(Ok(response))
    }
}

/// Counts and logs one answered request.
fn answered(state: &AppState, route: &str, started: Instant, response: &Response) {
    let latency = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.answered(route, status, latency.as_secs_f64());
    let correlation_id = response
        .headers()
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::Span::current();
    if route == UNMATCHED {
        // Handlers record their own route as soon as they run.
        span.record("route", route);
    }
    span.record("status", status);
    tracing::info!(
        route,
        status,
        correlation_id,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
}
