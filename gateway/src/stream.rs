//! Streamed replies over HTTP: a service that answers in parts (`reply-part`,
//! `reply-last`) is streamed to the client as the parts arrive.
//!
//! * `Accept: text/event-stream`: Server-Sent Events, one event per part
//!   (`id:` the part number, `event: part` or `last`, `data:` the body's
//!   lines); `Last-Event-ID` on `GET /v1/replies/{id}` resumes after that
//!   part, on any replica.
//! * `Accept: application/x-ndjson`: one JSON object per part and line.
//! * Any other client gets the parts joined — a JSON array of their bodies —
//!   once the last has arrived.
//!
//! The parts are read from Redis ([`Store::read_parts`]), in order and each
//! once; the node's waiter of the request only says that something arrived.
//! The route's `timeout` applies between parts (then the stream ends with a
//! `timeout` event), `max_stream_duration` to the whole stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use replyway_shared::Reply;
use replyway_shared::store::{PARTS_PER_READ, Store};
use replyway_shared::waiters::Waiter;

use crate::CORRELATION_ID;
use crate::problem::GatewayError;
use crate::reply::BodyJson;

/// How a client takes a streamed reply, by its `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `text/event-stream`.
    Events,
    /// `application/x-ndjson`.
    Ndjson,
    /// Anything else: the parts joined once the last is there.
    Joined,
}

impl Delivery {
    /// The delivery a request's `Accept` asks for (read for every request:
    /// without allocating).
    pub fn of(headers: &HeaderMap) -> Self {
        let (mut events, mut ndjson) = (false, false);
        let types = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.split(';').next().unwrap_or("").trim());
        for media_type in types {
            events |= media_type.eq_ignore_ascii_case("text/event-stream");
            ndjson |= media_type.eq_ignore_ascii_case("application/x-ndjson");
        }
        if events {
            Self::Events
        } else if ndjson {
            Self::Ndjson
        } else {
            Self::Joined
        }
    }

    /// Whether the client takes the parts as they come.
    pub fn streams(self) -> bool {
        self != Self::Joined
    }
}

/// On the response of a streamed reply sent as it comes (the WebSocket
/// sends its NDJSON lines as frames of their own).
#[derive(Debug, Clone, Copy)]
pub struct Streaming;

/// What streaming a reply needs.
pub struct Streamed {
    /// The reply store.
    pub store: Store,
    /// The request's correlation id.
    pub id: String,
    /// This node's waiter of the request (it hears of every part).
    pub waiter: Waiter,
    /// Resume after this part (`Last-Event-ID`).
    pub after: Option<u32>,
    /// Longest wait for the next part.
    pub idle: Duration,
    /// Longest the whole stream may take.
    pub total: Duration,
}

/// The answer for a streamed reply: a stream of parts, or the parts joined.
///
/// # Errors
/// For joined parts: [`GatewayError::Timeout`] when a part does not come
/// within the idle time, [`GatewayError::Redis`] when Redis fails.
pub async fn answer(streamed: Streamed, delivery: Delivery) -> Result<Response, GatewayError> {
    match delivery {
        Delivery::Joined => joined(streamed).await,
        Delivery::Events | Delivery::Ndjson => Ok(stream(streamed, delivery)),
    }
}

/// Every part, once the last is there, as a JSON array of their bodies; the
/// first part's status.
async fn joined(mut s: Streamed) -> Result<Response, GatewayError> {
    let deadline = Instant::now() + s.total;
    let mut parts: Vec<Reply> = Vec::new();
    loop {
        let seen = s.waiter.deliveries();
        let read = s
            .store
            .read_parts(&s.id, parts.last().and_then(|p| p.part))
            .await
            .map_err(GatewayError::Redis)?;
        let full = read.len() == PARTS_PER_READ;
        parts.extend(read);
        if parts.last().is_some_and(|p| p.last) {
            break;
        }
        if full {
            continue;
        }
        let wait = s
            .idle
            .min(deadline.saturating_duration_since(Instant::now()));
        if tokio::time::timeout(wait, s.waiter.changed(seen))
            .await
            .is_err()
        {
            return Err(GatewayError::Timeout(wait.as_millis(), s.id));
        }
    }
    Ok(joined_response(&s.id, &parts))
}

/// The parts joined, when the last of them is stored already; `None` while
/// the service is still sending.
///
/// # Errors
/// [`GatewayError::Redis`] when Redis fails.
pub async fn joined_now(store: &Store, id: &str) -> Result<Option<Response>, GatewayError> {
    let mut parts: Vec<Reply> = Vec::new();
    loop {
        let read = store
            .read_parts(id, parts.last().and_then(|p| p.part))
            .await
            .map_err(GatewayError::Redis)?;
        let full = read.len() == PARTS_PER_READ;
        parts.extend(read);
        if parts.last().is_some_and(|p| p.last) {
            return Ok(Some(joined_response(id, &parts)));
        }
        if !full {
            return Ok(None);
        }
    }
}

/// A JSON array of the parts' bodies, with the first part's status.
fn joined_response(id: &str, parts: &[Reply]) -> Response {
    let status = parts.first().map_or(200, |p| p.status);
    let bodies: Vec<Value> = parts.iter().map(body_value).collect();
    let mut response = Response::new(Body::from(Value::Array(bodies).to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(CORRELATION_ID.clone(), v);
    }
    response
}

/// The parts as they come, as events or lines, from a task of their own
/// that ends with the stream or when the client goes away.
fn stream(s: Streamed, delivery: Delivery) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let id = s.id.clone();
    tokio::spawn(pump(s, delivery, tx));
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let mut response = Response::new(body);
    response.extensions_mut().insert(Streaming);
    let headers = response.headers_mut();
    let content_type = match delivery {
        Delivery::Events => "text/event-stream",
        _ => "application/x-ndjson",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(CORRELATION_ID.clone(), v);
    }
    response
}

async fn pump(mut s: Streamed, delivery: Delivery, tx: mpsc::Sender<Result<Bytes, Infallible>>) {
    let deadline = Instant::now() + s.total;
    let mut after = s.after;
    loop {
        let seen = s.waiter.deliveries();
        let parts = match s.store.read_parts(&s.id, after).await {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(correlation_id = %s.id, error = %e, "reading a streamed reply's parts failed");
                let _ = tx
                    .send(Ok(end(delivery, "error", "the reply store is unavailable")))
                    .await;
                return;
            }
        };
        let full = parts.len() == PARTS_PER_READ;
        for part in parts {
            after = part.part;
            if tx.send(Ok(chunk(delivery, &part))).await.is_err() {
                return;
            }
            if part.last {
                return;
            }
        }
        if full {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = s.idle.min(left);
        if tokio::time::timeout(wait, s.waiter.changed(seen))
            .await
            .is_err()
        {
            let detail = if left <= s.idle {
                format!(
                    "the stream is over max_stream_duration ({} s)",
                    s.total.as_secs()
                )
            } else {
                format!("no part within {} ms", wait.as_millis())
            };
            let _ = tx.send(Ok(end(delivery, "timeout", &detail))).await;
            return;
        }
    }
}

/// A part's body as JSON: the body itself when it is JSON, else its text
/// (bytes that are not UTF-8 as the text they decode to, as an SSE event
/// shows them).
fn body_value(part: &Reply) -> Value {
    match BodyJson::of(part.content_type.as_deref(), &part.body) {
        BodyJson::Json(value) => value,
        BodyJson::Text(text) => Value::String(text),
        BodyJson::Base64(_) => Value::String(String::from_utf8_lossy(&part.body).into_owned()),
    }
}

/// One part as an event or a line.
fn chunk(delivery: Delivery, part: &Reply) -> Bytes {
    let number = part.part.unwrap_or(0);
    match delivery {
        Delivery::Events => {
            let mut event = format!(
                "id: {number}\nevent: {}\n",
                if part.last { "last" } else { "part" }
            );
            for line in String::from_utf8_lossy(&part.body).split('\n') {
                event.push_str("data: ");
                event.push_str(line.trim_end_matches('\r'));
                event.push('\n');
            }
            event.push('\n');
            Bytes::from(event)
        }
        _ => {
            let mut line = json!({
                "part": number,
                "last": part.last,
                "status": part.status,
                "content_type": part.content_type,
                "body": body_value(part),
            })
            .to_string();
            line.push('\n');
            Bytes::from(line)
        }
    }
}

/// The end of a stream that did not end with its last part.
fn end(delivery: Delivery, kind: &str, detail: &str) -> Bytes {
    match delivery {
        Delivery::Events => Bytes::from(format!(
            "event: {kind}\ndata: {}\n\n",
            json!({ "detail": detail })
        )),
        _ => {
            let mut line = json!({ kind: true, "detail": detail }).to_string();
            line.push('\n');
            Bytes::from(line)
        }
    }
}

/// `Last-Event-ID`: the part a resumed stream starts after.
///
/// # Errors
/// [`GatewayError::BadRequest`] when it is not a part number.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u32>, GatewayError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .ok_or_else(|| {
                    GatewayError::BadRequest("Last-Event-ID is not a part number".into())
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_delivery() {
        let of = |accept: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(accept));
            Delivery::of(&h)
        };
        assert_eq!(of("text/event-stream"), Delivery::Events);
        assert_eq!(
            of("application/json, application/x-ndjson;q=0.9"),
            Delivery::Ndjson
        );
        assert_eq!(of("*/*"), Delivery::Joined);
        assert_eq!(Delivery::of(&HeaderMap::new()), Delivery::Joined);
    }

    #[test]
    fn a_part_is_an_event_with_its_number_or_a_line() {
        let part = Reply::with_body(200, "text/plain", "a\nb").as_part(4, false);
        assert_eq!(
            chunk(Delivery::Events, &part),
            Bytes::from("id: 4\nevent: part\ndata: a\ndata: b\n\n")
        );
        let last = Reply::with_body(201, "application/json", r#"{"x":1}"#).as_part(5, true);
        let line: Value = serde_json::from_slice(&chunk(Delivery::Ndjson, &last)).unwrap();
        assert_eq!(
            line,
            json!({"part": 5, "last": true, "status": 201, "content_type": "application/json", "body": {"x": 1}})
        );
        assert!(end(Delivery::Events, "timeout", "no part").starts_with(b"event: timeout\n"));
    }
}
