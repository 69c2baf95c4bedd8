//! `GET /v1/replies/{id}`: the reply of an earlier request (after a `202` or a
//! `504`), from any replica; `202` while pending (`"status": "cancelled"`
//! once cancelled), `404` when unknown; `Prefer: wait=N` long-polls (at most
//! `max_poll_wait`).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use replyway_shared::record::is_valid_correlation_id;
use replyway_shared::store::{Lookup, PendingInfo};

use crate::auth::RouteAuth;
use crate::observe::Label;
use crate::prefer::Prefer;
use crate::problem::GatewayError;
use crate::reply::{cancelled_response, pending_response, route_reply};
use crate::state::AppState;
use crate::stream::{Delivery, Streamed};

/// Route label of `GET /v1/replies/{id}` in logs and metrics.
pub const REPLIES_ROUTE: &str = "replies";

/// The handler.
pub async fn get_reply(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    tracing::Span::current().record("route", REPLIES_ROUTE);
    let result = match reply_id(&state, id) {
        Ok(id) => lookup(&state, id, &headers).await,
        Err(e) => Err(e),
    };
    answered(&state, result)
}

/// The correlation id of a `/v1/replies/{id}` path, checked: `400` when
/// malformed (also when not percent-encoded UTF-8), unknown when not signed
/// by this deployment (without asking Redis).
///
/// # Errors
/// [`GatewayError::BadRequest`], [`GatewayError::UnknownReply`].
pub fn reply_id(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<String, GatewayError> {
    let malformed = || GatewayError::BadRequest("malformed correlation id".into());
    let Ok(Path(id)) = id else {
        return Err(malformed());
    };
    if !is_valid_correlation_id(&id) {
        return Err(malformed());
    }
    tracing::Span::current().record("correlation_id", id.as_str());
    if state.signer.as_ref().is_some_and(|s| !s.verify(&id)) {
        return Err(GatewayError::UnknownReply(id));
    }
    Ok(id)
}

/// The answer of a `/v1/replies/{id}` handler: a problem counted, and
/// labelled with the route `replies`.
pub fn answered(state: &AppState, result: Result<Response, GatewayError>) -> Response {
    if let Err(e) = &result {
        state.count_error(e);
    }
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(Label::Own(REPLIES_ROUTE));
    response
}

async fn lookup(
    state: &AppState,
    id: String,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let prefer =
        Prefer::from_headers(headers).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let wait = prefer
        .wait
        .map(|w| w.min(state.settings.max_poll_wait))
        .filter(|w| !w.is_zero());
    let delivery = Delivery::of(headers);
    let after = crate::stream::last_event_id(headers)?;
    // A long-poll, or a client that takes a stream, takes its place among
    // the waiting requests before asking Redis.
    let mut waiter = match wait.is_some() || delivery.streams() {
        true => Some(
            state
                .node
                .admit()
                .map_err(|_| GatewayError::Overloaded)?
                .register(&id),
        ),
        false => None,
    };
    let caller = state
        .auth
        .identify(headers)
        .map_err(|e| state.auth_error(e))?
        .map(|p| p.id);
    let lookup = state
        .node
        .store()
        .lookup(&id, waiter.as_ref().map(|_| state.node.id()))
        .await
        .map_err(GatewayError::Redis)?;
    let caller = caller.as_deref();
    let lookup = match lookup {
        Lookup::Reply(_, ref pending) if !owns(state, pending.as_ref(), caller) => Lookup::Unknown,
        Lookup::Pending(ref pending) if !owns(state, Some(pending), caller) => Lookup::Unknown,
        Lookup::Streamed(ref pending) if !owns(state, pending.as_ref(), caller) => Lookup::Unknown,
        other => other,
    };
    let route = |name: Option<&str>| name.and_then(|name| state.routes.named(name));
    let waiting = |pending: &PendingInfo| {
        if pending.cancelled {
            cancelled_response(&id)
        } else {
            pending_response(&id)
        }
    };
    match lookup {
        Lookup::Reply(reply, pending) => route_reply(
            state,
            &id,
            &reply,
            route(pending.as_ref().map(|p| p.route.as_str())),
        ),
        Lookup::Unknown => Err(GatewayError::UnknownReply(id)),
        Lookup::Streamed(pending) => {
            let route = route(pending.as_ref().map(|p| p.route.as_str()));
            streamed(state, id, waiter, route, delivery, after, wait).await
        }
        Lookup::Pending(pending) => match (waiter.as_mut(), wait) {
            (Some(w), Some(wait)) => {
                let reply = state
                    .within_grace(async { tokio::time::timeout(wait, w.reply()).await.ok() })
                    .await;
                match reply {
                    Some(reply) if reply.part.is_some() => {
                        let route = route(Some(&pending.route));
                        streamed(state, id, waiter, route, delivery, after, Some(wait)).await
                    }
                    Some(reply) => route_reply(state, &id, &reply, route(Some(&pending.route))),
                    None => Ok(waiting(&pending)),
                }
            }
            // A streaming client waits for the first part as for the rest.
            (Some(_), None) => {
                streamed(
                    state,
                    id,
                    waiter,
                    route(Some(&pending.route)),
                    delivery,
                    after,
                    None,
                )
                .await
            }
            _ => Ok(waiting(&pending)),
        },
    }
}

/// A streamed reply's answer: the parts as they come to a client that takes
/// a stream (resuming after `after`), the parts joined to one that waits
/// (`wait`), and to one that does not, the parts joined when the last is
/// stored, else `202`.
async fn streamed(
    state: &AppState,
    id: String,
    waiter: Option<replyway_shared::waiters::Waiter>,
    route: Option<&crate::routes::Route>,
    delivery: Delivery,
    after: Option<u32>,
    wait: Option<std::time::Duration>,
) -> Result<Response, GatewayError> {
    let store = state.node.store();
    let Some(waiter) = waiter else {
        return Ok(crate::stream::joined_now(store, &id)
            .await?
            .unwrap_or_else(|| pending_response(&id)));
    };
    let idle = match (delivery.streams(), wait) {
        (false, Some(wait)) => wait,
        _ => route.map_or(state.settings.max_poll_wait, |r| r.timeout),
    };
    let answer = crate::stream::answer(
        Streamed {
            store: store.clone(),
            id: id.clone(),
            waiter,
            after,
            idle,
            total: state.settings.max_stream_duration,
        },
        delivery,
    )
    .await;
    match answer {
        // A long-poll that ran out is answered as pending.
        Err(GatewayError::Timeout(..)) => Ok(pending_response(&id)),
        other => other,
    }
}

/// Whether `caller` may see (or cancel) the request of `pending`: a request
/// belongs to whoever made it; to anyone else its id is unknown (`404`, not
/// `403`, so that ids cannot be probed). Without the pending record the
/// owner is unknown: served only where no route authenticates.
pub fn owns(state: &AppState, pending: Option<&PendingInfo>, caller: Option<&str>) -> bool {
    match pending {
        Some(p) => p.principal.is_none() || p.principal.as_deref() == caller,
        None => !state
            .routes
            .routes()
            .iter()
            .any(|r| r.auth != RouteAuth::None),
    }
}
