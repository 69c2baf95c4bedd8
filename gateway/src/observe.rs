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

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tracing::Instrument as _;

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

/// The middleware: runs the request inside its span, then counts and logs
/// the answer (one line at info with route, status, correlation id and
/// latency; never bodies).
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
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
    let mut response = next.run(request).instrument(span.clone()).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        // axum's answer for a path served with other methods, as a problem;
        // axum's method router adds `Allow` to it.
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
        span.in_scope(|| answered(&state, route, started, &response));
    }
    response
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
