//! The gateway's errors, answered as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use replyway_shared::store::StoreError;

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
    #[error("rate limit exceeded; retry in {} s", retry_after_secs(.0))]
    RateLimited(crate::handlers::RateInfo),
}

fn retry_after_secs(info: &crate::handlers::RateInfo) -> u64 {
    info.decision.retry_after.as_secs() + u64::from(info.decision.retry_after.subsec_nanos() > 0)
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
}

/// Location of a reply.
pub fn reply_location(id: &str) -> String {
    format!("/v1/replies/{id}")
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self {
            Self::NoRoute(_) => (StatusCode::NOT_FOUND, "urn:replyway:problem:no-route"),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "urn:replyway:problem:method-not-allowed",
            ),
            Self::BodyTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:replyway:problem:body-too-large",
            ),
            Self::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "urn:replyway:problem:body-timeout",
            ),
            Self::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:replyway:problem:idempotency-key-reused",
            ),
            Self::BodyRead => (
                StatusCode::BAD_REQUEST,
                "urn:replyway:problem:body-unreadable",
            ),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "urn:replyway:problem:bad-request"),
            Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:replyway:problem:overloaded",
            ),
            Self::Redis(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:replyway:problem:store-unavailable",
            ),
            Self::Kafka(_) | Self::KafkaTimeout(..) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:replyway:problem:broker-unavailable",
            ),
            Self::Timeout(..) => (
                StatusCode::GATEWAY_TIMEOUT,
                "urn:replyway:problem:reply-timeout",
            ),
            Self::UnknownReply(_) => (StatusCode::NOT_FOUND, "urn:replyway:problem:unknown-reply"),
            Self::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:replyway:problem:shutting-down",
            ),
            Self::NoResponders(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:replyway:problem:no-responders",
            ),
            Self::Unauthenticated(..) => (
                StatusCode::UNAUTHORIZED,
                "urn:replyway:problem:unauthenticated",
            ),
            Self::Forbidden(..) => (StatusCode::FORBIDDEN, "urn:replyway:problem:forbidden"),
            Self::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "urn:replyway:problem:rate-limited",
            ),
        };
        match &self {
            Self::Redis(e) => tracing::warn!(error = %e, "redis unavailable"),
            Self::Kafka(e) => tracing::warn!(error = %e, "kafka unavailable"),
            Self::KafkaTimeout(ms, id) => {
                tracing::warn!(correlation_id = %id, timeout_ms = %ms, "kafka did not acknowledge in time")
            }
            _ => {}
        }
        let correlation_id = match &self {
            Self::Timeout(_, id) | Self::UnknownReply(id) | Self::KafkaTimeout(_, id) => {
                Some(id.as_str())
            }
            _ => None,
        };
        let mut detail = self.to_string();
        if let Some(id) = correlation_id.filter(|_| matches!(self, Self::Timeout(..))) {
            detail = format!(
                "{detail}; the reply can be fetched at {} when it arrives",
                reply_location(id)
            );
        }
        let body = Body {
            kind,
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            correlation_id,
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
        if let Self::Timeout(_, id) = &self {
            if let Ok(v) = HeaderValue::from_str(&reply_location(id)) {
                headers.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(id) {
                headers.insert(crate::CORRELATION_ID.clone(), v);
            }
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
                HeaderValue::from(retry_after_secs(info)),
            );
        }
        if let Self::MethodNotAllowed(methods) = &self {
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
