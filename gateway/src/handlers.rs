//! The HTTP handlers: configured routes (request–reply over Kafka), reply
//! pick-up, health and readiness.

use std::collections::HashSet;
use std::sync::Arc;
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
use replyway_shared::store::Lookup;

use crate::prefer::Prefer;
use crate::problem::{GatewayError, reply_location};
use crate::routes::{Match, Route};
use crate::{AppState, CORRELATION_ID};

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

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
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
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (route_name, result) = match state.routes.find(&method, uri.path()) {
        Match::Found(route, params) => (
            route.name.as_str(),
            request_reply(&state, route, params, &method, &uri, &headers, body).await,
        ),
        Match::MethodNotAllowed(allowed) => ("-", Err(GatewayError::MethodNotAllowed(allowed))),
        Match::NotFound => ("-", Err(GatewayError::NoRoute(uri.path().to_owned()))),
    };
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let correlation_id = response
        .headers()
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info!(
        route = route_name,
        status = response.status().as_u16(),
        correlation_id,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn request_reply(
    state: &AppState,
    route: &Route,
    params: crate::routes::Params,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    if state.shutdown.is_cancelled() {
        return Err(GatewayError::ShuttingDown);
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
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(body, headers, route.body_limit).await?;

    let id = new_correlation_id();
    let wait = prefer.wait.map_or(route.timeout, |w| w.min(route.timeout));
    // Register before anything can reply, so that the reply cannot be missed.
    let mut waiter = if prefer.respond_async {
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
        )
        .await
        .map_err(GatewayError::Redis)?;

    let request = Request {
        correlation_id: id.clone(),
        reply_to: state.reply_topic.clone(),
        deadline: Some(unix_millis(
            created
                + if prefer.respond_async {
                    state.reply_ttl
                } else {
                    wait
                },
        )),
        content_type,
        method: Some(method.as_str().to_owned()),
        path: Some(uri.path().to_owned()),
        traceparent,
        headers: forwarded,
        key: None,
        body: Bytes::new(),
        params,
    };
    let key = route.key(&id, &request.params);
    let record = FutureRecord::to(&route.topic)
        .key(&key)
        .payload(&body[..])
        .headers(request.record_headers());
    // Bounded here as well as by the producer's message.timeout.ms: librdkafka
    // notices an expired message only when its broker thread wakes, which can be
    // seconds late while the broker is unreachable.
    let bound = state.produce_timeout.min(route.timeout);
    let produced =
        match tokio::time::timeout(bound, state.producer.send(record, Timeout::After(bound))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(GatewayError::Kafka(e)),
            Err(_) => Err(GatewayError::KafkaTimeout(bound.as_millis(), id.clone())),
        };
    if let Err(e) = produced {
        // Not produced: nobody will ever reply, so nothing may stay pending.
        if let Err(cleanup) = state.store.delete_pending(&id).await {
            tracing::warn!(correlation_id = %id, error = %cleanup, "could not remove the pending record of an unproduced request; it expires with its TTL");
        }
        return Err(e);
    }

    let Some(waiter) = waiter.as_mut() else {
        let mut response = pending_response(&id);
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
        return Ok(response);
    };
    match tokio::time::timeout(wait, waiter.reply()).await {
        Ok(reply) => Ok(reply_response(&id, &reply, route.reply_headers.as_ref())),
        Err(_) => Err(GatewayError::Timeout(wait.as_millis(), id)),
    }
}

/// `GET /v1/replies/{id}`: the reply, `202` while pending, `404` when unknown;
/// `Prefer: wait=N` long-polls.
pub async fn get_reply(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    if !is_valid_correlation_id(&id) {
        return Err(GatewayError::BadRequest("malformed correlation id".into()));
    }
    let prefer =
        Prefer::from_headers(&headers).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let wait = prefer
        .wait
        .map(|w| w.min(state.max_poll_wait))
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
    let lookup = state
        .store
        .lookup(&id, waiter.as_ref().map(|_| state.node_id.as_str()))
        .await
        .map_err(GatewayError::Redis)?;
    let allowed = |route: Option<&str>| {
        route
            .and_then(|name| state.routes.routes().iter().find(|r| r.name == name))
            .and_then(|r| r.reply_headers.as_ref())
    };
    match lookup {
        Lookup::Reply(reply, route) => Ok(reply_response(&id, &reply, allowed(route.as_deref()))),
        Lookup::Unknown => Err(GatewayError::UnknownReply(id)),
        Lookup::Pending(route) => match (waiter.as_mut(), wait) {
            (Some(waiter), Some(wait)) => match tokio::time::timeout(wait, waiter.reply()).await {
                Ok(reply) => Ok(reply_response(&id, &reply, allowed(Some(&route)))),
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
    let producer = Arc::clone(&state.producer_for_metadata);
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
