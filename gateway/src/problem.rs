//! The gateway's errors, answered as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use replyway_shared::store::StoreError;

use crate::reply::reply_location;

/// Everything a gateway request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route for the path.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The path has routes, but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed(Vec<axum::http::Method>),
    /// The body is over the route's limit.
    #[error("request body is larger than the route's limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The body could not be read.
    #[error("request body could not be read")]
    BodyRead,
    /// The body did not arrive within `body_read_timeout`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The idempotency key was used before with another request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// A header or id is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Too many requests wait on this node.
    #[error("too many requests are waiting on this node")]
    Overloaded,
    /// Redis is unreachable.
    #[error("reply store unavailable")]
    Redis(#[source] StoreError),
    /// Kafka did not take the command.
    #[error("broker unavailable")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// Kafka did not acknowledge the command in time; it was not produced, or
    /// (rarely) it is delivered later and its reply can be fetched by this id.
    #[error("the broker did not acknowledge the command within {0} ms")]
    KafkaTimeout(u128, String),
    /// No reply within the wait.
    #[error("no reply within {0} ms")]
    Timeout(u128, String),
    /// Unknown or expired correlation id.
    #[error("no reply or pending request with this id")]
    UnknownReply(String),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// No or invalid credentials; with the `WWW-Authenticate` challenge.
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError, String),
    /// Authenticated without a required scope; with the challenge.
    #[error("{0}")]
    Forbidden(crate::auth::AuthError, String),
    /// Kafka reports that the route's responder group has no active member.
    #[error(
        "no service is consuming this route's commands (consumer group {0} has no active member)"
    )]
    NoResponders(String),
    /// Over the route's rate limit.
    #[error("rate limit exceeded; retry in {} s", .0.retry_after_secs())]
    RateLimited(crate::ratelimit::RateInfo),
    /// The route has a schema and the body is not declared JSON.
    #[error("this route takes application/json bodies (or a +json type), not {0}")]
    NotJson(String),
    /// The body does not match the route's schema.
    #[error("the request body does not match the route's schema ({} violation{})", .0.count, if .0.count == 1 { "" } else { "s" })]
    InvalidBody(crate::schema::Refusal),
    /// The reply does not match the route's `reply_schema`.
    #[error("the service's reply does not match the route's reply schema ({} violation{})", .1.count, if .1.count == 1 { "" } else { "s" })]
    InvalidReply(String, crate::schema::Refusal),
    /// `DELETE` of a request whose reply is stored already.
    #[error("the request is answered already: its reply can be fetched at {}", reply_location(.0))]
    AlreadyAnswered(String),
}

impl GatewayError {
    /// The problem type this error is answered with.
    pub fn kind(&self) -> ProblemKind {
        match self {
            Self::NoRoute(_) => ProblemKind::NoRoute,
            Self::MethodNotAllowed(_) => ProblemKind::MethodNotAllowed,
            Self::BodyTooLarge(_) => ProblemKind::BodyTooLarge,
            Self::BodyRead => ProblemKind::BodyUnreadable,
            Self::BodyTimeout => ProblemKind::BodyTimeout,
            Self::IdempotencyMismatch => ProblemKind::IdempotencyKeyReused,
            Self::BadRequest(_) => ProblemKind::BadRequest,
            Self::Overloaded => ProblemKind::Overloaded,
            Self::Redis(_) => ProblemKind::StoreUnavailable,
            Self::Kafka(_) | Self::KafkaTimeout(..) => ProblemKind::BrokerUnavailable,
            Self::Timeout(..) => ProblemKind::ReplyTimeout,
            Self::UnknownReply(_) => ProblemKind::UnknownReply,
            Self::ShuttingDown => ProblemKind::ShuttingDown,
            Self::Unauthenticated(..) => ProblemKind::Unauthenticated,
            Self::Forbidden(..) => ProblemKind::Forbidden,
            Self::NoResponders(_) => ProblemKind::NoResponders,
            Self::RateLimited(_) => ProblemKind::RateLimited,
            Self::InvalidBody(_) => ProblemKind::InvalidBody,
            Self::NotJson(_) => ProblemKind::UnsupportedMediaType,
            Self::InvalidReply(..) => ProblemKind::InvalidReply,
            Self::AlreadyAnswered(_) => ProblemKind::AlreadyAnswered,
        }
    }
}

/// A problem `type` the gateway answers with: the one list that the errors, the
/// OpenAPI document and the tests take them from. Clients match on the type URI,
/// so a URI, once answered, never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A malformed header, correlation id or `Content-Type`.
    BadRequest,
    /// The request body could not be read.
    BodyUnreadable,
    /// No credentials, or credentials that do not check out.
    Unauthenticated,
    /// Authenticated without a scope the route requires.
    Forbidden,
    /// No route matches the path.
    NoRoute,
    /// No reply or pending request with this correlation id.
    UnknownReply,
    /// Routes match the path, but with other methods.
    MethodNotAllowed,
    /// The body did not arrive within `body_read_timeout`.
    BodyTimeout,
    /// The body is over the route's `body_limit`.
    BodyTooLarge,
    /// `DELETE` of a request whose reply is stored.
    AlreadyAnswered,
    /// The `Idempotency-Key` was used with another request.
    IdempotencyKeyReused,
    /// The route has a schema and the body is not declared JSON.
    UnsupportedMediaType,
    /// The body does not match the route's schema.
    InvalidBody,
    /// Over the route's rate limit.
    RateLimited,
    /// Too many requests wait on this node.
    Overloaded,
    /// Redis is unreachable.
    StoreUnavailable,
    /// Kafka did not take the command, or did not acknowledge it in time.
    BrokerUnavailable,
    /// The gateway is stopping.
    ShuttingDown,
    /// The route's responder group has no active member.
    NoResponders,
    /// The reply does not match the route's `reply_schema`.
    InvalidReply,
    /// No reply within the wait.
    ReplyTimeout,
}

/// Whether a problem's body carries the request's `correlation_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrelationIdField {
    /// Always: the client can fetch the reply, or asked about this id.
    Always,
    /// When the request had reached the point of having one the client can use.
    Sometimes,
    /// Never.
    Never,
}

impl ProblemKind {
    /// Every kind, ordered by status.
    pub const ALL: [Self; 21] = [
        Self::BadRequest,
        Self::BodyUnreadable,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NoRoute,
        Self::UnknownReply,
        Self::MethodNotAllowed,
        Self::BodyTimeout,
        Self::AlreadyAnswered,
        Self::BodyTooLarge,
        Self::UnsupportedMediaType,
        Self::IdempotencyKeyReused,
        Self::InvalidBody,
        Self::RateLimited,
        Self::InvalidReply,
        Self::Overloaded,
        Self::StoreUnavailable,
        Self::BrokerUnavailable,
        Self::ShuttingDown,
        Self::NoResponders,
        Self::ReplyTimeout,
    ];

    /// What every type URI of the gateway starts with.
    pub const PREFIX: &'static str = "urn:replyway:problem:";

    /// The problem's `type`: `urn:replyway:problem:<name>`.
    pub const fn uri(self) -> &'static str {
        match self {
            Self::BadRequest => "urn:replyway:problem:bad-request",
            Self::BodyUnreadable => "urn:replyway:problem:body-unreadable",
            Self::Unauthenticated => "urn:replyway:problem:unauthenticated",
            Self::Forbidden => "urn:replyway:problem:forbidden",
            Self::NoRoute => "urn:replyway:problem:no-route",
            Self::UnknownReply => "urn:replyway:problem:unknown-reply",
            Self::MethodNotAllowed => "urn:replyway:problem:method-not-allowed",
            Self::BodyTimeout => "urn:replyway:problem:body-timeout",
            Self::BodyTooLarge => "urn:replyway:problem:body-too-large",
            Self::IdempotencyKeyReused => "urn:replyway:problem:idempotency-key-reused",
            Self::InvalidBody => "urn:replyway:problem:invalid-body",
            Self::UnsupportedMediaType => "urn:replyway:problem:unsupported-media-type",
            Self::RateLimited => "urn:replyway:problem:rate-limited",
            Self::Overloaded => "urn:replyway:problem:overloaded",
            Self::StoreUnavailable => "urn:replyway:problem:store-unavailable",
            Self::BrokerUnavailable => "urn:replyway:problem:broker-unavailable",
            Self::ShuttingDown => "urn:replyway:problem:shutting-down",
            Self::NoResponders => "urn:replyway:problem:no-responders",
            Self::ReplyTimeout => "urn:replyway:problem:reply-timeout",
            Self::InvalidReply => "urn:replyway:problem:invalid-reply",
            Self::AlreadyAnswered => "urn:replyway:problem:already-answered",
        }
    }

    /// The URI's last part (`no-responders`), as the docs name the kind.
    pub fn name(self) -> &'static str {
        let uri = self.uri();
        uri.strip_prefix(Self::PREFIX).unwrap_or(uri)
    }

    /// The kind whose type URI is `uri`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.uri() == uri)
    }

    /// The HTTP status it is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NoRoute | Self::UnknownReply => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AlreadyAnswered => StatusCode::CONFLICT,
            Self::InvalidReply => StatusCode::BAD_GATEWAY,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused | Self::InvalidBody => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded
            | Self::StoreUnavailable
            | Self::BrokerUnavailable
            | Self::ShuttingDown
            | Self::NoResponders => StatusCode::SERVICE_UNAVAILABLE,
            Self::ReplyTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The problem's `title`: the status's reason phrase.
    pub fn title(self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    /// What it means, in a sentence, for the docs.
    pub const fn description(self) -> &'static str {
        match self {
            Self::BadRequest => {
                "A malformed `Prefer`, `Idempotency-Key`, forwarded header, `Content-Type` or correlation id."
            }
            Self::BodyUnreadable => "The request body could not be read.",
            Self::Unauthenticated => {
                "No credentials, or credentials that do not check out; nothing produced."
            }
            Self::Forbidden => {
                "Authenticated without a scope the route requires; nothing produced."
            }
            Self::NoRoute => "No configured route matches the path.",
            Self::UnknownReply => {
                "No reply or pending request with this correlation id (never issued, expired, or another principal's)."
            }
            Self::MethodNotAllowed => {
                "Routes match the path, but with other methods; `Allow` lists them."
            }
            Self::BodyTimeout => "The request body did not arrive within `body_read_timeout`.",
            Self::BodyTooLarge => "The request body is over the route's `body_limit`.",
            Self::IdempotencyKeyReused => {
                "The `Idempotency-Key` was used on this route with another request."
            }
            Self::UnsupportedMediaType => {
                "The route has a `schema` and the `Content-Type` is not `application/json` or a `+json` type; nothing produced."
            }
            Self::InvalidBody => {
                "The body does not match the route's `schema`; `violations` lists each (JSON Pointer, keyword, message; at most 20, `violation_count` says how many); nothing produced."
            }
            Self::RateLimited => {
                "Over the route's rate limit; `Retry-After` says when to try again; nothing produced."
            }
            Self::Overloaded => "Too many requests wait on this node (`max_waiting`).",
            Self::StoreUnavailable => "Redis is unreachable; nothing produced.",
            Self::BrokerUnavailable => {
                "Kafka did not take the command, or did not acknowledge it in time (then the body names the correlation id)."
            }
            Self::ShuttingDown => "The gateway is stopping.",
            Self::NoResponders => {
                "Kafka reports that the route's `responder_group` has no active member; nothing produced."
            }
            Self::ReplyTimeout => {
                "No reply within the wait; the reply is still collected and can be fetched at `Location`."
            }
            Self::InvalidReply => {
                "The service's 2xx reply does not match the route's `reply_schema` (the service broke its contract); `violations` lists each, as for `invalid-body`."
            }
            Self::AlreadyAnswered => {
                "`DELETE /v1/replies/{id}` of a request whose reply is stored: nothing cancelled; `GET` fetches it."
            }
        }
    }

    /// Whether its body names the request's correlation id.
    pub const fn correlation_id(self) -> CorrelationIdField {
        match self {
            Self::ReplyTimeout
            | Self::UnknownReply
            | Self::InvalidReply
            | Self::AlreadyAnswered => CorrelationIdField::Always,
            // The broker did not acknowledge in time: the command may still be
            // delivered, and its reply stored under this id.
            Self::BrokerUnavailable => CorrelationIdField::Sometimes,
            _ => CorrelationIdField::Never,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<&'a [crate::schema::Violation]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    violation_count: Option<usize>,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = kind.status();
        match &self {
            Self::Redis(e) => tracing::warn!(error = %e, "redis unavailable"),
            Self::Kafka(e) => tracing::warn!(error = %e, "kafka unavailable"),
            Self::KafkaTimeout(ms, id) => {
                tracing::warn!(correlation_id = %id, timeout_ms = %ms, "kafka did not acknowledge in time")
            }
            _ => {}
        }
        let correlation_id = match &self {
            Self::Timeout(_, id)
            | Self::UnknownReply(id)
            | Self::KafkaTimeout(_, id)
            | Self::InvalidReply(id, _)
            | Self::AlreadyAnswered(id) => Some(id.as_str()),
            _ => None,
        };
        let mut detail = self.to_string();
        if let Some(id) = correlation_id.filter(|_| matches!(self, Self::Timeout(..))) {
            detail = format!(
                "{detail}; the reply can be fetched at {} when it arrives",
                reply_location(id)
            );
        }
        let (violations, violation_count) = match &self {
            Self::InvalidBody(refusal) | Self::InvalidReply(_, refusal) => {
                (Some(&refusal.violations[..]), Some(refusal.count))
            }
            _ => (None, None),
        };
        let body = Body {
            kind: kind.uri(),
            title: kind.title(),
            status: status.as_u16(),
            detail,
            correlation_id,
            violations,
            violation_count,
        };
        let mut response = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::Timeout(_, id) = &self
            && let Ok(v) = HeaderValue::from_str(&reply_location(id))
        {
            headers.insert(header::LOCATION, v);
        }
        // The header too, wherever the body names the correlation id.
        if let Some(v) = correlation_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(crate::CORRELATION_ID.clone(), v);
        }
        if let Self::Unauthenticated(_, challenge) | Self::Forbidden(_, challenge) = &self
            && let Ok(v) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Self::RateLimited(info) = &self {
            info.add_headers(headers);
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(info.retry_after_secs()),
            );
        }
        // Empty when axum's router sets `Allow` itself.
        if let Self::MethodNotAllowed(methods) = &self
            && !methods.is_empty()
        {
            let allow = methods
                .iter()
                .map(axum::http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                headers.insert(header::ALLOW, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use std::collections::HashSet;
    use std::time::Duration;

    use axum::http::Method;
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;

    /// Does not compile when `GatewayError` gains a variant: give it a
    /// [`ProblemKind`] (a new one goes into `ProblemKind::ALL` and the OpenAPI
    /// responses that can carry it), then add it here and to `one_of_each`.
    #[allow(dead_code)]
    fn every_error_is_listed(error: &GatewayError) {
        match error {
            GatewayError::NoRoute(_)
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::BodyTooLarge(_)
            | GatewayError::BodyRead
            | GatewayError::BodyTimeout
            | GatewayError::IdempotencyMismatch
            | GatewayError::BadRequest(_)
            | GatewayError::Overloaded
            | GatewayError::Redis(_)
            | GatewayError::Kafka(_)
            | GatewayError::KafkaTimeout(..)
            | GatewayError::Timeout(..)
            | GatewayError::UnknownReply(_)
            | GatewayError::ShuttingDown
            | GatewayError::NoResponders(_)
            | GatewayError::Unauthenticated(..)
            | GatewayError::Forbidden(..)
            | GatewayError::RateLimited(_)
            | GatewayError::InvalidBody(_)
            | GatewayError::InvalidReply(..)
            | GatewayError::AlreadyAnswered(_)
            | GatewayError::NotJson(_) => {}
        }
    }

    fn one_of_each() -> Vec<GatewayError> {
        use replyway_shared::store::{RateDecision, RateLimit};
        vec![
            GatewayError::NoRoute("/x".into()),
            GatewayError::MethodNotAllowed(vec![Method::POST]),
            GatewayError::BodyTooLarge(8),
            GatewayError::BodyRead,
            GatewayError::BodyTimeout,
            GatewayError::IdempotencyMismatch,
            GatewayError::BadRequest("bad".into()),
            GatewayError::Overloaded,
            GatewayError::Redis(StoreError::Timeout(Duration::from_secs(1))),
            GatewayError::Kafka(rdkafka::error::KafkaError::Canceled),
            GatewayError::KafkaTimeout(5, "c-1".into()),
            GatewayError::Timeout(5, "c-1".into()),
            GatewayError::UnknownReply("c-1".into()),
            GatewayError::ShuttingDown,
            GatewayError::NoResponders("echo".into()),
            GatewayError::Unauthenticated(
                crate::auth::AuthError::Missing,
                "Bearer realm=\"replyway\"".into(),
            ),
            GatewayError::Forbidden(
                crate::auth::AuthError::Forbidden("admin".into()),
                "Bearer realm=\"replyway\", error=\"insufficient_scope\"".into(),
            ),
            GatewayError::RateLimited(crate::ratelimit::RateInfo {
                decision: RateDecision {
                    allowed: false,
                    remaining: 0,
                    retry_after: Duration::from_millis(300),
                    reset: Duration::from_secs(1),
                },
                limit: RateLimit {
                    interval: Duration::from_millis(100),
                    burst: 5,
                    window: Duration::from_secs(1),
                },
            }),
            GatewayError::NotJson("text/plain".into()),
            GatewayError::InvalidBody(crate::schema::Refusal {
                violations: vec![crate::schema::Violation {
                    pointer: "/amount".into(),
                    keyword: "type".into(),
                    message: "\"5\" is not of type \"integer\"".into(),
                }],
                count: 1,
            }),
            GatewayError::InvalidReply(
                "c-1".into(),
                crate::schema::Refusal {
                    violations: vec![crate::schema::Violation {
                        pointer: "".into(),
                        keyword: "required".into(),
                        message: "\"id\" is a required property".into(),
                    }],
                    count: 1,
                },
            ),
            GatewayError::AlreadyAnswered("c-1".into()),
        ]
    }

    /// Every error is answered as its kind says (type, title, status, whether
    /// the body names the correlation id), and every kind is answered by some
    /// error.
    #[tokio::test]
    async fn every_error_is_answered_as_its_kind() {
        let mut seen = HashSet::new();
        for error in one_of_each() {
            let kind = error.kind();
            let response = error.into_response();
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            assert_eq!(response.status(), kind.status(), "{kind:?}");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            for key in body.as_object().unwrap().keys() {
                assert!(
                    [
                        "type",
                        "title",
                        "status",
                        "detail",
                        "correlation_id",
                        "violations",
                        "violation_count"
                    ]
                    .contains(&key.as_str()),
                    "{key}"
                );
            }
            assert_eq!(body["type"], kind.uri());
            assert_eq!(body["status"], kind.status().as_u16());
            assert_eq!(body["title"], kind.status().canonical_reason().unwrap());
            assert!(body["detail"].is_string());
            let has_id = body.get("correlation_id").is_some();
            match kind.correlation_id() {
                CorrelationIdField::Always => assert!(has_id, "{kind:?}"),
                CorrelationIdField::Never => assert!(!has_id, "{kind:?}"),
                CorrelationIdField::Sometimes => {}
            }
            assert!(ProblemKind::ALL.contains(&kind), "{kind:?} is not in ALL");
            seen.insert(kind);
        }
        for kind in ProblemKind::ALL {
            assert!(seen.contains(&kind), "{kind:?} is never answered");
        }
    }

    #[test]
    fn kinds_have_distinct_uris_in_status_order() {
        let uris: HashSet<&str> = ProblemKind::ALL.iter().map(|k| k.uri()).collect();
        assert_eq!(uris.len(), ProblemKind::ALL.len());
        for kind in ProblemKind::ALL {
            assert_eq!(
                kind.uri(),
                format!("{}{}", ProblemKind::PREFIX, kind.name())
            );
            assert_eq!(ProblemKind::from_uri(kind.uri()), Some(kind));
            assert!(!kind.description().is_empty());
        }
        assert!(ProblemKind::ALL.is_sorted_by_key(|k| k.status()));
        assert_eq!(ProblemKind::from_uri("urn:replyway:problem:other"), None);
    }

    /// The headers clients and operators rely on, per kind.
    #[tokio::test]
    async fn headers_of_the_answers() {
        let timeout = GatewayError::Timeout(5, "c-1".into()).into_response();
        assert_eq!(timeout.headers()["location"], "/v1/replies/c-1");
        assert_eq!(timeout.headers()["correlation-id"], "c-1");
        let overloaded = GatewayError::Overloaded.into_response();
        assert_eq!(overloaded.headers()["retry-after"], "1");
        let allow = GatewayError::MethodNotAllowed(vec![Method::GET, Method::POST]).into_response();
        assert_eq!(allow.headers()["allow"], "GET, POST");
        let challenge = GatewayError::Unauthenticated(
            crate::auth::AuthError::Missing,
            "Bearer realm=\"replyway\"".into(),
        )
        .into_response();
        assert_eq!(
            challenge.headers()["www-authenticate"],
            "Bearer realm=\"replyway\""
        );
        let limited = one_of_each()
            .into_iter()
            .find(|e| matches!(e, GatewayError::RateLimited(_)))
            .unwrap()
            .into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()["retry-after"], "1");
    }
}
