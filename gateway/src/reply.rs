//! The HTTP answer for a reply (status, body and the reply headers a route lets
//! through; checked against the route's reply schema), and `202 Accepted`
//! while a reply is pending or after its request was cancelled.

use std::collections::HashSet;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use replyway_shared::Reply;

use crate::CORRELATION_ID;
use crate::metrics::RouteLabel;
use crate::problem::GatewayError;
use crate::routes::Route;
use crate::state::AppState;

/// Location of a reply.
pub fn reply_location(id: &str) -> String {
    format!("/v1/replies/{id}")
}

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
pub fn reply_response(id: &str, reply: &Reply, allowed: Option<&HashSet<HeaderName>>) -> Response {
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

/// Whether `content_type` declares JSON: `application/json` or an
/// `application/…+json` type, parameters and case aside (no allocation: it is
/// read for every body a schema checks).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(..12)
            .is_some_and(|t| t.eq_ignore_ascii_case("application/"))
            && essence
                .get(essence.len().saturating_sub(5)..)
                .is_some_and(|t| t.eq_ignore_ascii_case("+json"))
}

/// A reply's body carried inside JSON (a WebSocket frame, a callback, a
/// streamed part): as the JSON it is when declared JSON and it parses, else as
/// its text when UTF-8, else as base64.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyJson {
    /// Declared JSON, and it parses: the value itself.
    Json(serde_json::Value),
    /// UTF-8 text.
    Text(String),
    /// Anything else: standard base64 with padding.
    Base64(String),
}

impl BodyJson {
    /// The body `bytes` of media type `content_type`.
    pub fn of(content_type: Option<&str>, bytes: &[u8]) -> Self {
        if content_type.is_some_and(is_json)
            && let Ok(value) = serde_json::from_slice(bytes)
        {
            return Self::Json(value);
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => {
                use base64::Engine as _;
                Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// The HTTP answer for a reply to a request of `route`: a 2xx reply is
/// checked against the route's `reply_schema` first (a mismatch is `502`
/// `invalid-reply`, counted by route).
///
/// # Errors
/// [`GatewayError::InvalidReply`].
pub fn route_reply(
    state: &AppState,
    id: &str,
    reply: &Reply,
    route: Option<&Route>,
) -> Result<Response, GatewayError> {
    if let Some(route) = route
        && let Some(schema) = &route.reply_schema
        && (200..300).contains(&reply.status)
        && let Err(refusal) = schema.check(&reply.body)
    {
        state
            .metrics
            .invalid_replies
            .get_or_create(&RouteLabel {
                route: route.name.clone(),
            })
            .inc();
        tracing::warn!(correlation_id = %id, route = %route.name, violations = refusal.count, "a reply does not match the route's reply schema");
        return Err(GatewayError::InvalidReply(id.to_owned(), refusal));
    }
    Ok(reply_response(
        id,
        reply,
        route.and_then(|r| r.reply_headers.as_ref()),
    ))
}

/// `202 Accepted` for a request whose reply is not there yet.
pub fn pending_response(id: &str) -> Response {
    accepted(id, "pending")
}

/// `202 Accepted` for a cancelled request without a reply (the service may
/// still send one; it is then served as usual).
pub fn cancelled_response(id: &str) -> Response {
    accepted(id, "cancelled")
}

fn accepted(id: &str, status: &'static str) -> Response {
    let location = reply_location(id);
    let body = serde_json::json!({ "correlation_id": id, "status": status, "location": location });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let (Ok(loc), Ok(cid)) = (HeaderValue::from_str(&location), HeaderValue::from_str(id)) {
        headers.insert(header::LOCATION, loc);
        headers.insert(CORRELATION_ID.clone(), cid);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_application_json_or_an_application_plus_json_type() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in ["text/plain", "text/x+json", "application/jsonl", ""] {
            assert!(!is_json(other), "{other}");
        }
    }

    #[test]
    fn a_body_is_carried_as_json_text_or_base64() {
        let json = Some("application/json");
        assert_eq!(
            BodyJson::of(json, br#"{"a":1}"#),
            BodyJson::Json(serde_json::json!({"a": 1}))
        );
        assert_eq!(BodyJson::of(json, b"{"), BodyJson::Text("{".into()));
        assert_eq!(BodyJson::of(None, b"[1]"), BodyJson::Text("[1]".into()));
        assert_eq!(
            BodyJson::of(json, &[0, 255, 10]),
            BodyJson::Base64("AP8K".into())
        );
    }
}
