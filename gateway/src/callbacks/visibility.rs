//! Where a request's callback delivery stands, on its pick-up: `GET
//! /v1/replies/{id}` of a request with a callback answers `callback-state`
//! (`pending`: not attempted yet; `retrying`; `delivered`; `failed`) and
//! `callback-attempts` (attempts made).
//!
//! A layer around the router (on gateways with callback routes): after the
//! pick-up answered, one `HMGET` of the callback record. It adds nothing to
//! the gateway's refusals (a `400`, `401`, `404`, `429` or `503` problem), so
//! that nobody but the request's principal learns of its callback.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// The header with the delivery's state.
pub const CALLBACK_STATE: &str = "callback-state";
/// The header with the attempts made.
pub const CALLBACK_ATTEMPTS: &str = "callback-attempts";

/// The path of a pick-up.
const REPLIES: &str = "/v1/replies/";

/// Adds the callback headers to a pick-up's answer (see the module docs).
pub async fn annotate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let id = (matches!(*request.method(), Method::GET | Method::HEAD))
        .then(|| request.uri().path().strip_prefix(REPLIES))
        .flatten()
        .filter(|id| replyway_shared::record::is_valid_correlation_id(id))
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let Some(id) = id else {
        return response;
    };
    if refused(&response) {
        return response;
    }
    match state.node.store().callback_status(&id).await {
        Ok(Some(status)) => {
            let headers = response.headers_mut();
            let shown = status.state.as_deref().unwrap_or("pending");
            if let Ok(v) = HeaderValue::from_str(shown) {
                headers.insert(CALLBACK_STATE, v);
            }
            headers.insert(CALLBACK_ATTEMPTS, HeaderValue::from(status.attempts));
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(correlation_id = %id, error = %e, "callback state unreadable"),
    }
    response
}

/// Whether the answer is one of the gateway's refusals of the pick-up.
fn refused(response: &Response) -> bool {
    let problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    problem
        && matches!(
            response.status(),
            StatusCode::BAD_REQUEST
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
        )
}

/// `router` with [`annotate`] around it, when a route takes callbacks.
pub fn layer(router: axum::Router, state: &AppState) -> axum::Router {
    if state.routes.routes().iter().any(|r| r.callbacks.is_some()) {
        router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            annotate,
        ))
    } else {
        router
    }
}
