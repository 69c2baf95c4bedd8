//! A configured route: the HTTP request becomes a command, produced through
//! the node's [`submit`](replyway_shared::exchange::Node::submit), and is
//! answered with its reply (or `202` with `Prefer: respond-async`).
//!
//! The order of the steps is the order of their cost: a request that will
//! wait takes its place among the node's waiting requests (`max_waiting`)
//! before anything else is read; then authentication and the rate limit; then
//! the body; then Redis and Kafka.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts as _, RawPathParams, Request};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use replyway_shared::exchange::{Command, SubmitError, Submitted as Produced};
use replyway_shared::record::{Request as Record, new_correlation_id};
use replyway_shared::trace::{TraceContext, continue_trace};
use replyway_shared::waiters::Ticket;

use crate::cancel::OnDisconnect;
use crate::idempotency::{Claimed, Claiming, Scope};
use crate::metrics::LaneLabel;
use crate::observe::Label;
use crate::prefer::Prefer;
use crate::problem::GatewayError;
use crate::ratelimit::{self, RateInfo, Refused};
use crate::reply::{pending_response, route_reply};
use crate::routes::Route;
use crate::state::AppState;
use crate::stream::{Delivery, Streamed};
use crate::websocket::{KeepOnDisconnect, ProducedNotice};

/// A configured route as the tower service axum routes its requests to.
///
/// A request is two allocations with lifetimes of their own: its
/// submission ([`submit`]: the request's head, the checks, the Redis and
/// Kafka round trips), freed once the command is produced, and its answer
/// ([`serve`]), which is all that stays allocated while the request waits
/// (thousands at once). An axum handler (`async fn(State, Request)`) would
/// keep the request's head and the handler's own future in the waiting state
/// for the whole wait: 1 800 B a waiting request instead of the answer's
/// size (sizes from `-Zprint-type-sizes`, in docs/benchmark.md).
#[derive(Clone)]
pub struct RouteService {
    app: AppState,
    route: Arc<Route>,
}

impl RouteService {
    /// The service of `route`.
    pub fn new(app: AppState, route: Arc<Route>) -> Self {
        Self { app, route }
    }

    /// The bytes of the two allocations [`call`](tower::Service::call) makes
    /// for `request`: its submission, and its answer (what a waiting request
    /// holds). Nothing is run.
    pub fn allocation_sizes(&self, request: Request) -> (usize, usize) {
        let submission = Box::pin(submit(self.app.clone(), Arc::clone(&self.route), request));
        let submission_size = std::mem::size_of_val(&*submission);
        let answer = serve(self.app.clone(), Arc::clone(&self.route), submission);
        (submission_size, std::mem::size_of_val(&answer))
    }
}

impl tower::Service<Request> for RouteService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let submission = Box::pin(submit(self.app.clone(), Arc::clone(&self.route), request));
        Box::pin(serve(self.app.clone(), Arc::clone(&self.route), submission))
    }
}

/// A request's submission: everything before the wait.
type Submission = Result<(Submitted, Option<RateInfo>), GatewayError>;

/// Answers a request once its submission is done: with the reply, or a
/// problem.
async fn serve(
    app: AppState,
    route: Arc<Route>,
    submission: Pin<Box<impl Future<Output = Submission>>>,
) -> Result<Response, Infallible> {
    tracing::Span::current().record("route", route.name.as_str());
    let result = answer(&app, &route, submission).await;
    match &result {
        Err(GatewayError::Timeout(..)) => {
            app.metrics
                .timeouts
                .get_or_create(&crate::metrics::RouteLabel {
                    route: route.name.clone(),
                })
                .inc();
        }
        Err(e) => app.count_error(e),
        Ok(_) => {}
    }
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(Label::Route(route));
    Ok(response)
}

async fn answer(
    state: &AppState,
    route: &Arc<Route>,
    submission: Pin<Box<impl Future<Output = Submission>>>,
) -> Result<Response, GatewayError> {
    // The submission's allocation is freed here, before the wait.
    let (submitted, rate) = submission.await?;
    let mut response = match submitted {
        Submitted::Answered(response) => response,
        Submitted::Waiting {
            id,
            mut produced,
            wait,
            keep,
            delivery,
        } => {
            let started = std::time::Instant::now();
            // Dropped armed only when this future is: the client went away.
            let on_disconnect = OnDisconnect::new(state, route, id, keep);
            let reply = state.within_grace(produced.wait(wait)).await;
            let id = on_disconnect.disarm();
            // How long it waited: the whole wait, or until the grace ran out.
            let waited = wait.min(started.elapsed());
            match reply {
                Some(reply) if reply.part.is_some() => {
                    // A streamed reply: boxed, so that waiting requests do
                    // not carry its state.
                    let Some(waiter) = produced.into_waiter() else {
                        return Err(GatewayError::Timeout(waited.as_millis(), id));
                    };
                    let streamed = Streamed {
                        store: state.node.store().clone(),
                        id,
                        waiter,
                        after: None,
                        idle: route.timeout,
                        total: state.settings.max_stream_duration,
                    };
                    Box::pin(crate::stream::answer(streamed, delivery)).await?
                }
                Some(reply) => route_reply(state, &id, &reply, Some(route))?,
                None => return Err(GatewayError::Timeout(waited.as_millis(), id)),
            }
        }
    };
    if let Some(rate) = rate {
        rate.add_headers(response.headers_mut());
    }
    Ok(response)
}

/// A request whose command is on its way.
enum Submitted {
    /// Answered already (async, or a retry whose reply was there).
    Answered(Response),
    /// Waiting for its reply.
    Waiting {
        id: String,
        produced: Produced,
        wait: Duration,
        /// Not cancelled when the client goes away.
        keep: bool,
        /// How a streamed reply is answered.
        delivery: Delivery,
    },
}

/// Everything before the wait: the request is read and checked
/// ([`prepare`]), then its command produced ([`produce`]). The two are awaited
/// one after the other so that a request's state holds one of them at a time
/// (the request's head is gone once the command is built).
async fn submit(state: AppState, route: Arc<Route>, request: Request) -> Submission {
    match prepare(&state, &route, request).await? {
        Prepared::Answered(response, rate) => Ok((Submitted::Answered(response), rate)),
        Prepared::Command(ready) => produce(&state, &route, ready).await,
    }
}

/// A request read and checked.
enum Prepared {
    /// Answered already (a retry of an earlier request).
    Answered(Response, Option<RateInfo>),
    /// Its command, ready to produce.
    Command(Box<Ready>),
}

/// What producing a request's command needs.
struct Ready {
    record: Record,
    principal: Option<String>,
    /// The route's lane the command goes to, when it has lanes.
    lane: Option<usize>,
    /// Told the correlation id once the command is produced.
    notice: Option<ProducedNotice>,
    /// Not cancelled when the client goes away.
    keep: bool,
    /// How a streamed reply is answered.
    delivery: Delivery,
    prefer: Prefer,
    wait: Duration,
    /// The place among the waiting requests, when the request waits.
    ticket: Option<Ticket>,
    scope: Option<Scope>,
    rate: Option<RateInfo>,
}

/// Reads and checks the request, in the order of the cost of each step, and
/// claims its idempotency key.
async fn prepare(
    state: &AppState,
    route: &Route,
    request: Request,
) -> Result<Prepared, GatewayError> {
    let (prefer, mut ticket) = admit(state, route, request.headers())?;
    let (mut parts, body) = request.into_parts();
    // A command from a WebSocket's frame: told when produced, and not
    // cancelled when the socket goes (see `websocket`).
    let notice = parts.extensions.remove::<ProducedNotice>();
    let keep = parts.extensions.get::<KeepOnDisconnect>().is_some();
    let delivery = Delivery::of(&parts.headers);
    let params = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(matched) => route.params(&matched),
        Err(RawPathParamsRejection::MissingPathParams(_)) => BTreeMap::new(),
        // Not percent-encoded UTF-8: no route has such a path.
        Err(_) => return Err(GatewayError::NoRoute(parts.uri.path().to_owned())),
    };
    let headers = &parts.headers;
    let caller = state
        .auth
        .check(route.auth, &route.scopes, headers)
        .map_err(|e| state.auth_error(e))?;
    let lane = route
        .lanes
        .as_ref()
        .map(|lanes| lanes.pick(headers, caller.as_ref()));
    let principal = caller.map(|p| p.id);
    let rate = Box::pin(rate_limit(state, route, principal.as_deref(), &parts)).await?;
    let wait = prefer.wait.map_or(route.timeout, |w| w.min(route.timeout));
    let record = record(state, route, principal.as_deref(), &parts, params)?;
    let body = read_body(
        body,
        headers,
        route.body_limit,
        state.settings.body_read_timeout,
    )
    .await?;
    if let Some(schema) = &route.schema {
        check_schema(schema, record.content_type.as_deref(), &body)?;
    }
    // Boxed: only routes with callbacks (or requests naming one) take it.
    let callback =
        if route.callbacks.is_some() || headers.contains_key(crate::callbacks::CALLBACK_URL) {
            // Boxed too: the URL is held across the steps that follow.
            Box::pin(crate::callbacks::request::read(route, &prefer, headers))
                .await?
                .map(Box::new)
        } else {
            None
        };

    let mut id = state
        .signer
        .as_ref()
        .map_or_else(new_correlation_id, |s| s.issue());
    tracing::Span::current().record("correlation_id", id.as_str());
    let scope = match crate::idempotency::key(headers)? {
        Some(key) => {
            let scope = Scope::new(route, principal.as_deref(), &key);
            let claiming = Claiming {
                route,
                scope: &scope,
                id: &id,
                fingerprint: Claiming::fingerprint(&parts.method, parts.uri.path(), &body),
                prefer: &prefer,
                wait,
            };
            // Boxed, as are the other steps of requests with an idempotency
            // key: the common path's future stays smaller.
            match Box::pin(crate::idempotency::claim(state, claiming, &mut ticket)).await? {
                Claimed::Ours => {}
                Claimed::TookOver(first) => {
                    tracing::info!(correlation_id = %first, "taking over an idempotency claim whose command was never produced");
                    tracing::Span::current().record("correlation_id", first.as_str());
                    id = first;
                }
                Claimed::Answered(response) => return Ok(Prepared::Answered(response, rate)),
            }
            Some(scope)
        }
        None => None,
    };
    if let Some(url) = &callback {
        // Before the command is produced: the collector's script finds it
        // when the reply comes.
        if let Err(e) = Box::pin(crate::callbacks::request::record(state, route, &id, url)).await {
            if let Some(scope) = &scope {
                Box::pin(scope.release(state, &id)).await;
            }
            return Err(e);
        }
    }
    let ticket = if prefer.respond_async {
        None
    } else {
        Some(take(state, &mut ticket)?)
    };
    Ok(Prepared::Command(Box::new(Ready {
        record: Record {
            correlation_id: id,
            body,
            ..record
        },
        principal,
        lane,
        notice,
        keep,
        delivery,
        prefer,
        wait,
        ticket,
        scope,
        rate,
    })))
}

/// The checks that cost nothing, before anything is read: the gateway is
/// not stopping, the route's service has members, and a request that will
/// wait takes its place among the waiting requests (`max_waiting`) — at the
/// bound it costs nothing but the `503`. `respond-async` requests hold no
/// waiter and take no place.
fn admit(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
) -> Result<(Prefer, Option<Ticket>), GatewayError> {
    if state.shutdown.is_cancelled() {
        return Err(GatewayError::ShuttingDown);
    }
    let prefer =
        Prefer::from_headers(headers).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let ticket = if prefer.respond_async {
        None
    } else {
        Some(state.node.admit().map_err(|_| GatewayError::Overloaded)?)
    };
    if let Some(group) = &route.responder_group
        && state.responders.none_active(group)
    {
        return Err(GatewayError::NoResponders(group.clone()));
    }
    Ok((prefer, ticket))
}

/// Counts the request against the route's rate limit, when it has one.
async fn rate_limit(
    state: &AppState,
    route: &Route,
    principal: Option<&str>,
    parts: &axum::http::request::Parts,
) -> Result<Option<RateInfo>, GatewayError> {
    let Some(limit) = &route.rate_limit else {
        return Ok(None);
    };
    let caller = ratelimit::caller(
        principal,
        state.settings.client_ip_header.as_deref(),
        &parts.headers,
        parts.extensions.get::<crate::PeerAddr>().map(|p| p.0),
    );
    match ratelimit::check(state.node.store(), &route.name, limit, &caller).await {
        Ok(info) => Ok(Some(info)),
        Err(Refused::Limited(info)) => Err(GatewayError::RateLimited(info)),
        Err(Refused::Redis(e)) => Err(GatewayError::Redis(e)),
    }
}

/// The command's record, without its correlation id and body.
fn record(
    state: &AppState,
    route: &Route,
    principal: Option<&str>,
    parts: &axum::http::request::Parts,
    params: BTreeMap<String, String>,
) -> Result<Record, GatewayError> {
    let headers = &parts.headers;
    let trace = parts
        .extensions
        .get::<TraceContext>()
        .cloned()
        .unwrap_or_else(|| continue_trace(&tracing::Span::current(), None));
    Ok(Record {
        content_type: text_header(headers, header::CONTENT_TYPE.as_str())?,
        method: Some(parts.method.as_str().to_owned()),
        path: Some(parts.uri.path().to_owned()),
        traceparent: Some(trace.traceparent()),
        tracestate: trace.state,
        client_id: client_id(state, principal, headers),
        headers: forwarded_headers(route, headers)?,
        params,
        ..Record::default()
    })
}

/// Produces the command through the node; an idempotency claim is marked
/// produced, or released when the command could not be produced.
///
/// The record goes into the node's submission before the first await, so
/// that the future holds what follows the produce, not the record.
fn produce<'a>(
    state: &'a AppState,
    route: &'a Route,
    ready: Box<Ready>,
) -> impl Future<Output = Submission> + Send + 'a {
    let Ready {
        record,
        principal,
        lane,
        notice,
        keep,
        delivery,
        prefer,
        wait,
        ticket,
        scope,
        rate,
    } = *ready;
    let id = record.correlation_id.clone();
    let key = route.key(&id, &record.params);
    let lane = lane.and_then(|i| route.lanes.as_ref().map(|lanes| lanes.get(i)));
    let command = Command {
        request: record,
        topic: lane.map_or(route.topic.as_str(), |lane| lane.topic),
        key: Bytes::from(key),
        label: &route.name,
        principal,
        spring_headers: route.spring_headers,
        within: route.timeout,
    };
    // `then`, not an async block awaiting the submission: a future captured by
    // an async block is held twice (captured and awaited).
    state
        .node
        .submit(command, ticket)
        .then(move |submitted| async move {
            let produced = match submitted {
                Ok(produced) => produced,
                Err(e) => {
                    if let Some(scope) = &scope {
                        scope.release(state, &id).await;
                    }
                    return Err(match e {
                        SubmitError::Redis(e) => GatewayError::Redis(e),
                        SubmitError::Kafka(e) => GatewayError::Kafka(e),
                        SubmitError::KafkaTimeout(bound) => {
                            GatewayError::KafkaTimeout(bound.as_millis(), id)
                        }
                    });
                }
            };
            if let Some(notice) = &notice {
                notice.tell(&id);
            }
            if let Some(lane) = lane {
                state
                    .metrics
                    .lane_commands
                    .get_or_create(&LaneLabel {
                        route: route.name.clone(),
                        lane: lane.name.to_owned(),
                    })
                    .inc();
            }
            if let Some(scope) = &scope {
                Box::pin(scope.produced(state, &id)).await;
            }
            if prefer.respond_async {
                let mut response = pending_response(&id);
                response.headers_mut().insert(
                    "preference-applied",
                    HeaderValue::from_static("respond-async"),
                );
                return Ok((Submitted::Answered(response), rate));
            }
            Ok((
                Submitted::Waiting {
                    id,
                    produced,
                    wait,
                    keep,
                    delivery,
                },
                rate,
            ))
        })
}

/// The request's ticket, or a new one when a follow used it up.
fn take(state: &AppState, ticket: &mut Option<Ticket>) -> Result<Ticket, GatewayError> {
    match ticket.take() {
        Some(ticket) => Ok(ticket),
        None => state.node.admit().map_err(|_| GatewayError::Overloaded),
    }
}

/// A header's text, when sent; an error when it is not visible ASCII.
fn text_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, GatewayError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| GatewayError::BadRequest(format!("{name} is not visible ASCII")))
        })
        .transpose()
}

/// The record's `client-id`: the authenticated principal, else what a
/// trusted proxy says in `client_id_header`.
fn client_id(state: &AppState, principal: Option<&str>, headers: &HeaderMap) -> Option<String> {
    match (principal, &state.settings.client_id_header) {
        (Some(p), _) => Some(p.to_owned()),
        (None, Some(name)) => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        (None, None) => None,
    }
}

/// The route's `forward_headers` that the request carries, each as one value.
fn forwarded_headers(
    route: &Route,
    headers: &HeaderMap,
) -> Result<BTreeMap<String, String>, GatewayError> {
    let mut forwarded = BTreeMap::new();
    for name in &route.forward_headers {
        let mut values = Vec::new();
        for value in headers.get_all(name) {
            values.push(value.to_str().map_err(|_| {
                GatewayError::BadRequest(format!("header {name} is not visible ASCII"))
            })?);
        }
        if !values.is_empty() {
            forwarded.insert(name.as_str().to_owned(), values.join(", "));
        }
    }
    Ok(forwarded)
}

/// The body against the route's schema: declared JSON (`application/json` or
/// a `+json` type, by the `Content-Type` the record carries), and matching.
fn check_schema(
    schema: &crate::schema::RouteSchema,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), GatewayError> {
    let declared = content_type.unwrap_or("");
    if !crate::reply::is_json(declared) {
        let shown = if declared.is_empty() {
            "no Content-Type"
        } else {
            declared
        };
        return Err(GatewayError::NotJson(shown.to_owned()));
    }
    schema.check(body).map_err(GatewayError::InvalidBody)
}

/// Reads the body within the route's limit and `body_read_timeout`.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    within: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge(limit));
    }
    let collected = tokio::time::timeout(within, Limited::new(body, limit).collect())
        .await
        .map_err(|_| GatewayError::BodyTimeout)?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::BodyTooLarge(limit))
        }
        Err(_) => Err(GatewayError::BodyRead),
    }
}
