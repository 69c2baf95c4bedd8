//! The HTTP handlers: configured routes (request–reply over Kafka), reply
//! pick-up, health and readiness.

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use replyway_shared::Reply;
use replyway_shared::record::{Request, is_valid_correlation_id, new_correlation_id, unix_millis};
use replyway_shared::store::{Claim, Lookup, PendingInfo};

use crate::auth::RouteAuth;
use replyway_shared::trace::{TraceContext, continue_trace};
use tracing::Instrument;

use crate::prefer::Prefer;
use crate::problem::{GatewayError, reply_location};
use crate::routes::{Match, Route};
use crate::{AppState, CORRELATION_ID};
use replyway_shared::waiters::Waiter;

/// Reply headers never passed to the HTTP response: hop-by-hop and framing
/// headers, and the ones the gateway sets itself.
const DENIED_REPLY_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "correlation-id",
    "location",
];

/// The HTTP answer for a reply.
fn reply_response(id: &str, reply: &Reply, allowed: Option<&HashSet<HeaderName>>) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(reply.body.clone()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in &reply.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if DENIED_REPLY_HEADERS.contains(&name.as_str())
            || allowed.is_some_and(|a| !a.contains(&name))
        {
            continue;
        }
        headers.append(name, value);
    }
    if let Some(Ok(ct)) = reply.content_type.as_deref().map(HeaderValue::from_str) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(CORRELATION_ID.clone(), v);
    }
    response
}

/// `202 Accepted` for a request whose reply is not there yet.
fn pending_response(id: &str) -> Response {
    let location = reply_location(id);
    let body =
        serde_json::json!({ "correlation_id": id, "status": "pending", "location": location });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let (Ok(loc), Ok(cid)) = (HeaderValue::from_str(&location), HeaderValue::from_str(id)) {
        headers.insert(header::LOCATION, loc);
        headers.insert(CORRELATION_ID.clone(), cid);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    within: std::time::Duration,
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

fn forwarded_headers(
    route: &Route,
    headers: &HeaderMap,
) -> Result<std::collections::BTreeMap<String, String>, GatewayError> {
    let mut forwarded = std::collections::BTreeMap::new();
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

/// Any request that is not one of the gateway's own endpoints: a configured
/// route, produced as a command and answered with its reply.
pub async fn route_request(
    State(state): State<AppState>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (route_name, result) = match state.routes.find(&method, uri.path()) {
        Match::Found(route, params) => {
            let span = tracing::info_span!(
                "gateway.request",
                otel.kind = "server",
                route = %route.name,
                correlation_id = tracing::field::Empty,
            );
            let trace = continue_trace(&span, incoming_trace(&headers).as_ref());
            let answer = async {
                // Boxed, as submitting is: only the waiting state stays.
                let (principal, rate) =
                    Box::pin(admit(&state, route, &headers, peer.map(|p| p.0.0))).await?;
                let caller = Box::new(Caller { principal, trace });
                let mut response =
                    request_reply(&state, route, params, &method, &uri, &headers, body, caller)
                        .await?;
                if let Some(rate) = rate {
                    rate.add_headers(response.headers_mut());
                }
                Ok(response)
            };
            (route.name.as_str(), answer.instrument(span).await)
        }
        Match::MethodNotAllowed(allowed) => ("-", Err(GatewayError::MethodNotAllowed(allowed))),
        Match::NotFound => ("-", Err(GatewayError::NoRoute(uri.path().to_owned()))),
    };
    match &result {
        Err(GatewayError::Timeout(..)) => {
            state
                .metrics
                .timeouts
                .get_or_create(&crate::metrics::RouteLabel {
                    route: route_name.to_owned(),
                })
                .inc();
        }
        Err(e) => state.count_error(e),
        Ok(_) => {}
    }
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.answered(route_name, started, response)
}

impl AppState {
    /// The answer to a refused authentication: `401` or `403`, with the challenge.
    fn auth_error(&self, error: crate::auth::AuthError) -> GatewayError {
        let challenge = self.auth.challenge(&error);
        match error {
            crate::auth::AuthError::Forbidden(_) => GatewayError::Forbidden(error, challenge),
            _ => GatewayError::Unauthenticated(error, challenge),
        }
    }

    /// Counts and logs an answered request: one line at info with route,
    /// status, correlation id and latency (never bodies).
    fn answered(&self, route: &str, started: Instant, response: Response) -> Response {
        let latency = started.elapsed();
        let status = response.status().as_u16();
        self.metrics.answered(route, status, latency.as_secs_f64());
        let correlation_id = response
            .headers()
            .get(&CORRELATION_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info!(
            route,
            status,
            correlation_id,
            latency_ms = latency.as_secs_f64() * 1000.0,
            "request"
        );
        response
    }

    /// Counts a Redis or Kafka failure.
    fn count_error(&self, error: &GatewayError) {
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

/// A request whose command is on its way.
enum Submitted {
    /// Answered already (async, or a retry whose reply was there).
    Answered(Response),
    /// Waiting for its reply.
    Waiting {
        id: String,
        waiter: Waiter,
        wait: std::time::Duration,
    },
}

/// Who is calling, as far as the gateway knows.
struct Caller {
    /// The authenticated principal, on routes that authenticate.
    principal: Option<crate::auth::Principal>,
    /// This hop's trace context.
    trace: TraceContext,
}

/// A rate limit's decision, for the response headers.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    /// What the limit said.
    pub decision: replyway_shared::store::RateDecision,
    /// The limit.
    pub limit: replyway_shared::store::RateLimit,
}

impl RateInfo {
    /// `RateLimit` and `RateLimit-Policy` (IETF draft) headers.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        let ceil = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let value = format!(
            "limit={}, remaining={}, reset={}",
            self.limit.burst,
            self.decision.remaining,
            ceil(self.decision.reset)
        );
        let policy = format!("{};w={}", self.limit.burst, ceil(self.limit.window));
        for (name, value) in [("ratelimit", value), ("ratelimit-policy", policy)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

/// Authenticates the caller and counts the request against the route's rate
/// limit (one Redis round trip, only on rate-limited routes).
async fn admit(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Result<(Option<crate::auth::Principal>, Option<RateInfo>), GatewayError> {
    let principal = state
        .auth
        .check(route.auth, &route.scopes, headers)
        .map_err(|e| state.auth_error(e))?;
    let Some(limit) = &route.rate_limit else {
        return Ok((principal, None));
    };
    let caller = match &principal {
        Some(p) => format!("principal:{}", p.id),
        None => format!("address:{}", client_address(state, headers, peer)),
    };
    let scope = digest(&[route.name.as_bytes(), caller.as_bytes()]);
    let decision = state
        .store
        .rate_limit(&scope, limit)
        .await
        .map_err(GatewayError::Redis)?;
    let info = RateInfo {
        decision,
        limit: *limit,
    };
    if decision.allowed {
        Ok((principal, Some(info)))
    } else {
        Err(GatewayError::RateLimited(info))
    }
}

/// The client's address: the first address in `client_ip_header` when a
/// trusted proxy sets it, else the connection's peer.
fn client_address(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> String {
    state
        .settings
        .client_ip_header
        .as_ref()
        .and_then(|name| headers.get(name.as_str()))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_owned)
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The client's trace context, when it sent a well-formed one.
fn incoming_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    TraceContext::parse(text("traceparent")?, text("tracestate"))
}

#[allow(clippy::too_many_arguments)]
async fn request_reply(
    state: &AppState,
    route: &Route,
    params: crate::routes::Params,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    caller: Box<Caller>,
) -> Result<Response, GatewayError> {
    // Submitting is boxed and freed before the wait: what stays allocated while
    // a request waits (thousands at once) is only the waiting state.
    match Box::pin(submit(
        state, route, params, method, uri, headers, body, caller,
    ))
    .await?
    {
        Submitted::Answered(response) => Ok(response),
        Submitted::Waiting {
            id,
            mut waiter,
            wait,
        } => match tokio::time::timeout(wait, waiter.reply()).await {
            Ok(reply) => Ok(reply_response(&id, &reply, route.reply_headers.as_ref())),
            Err(_) => Err(GatewayError::Timeout(wait.as_millis(), id)),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    state: &AppState,
    route: &Route,
    params: crate::routes::Params,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    caller: Box<Caller>,
) -> Result<Submitted, GatewayError> {
    let Caller { principal, trace } = *caller;
    let principal = principal.map(|p| p.id);
    if state.shutdown.is_cancelled() {
        return Err(GatewayError::ShuttingDown);
    }
    if let Some(group) = &route.responder_group
        && state.responders.none_active(group)
    {
        return Err(GatewayError::NoResponders(group.clone()));
    }
    let prefer =
        Prefer::from_headers(headers).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let forwarded = forwarded_headers(route, headers)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| GatewayError::BadRequest("content-type is not visible ASCII".into()))?
                .to_owned(),
        ),
        None => None,
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // The authenticated principal, else what a trusted proxy says.
    let client_id = match (&principal, &state.settings.client_id_header) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(name)) => text(name).filter(|v| !v.is_empty()),
        (None, None) => None,
    };
    let body = read_body(
        body,
        headers,
        route.body_limit,
        state.settings.body_read_timeout,
    )
    .await?;

    let mut id = state
        .signer
        .as_ref()
        .map_or_else(new_correlation_id, |s| s.issue());
    tracing::Span::current().record("correlation_id", id.as_str());
    let wait = prefer.wait.map_or(route.timeout, |w| w.min(route.timeout));
    let idempotency = match idempotency_key(headers)? {
        Some(key) => {
            // One principal's key never meets another's.
            let owner = principal.as_deref().unwrap_or_default();
            let scope = digest(&[route.name.as_bytes(), owner.as_bytes(), key.as_bytes()]);
            let fingerprint = digest(&[method.as_str().as_bytes(), uri.path().as_bytes(), &body]);
            // Boxed, as are the other steps of requests with an idempotency
            // key: the common path's future stays smaller.
            let claimed = Box::pin(claim(
                state,
                route,
                &scope,
                &id,
                &fingerprint,
                &prefer,
                wait,
            ))
            .await?;
            match claimed {
                Claimed::Ours => {}
                Claimed::TookOver(first) => {
                    tracing::info!(correlation_id = %first, "taking over an idempotency claim whose command was never produced");
                    tracing::Span::current().record("correlation_id", first.as_str());
                    id = first;
                }
                Claimed::Answered(response) => return Ok(Submitted::Answered(response)),
            }
            Some(scope)
        }
        None => None,
    };
    // Register before anything can reply, so that the reply cannot be missed.
    let waiter = if prefer.respond_async {
        None
    } else {
        Some(
            state
                .waiters
                .register(&id)
                .map_err(|_| GatewayError::Overloaded)?,
        )
    };
    let created = SystemTime::now();
    state
        .store
        .create_pending(
            &id,
            &route.name,
            unix_millis(created),
            waiter.as_ref().map(|_| state.node_id.as_str()),
            principal.as_deref(),
        )
        .await
        .map_err(GatewayError::Redis)?;

    let request = Request {
        correlation_id: id.clone(),
        reply_to: state.settings.reply_topic.clone(),
        // After a `504` the reply can still be picked up for as long as Redis
        // keeps it (`redis.ttl`): only then will nobody collect it.
        deadline: Some(unix_millis(created + state.settings.redis.ttl)),
        content_type,
        method: Some(method.as_str().to_owned()),
        path: Some(uri.path().to_owned()),
        traceparent: Some(trace.traceparent()),
        tracestate: trace.state,
        client_id,
        headers: forwarded,
        key: None,
        body: Bytes::new(),
        params,
    };
    let key = route.key(&id, &request.params);
    let mut record_headers = request.record_headers();
    if route.spring_headers {
        record_headers = request.spring_headers(record_headers);
    }
    let record = FutureRecord::to(&route.topic)
        .key(&key)
        .payload(&body[..])
        .headers(record_headers);
    // Bounded here as well as by the producer's message.timeout.ms: librdkafka
    // notices an expired message only when its broker thread wakes, which can be
    // seconds late while the broker is unreachable.
    let bound = state.settings.produce_timeout.min(route.timeout);
    let produced =
        match tokio::time::timeout(bound, state.producer.send(record, Timeout::After(bound))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(GatewayError::Kafka(e)),
            Err(_) => Err(GatewayError::KafkaTimeout(bound.as_millis(), id.clone())),
        };
    if let Err(e) = produced {
        // Not produced: nobody will ever reply, so nothing may stay pending, and a
        // retry with the same idempotency key must be able to go through.
        if let Err(cleanup) = state.store.delete_pending(&id).await {
            tracing::warn!(correlation_id = %id, error = %cleanup, "could not remove the pending record of an unproduced request; it expires with its TTL");
        }
        if let Some(scope) = &idempotency
            && let Err(cleanup) = state.store.release_idempotency(scope).await
        {
            tracing::warn!(correlation_id = %id, error = %cleanup, "could not release the idempotency key of an unproduced request; it expires with its TTL");
        }
        return Err(e);
    }
    // Produced: from now on a retry follows this request instead of taking over.
    if let Some(scope) = &idempotency
        && let Err(e) = Box::pin(state.store.mark_produced(scope, &id)).await
    {
        tracing::warn!(correlation_id = %id, error = %e, "could not mark the idempotency claim produced; a retry after its lease may produce the command again");
    }

    let Some(waiter) = waiter else {
        let mut response = pending_response(&id);
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
        return Ok(Submitted::Answered(response));
    };
    Ok(Submitted::Waiting { id, waiter, wait })
}

/// What claiming an idempotency key decided for a request.
enum Claimed {
    /// The key is this request's: it goes on as a new request.
    Ours,
    /// The first request's claim expired unproduced: this request produces the
    /// command under the first request's correlation id.
    TookOver(String),
    /// Answered from the first request (its reply, `202`, or a problem).
    Answered(Response),
}

/// Claims the idempotency key `scope` for request `id`, or follows the request
/// that claimed it first.
///
/// A first request that has not marked its command produced may have died
/// between claim and produce: a synchronous retry follows it until its lease
/// ends and then claims again, which takes the key over if it is still
/// unproduced (`idempotency_lease`). A retry of a produced command only ever
/// follows it: nothing is produced twice on purpose.
async fn claim(
    state: &AppState,
    route: &Route,
    scope: &str,
    id: &str,
    fingerprint: &str,
    prefer: &Prefer,
    wait: std::time::Duration,
) -> Result<Claimed, GatewayError> {
    let started = Instant::now();
    let (ttl, lease) = (
        state.settings.idempotency_ttl(),
        state.settings.idempotency_lease(),
    );
    let mut retried = false;
    loop {
        let found = state
            .store
            .claim_idempotency(scope, id, fingerprint, ttl, lease)
            .await
            .map_err(GatewayError::Redis)?;
        let (first, lease_left) = match found {
            Claim::Claimed => return Ok(Claimed::Ours),
            Claim::TookOver(first) => return Ok(Claimed::TookOver(first)),
            Claim::First {
                id: first,
                fingerprint: first_fingerprint,
                lease_left,
            } => {
                if first_fingerprint != fingerprint {
                    return Err(GatewayError::IdempotencyMismatch);
                }
                (first, lease_left)
            }
        };
        let left = wait.saturating_sub(started.elapsed());
        let follow_for = match lease_left {
            // Just after the lease: the claim script reads Redis's clock.
            Some(lease) if !retried && !prefer.respond_async && lease < left => {
                lease + std::time::Duration::from_millis(50)
            }
            _ => left,
        };
        match follow(state, route, first, prefer.respond_async, follow_for).await {
            Err(GatewayError::Timeout(..)) if follow_for < left => retried = true,
            answered => return answered.map(Claimed::Answered),
        }
    }
}

/// Answers a retry (same idempotency key, same body) with the reply of the
/// request that came first, which may still be in flight: nothing is produced.
async fn follow(
    state: &AppState,
    route: &Route,
    id: String,
    respond_async: bool,
    wait: std::time::Duration,
) -> Result<Response, GatewayError> {
    if respond_async {
        return match state
            .store
            .lookup(&id, None)
            .await
            .map_err(GatewayError::Redis)?
        {
            Lookup::Reply(reply, _) => {
                Ok(reply_response(&id, &reply, route.reply_headers.as_ref()))
            }
            _ => Ok(pending_response(&id)),
        };
    }
    let mut waiter = state
        .waiters
        .register(&id)
        .map_err(|_| GatewayError::Overloaded)?;
    // Join unconditionally: the first request may not have written its pending
    // record yet.
    let found = state
        .store
        .rejoin(std::slice::from_ref(&id), &state.node_id)
        .await
        .map_err(GatewayError::Redis)?;
    if let Some((_, reply)) = found.into_iter().next() {
        return Ok(reply_response(&id, &reply, route.reply_headers.as_ref()));
    }
    match tokio::time::timeout(wait, waiter.reply()).await {
        Ok(reply) => Ok(reply_response(&id, &reply, route.reply_headers.as_ref())),
        Err(_) => Err(GatewayError::Timeout(wait.as_millis(), id)),
    }
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Reads the `Idempotency-Key` header: a structured-field string
/// (`"8e03978e-…"`) as the IETF draft has it, or the same characters unquoted.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| GatewayError::BadRequest(format!("Idempotency-Key {why}"));
    if values.next().is_some() {
        return Err(bad("must be sent once"));
    }
    let text = value
        .to_str()
        .map_err(|_| bad("must be visible ASCII"))?
        .trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| bad("has an unterminated quote"))?,
        None => text,
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be 1 to 255 characters"));
    }
    if !key
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(bad("must be printable ASCII without quotes or backslashes"));
    }
    Ok(Some(key.to_owned()))
}

/// Hex SHA-256 of the parts, each length-prefixed so that parts cannot run together.
fn digest(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    replyway_shared::hex::encode(&hasher.finalize())
}

/// `GET /v1/replies/{id}`: the reply, `202` while pending, `404` when unknown;
/// `Prefer: wait=N` long-polls.
pub async fn get_reply(
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = match id {
        Ok(Path(id)) => lookup_reply(&state, id, &headers).await,
        // Not valid percent-encoded UTF-8: a malformed id like any other.
        Err(_) => Err(GatewayError::BadRequest("malformed correlation id".into())),
    };
    if let Err(e) = &result {
        state.count_error(e);
    }
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.answered(REPLIES_ROUTE, started, response)
}

/// Route label of `GET /v1/replies/{id}` in logs and metrics.
pub const REPLIES_ROUTE: &str = "replies";

async fn lookup_reply(
    state: &AppState,
    id: String,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    if !is_valid_correlation_id(&id) {
        return Err(GatewayError::BadRequest("malformed correlation id".into()));
    }
    if state.signer.as_ref().is_some_and(|s| !s.verify(&id)) {
        // Not issued here: unknown, without asking Redis.
        return Err(GatewayError::UnknownReply(id));
    }
    let prefer =
        Prefer::from_headers(headers).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let wait = prefer
        .wait
        .map(|w| w.min(state.settings.max_poll_wait))
        .filter(|w| !w.is_zero());
    let mut waiter = match wait {
        Some(_) => Some(
            state
                .waiters
                .register(&id)
                .map_err(|_| GatewayError::Overloaded)?,
        ),
        None => None,
    };
    let caller = state
        .auth
        .identify(headers)
        .map_err(|e| state.auth_error(e))?
        .map(|p| p.id);
    let lookup = state
        .store
        .lookup(&id, waiter.as_ref().map(|_| state.node_id.as_str()))
        .await
        .map_err(GatewayError::Redis)?;
    // A reply goes only to whoever made the request; to anyone else the id is
    // unknown (404, not 403, so that ids cannot be probed). Without the
    // pending record the owner is unknown: served only where no route
    // authenticates.
    let owned = |pending: Option<&PendingInfo>| match pending {
        Some(p) => p.principal.is_none() || p.principal == caller,
        None => !state
            .routes
            .routes()
            .iter()
            .any(|r| r.auth != RouteAuth::None),
    };
    let lookup = match lookup {
        Lookup::Reply(_, ref pending) if !owned(pending.as_ref()) => Lookup::Unknown,
        Lookup::Pending(ref pending) if !owned(Some(pending)) => Lookup::Unknown,
        other => other,
    };
    let allowed = |route: Option<&str>| {
        route
            .and_then(|name| state.routes.routes().iter().find(|r| r.name == name))
            .and_then(|r| r.reply_headers.as_ref())
    };
    match lookup {
        Lookup::Reply(reply, pending) => Ok(reply_response(
            &id,
            &reply,
            allowed(pending.as_ref().map(|p| p.route.as_str())),
        )),
        Lookup::Unknown => Err(GatewayError::UnknownReply(id)),
        Lookup::Pending(pending) => match (waiter.as_mut(), wait) {
            (Some(waiter), Some(wait)) => match tokio::time::timeout(wait, waiter.reply()).await {
                Ok(reply) => Ok(reply_response(&id, &reply, allowed(Some(&pending.route)))),
                Err(_) => Ok(pending_response(&id)),
            },
            _ => Ok(pending_response(&id)),
        },
    }
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: Redis answers, the subscription is live and Kafka is reachable.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let redis = state.store.ping().await.is_ok();
    let subscription = state
        .subscription_live
        .load(std::sync::atomic::Ordering::SeqCst);
    let producer = state.producer.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_metadata(None, std::time::Duration::from_secs(2))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    let ready = redis && subscription && kafka && !state.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({ "ready": ready, "redis": redis, "subscription": subscription, "kafka": kafka }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &str) -> Result<Option<String>, GatewayError> {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
        idempotency_key(&headers)
    }

    #[test]
    fn idempotency_keys_are_read_strictly() {
        assert_eq!(
            key("\"8e03978e-40d5\"").unwrap().as_deref(),
            Some("8e03978e-40d5")
        );
        assert_eq!(key("plain-key").unwrap().as_deref(), Some("plain-key"));
        assert!(key("\"unterminated").is_err());
        assert!(key("\"\"").is_err());
        assert!(key(&"k".repeat(256)).is_err());
        assert!(key("a\"b").is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn digests_separate_their_parts() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"x"]).len(), 64);
    }
}
