//! Cancellation: a client that goes away before its reply (on a route with
//! `on_disconnect = "cancel"`), or `DELETE /v1/replies/{id}`. Either way the
//! node cancels the command ([`Node::cancel`]: the pending record is marked,
//! then the cancel record is produced to the command's partition), and the
//! service skips it or stops it. A reply that still comes is stored as usual.
//!
//! [`Node::cancel`]: replyway_shared::exchange::Node::cancel

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use replyway_shared::exchange::{CancelError, Cancellation};
use replyway_shared::store::Lookup;

use crate::metrics::CancelLabel;
use crate::pickup::{REPLIES_ROUTE, answered, owns, reply_id};
use crate::problem::GatewayError;
use crate::reply::cancelled_response;
use crate::routes::Route;
use crate::state::AppState;

/// Why a command is cancelled (the `reason` label of
/// `replyway_gateway_cancellations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client went away before the reply.
    Disconnect,
    /// `DELETE /v1/replies/{id}`.
    Delete,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::Delete => "delete",
        }
    }
}

/// Cancels request `id` of route `route` and counts it when its cancel
/// record was produced.
async fn cancel(
    state: &AppState,
    route: &str,
    id: &str,
    reason: Reason,
) -> Result<Cancellation, CancelError> {
    let cancelled = state.node.cancel(id).await?;
    if cancelled == Cancellation::Cancelled {
        tracing::info!(correlation_id = %id, route, reason = reason.label(), "command cancelled");
        state
            .metrics
            .cancellations
            .get_or_create(&CancelLabel {
                route: route.to_owned(),
                reason: reason.label(),
            })
            .inc();
    }
    Ok(cancelled)
}

/// Cancels a waiting request's command when dropped armed: the request's
/// answer was dropped before it was ready, because its client went away
/// (connection closed, HTTP/2 `RST_STREAM`). Disarmed once the answer is
/// ready, whatever it is (a reply, a timeout, the end of the grace period).
/// It holds the request's id while the request waits, and gives it back
/// when disarmed.
#[must_use = "a guard cancels when dropped armed"]
pub struct OnDisconnect {
    id: String,
    armed: Option<(AppState, Arc<Route>)>,
}

impl OnDisconnect {
    /// A guard for request `id` of `route`; unarmed when the route keeps
    /// commands of clients that went away, or the request does (`keep`: a
    /// WebSocket's command).
    pub fn new(state: &AppState, route: &Arc<Route>, id: String, keep: bool) -> Self {
        let armed = (!keep && route.on_disconnect == crate::routes::OnDisconnect::Cancel)
            .then(|| (state.clone(), Arc::clone(route)));
        Self { id, armed }
    }

    /// The answer is ready: nothing is cancelled. Returns the request's id.
    pub fn disarm(mut self) -> String {
        self.armed = None;
        std::mem::take(&mut self.id)
    }
}

impl Drop for OnDisconnect {
    fn drop(&mut self) {
        let Some((state, route)) = self.armed.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        // Dropped by the server's task when the connection went away, so on
        // the runtime; without one (a test dropping it) there is nothing to
        // cancel on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = cancel(&state, &route.name, &id, Reason::Disconnect).await {
                tracing::warn!(correlation_id = %id, error = %e, "could not cancel the command of a client that went away; the service handles it");
            }
        });
    }
}

/// `DELETE /v1/replies/{id}`: cancels a pending request of the caller.
pub async fn delete_reply(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    tracing::Span::current().record("route", REPLIES_ROUTE);
    let result = match reply_id(&state, id) {
        Ok(id) => cancel_request(&state, id, &headers).await,
        Err(e) => Err(e),
    };
    answered(&state, result)
}

/// `202` `cancelled` when the request was pending (also when it was
/// cancelled before), `409` when it is answered, `404` when it is unknown or
/// another principal's.
async fn cancel_request(
    state: &AppState,
    id: String,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let caller = state
        .auth
        .identify(headers)
        .map_err(|e| state.auth_error(e))?
        .map(|p| p.id);
    let found = state
        .node
        .store()
        .lookup(&id, None)
        .await
        .map_err(GatewayError::Redis)?;
    // Only the request's owner may cancel it; to anyone else it is unknown,
    // as for `GET`.
    let pending = match found {
        Lookup::Reply(_, pending) if owns(state, pending.as_ref(), caller.as_deref()) => {
            return Err(GatewayError::AlreadyAnswered(id));
        }
        Lookup::Pending(pending) if owns(state, Some(&pending), caller.as_deref()) => pending,
        // Streaming: the service may still be told to stop.
        Lookup::Streamed(Some(pending)) if owns(state, Some(&pending), caller.as_deref()) => {
            pending
        }
        _ => return Err(GatewayError::UnknownReply(id)),
    };
    match cancel(state, &pending.route, &id, Reason::Delete).await {
        Ok(Cancellation::Cancelled | Cancellation::Already) => Ok(cancelled_response(&id)),
        Ok(Cancellation::Answered) => Err(GatewayError::AlreadyAnswered(id)),
        Ok(Cancellation::Unknown) => Err(GatewayError::UnknownReply(id)),
        Err(CancelError::Redis(e)) => Err(GatewayError::Redis(e)),
        Err(CancelError::Kafka(e)) => Err(GatewayError::Kafka(e)),
        Err(CancelError::KafkaTimeout(bound)) => {
            Err(GatewayError::KafkaTimeout(bound.as_millis(), id))
        }
    }
}
