//! `GET /v1/ws`: commands over a WebSocket, with `[websocket] enabled = true`.
//!
//! The client sends JSON text frames `{"id": …, "route": "POST /echo",
//! "headers": {…}, "body": …}`. Each becomes an HTTP request to the same
//! router that serves HTTP clients — route table, authentication (the
//! credentials of the upgrade request), rate limits, schemas, lanes and the
//! request–reply core — and the gateway answers with frames as things happen:
//!
//! * `{"id", "type": "accepted", "correlation_id"}` once the command is
//!   produced;
//! * `{"id", "type": "reply", "status", "headers", "correlation_id", "body"}`
//!   with the reply (or the gateway's problem, as an HTTP client gets it);
//! * `{"id", "type": "part", "part", "last", "status", "content_type",
//!   "body", "correlation_id"}` for each part of a streamed reply, as it
//!   comes;
//! * `{"id", "type": "error", "status", "body"}` for a frame that cannot be
//!   run (not JSON, too large, no `route`): the socket stays open.
//!
//! At most `max_in_flight` commands of a socket run at once; at the bound the
//! gateway reads no further frame (back-pressure). A reply reaches the node
//! that holds the socket through its node channel, as for HTTP. A socket that
//! drops loses nothing: its commands are not cancelled, and each reply is
//! still fetchable at `/v1/replies/{correlation_id}` (the `accepted` frame
//! names it). The gateway's stop drains: the commands in flight are
//! answered, then the socket is closed (1000). A client's close frame is
//! answered at once (no data frame may follow it), its commands left to
//! finish with their replies fetchable. The gateway pings every
//! `ping_interval` and closes a socket it has heard nothing from for two.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts as _, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::observe::Label;
use crate::problem::{GatewayError, ProblemKind};
use crate::reply::BodyJson;
use crate::state::AppState;
use crate::stream::Streaming;

/// Route label of `GET /v1/ws` in logs and metrics.
pub const WEBSOCKET_ROUTE: &str = "websocket";

/// The `[websocket]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// Whether `GET /v1/ws` upgrades (else it is `404`).
    pub enabled: bool,
    /// Most commands of one socket in flight at once.
    pub max_in_flight: usize,
    /// Largest frame a client may send, in bytes; larger: an `error` frame
    /// (past 4 times this the socket is closed, code 1009).
    pub max_frame_bytes: usize,
    /// How often the gateway pings an idle socket.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            max_in_flight: 64,
            max_frame_bytes: 1024 * 1024,
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// On a request made from a socket's frame: its client going away does not
/// cancel its command (the reply stays fetchable).
#[derive(Debug, Clone, Copy)]
pub struct KeepOnDisconnect;

/// On a request made from a socket's frame: told the correlation id once the
/// command is produced.
#[derive(Debug)]
pub struct ProducedNotice(pub std::sync::Mutex<Option<oneshot::Sender<String>>>);

impl Clone for ProducedNotice {
    /// Request extensions must be `Clone`; a clone tells nobody.
    fn clone(&self) -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl ProducedNotice {
    /// Tells the socket that `id` was produced (once).
    pub fn tell(&self, id: &str) {
        let sender = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(id.to_owned());
        }
    }
}

/// A client's frame.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    /// Chosen by the client; echoed in every answer to the frame.
    #[serde(default)]
    id: Value,
    /// `METHOD /path`, e.g. `POST /orders/7`.
    route: String,
    /// Request headers (credentials come from the upgrade request).
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// A string is sent as it is; any other JSON value as JSON.
    #[serde(default)]
    body: Option<Value>,
}

/// `GET /v1/ws`.
pub async fn upgrade(State(state): State<AppState>, request: Request<Body>) -> Response {
    tracing::Span::current().record("route", WEBSOCKET_ROUTE);
    let settings = state.settings.websocket.clone();
    if !settings.enabled {
        let mut response = GatewayError::NoRoute("/v1/ws".into()).into_response();
        response
            .extensions_mut()
            .insert(Label::Own(WEBSOCKET_ROUTE));
        return response;
    }
    let (mut parts, _) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let error = GatewayError::BadRequest(format!("not a WebSocket upgrade: {rejection}"));
            let mut response = error.into_response();
            response
                .extensions_mut()
                .insert(Label::Own(WEBSOCKET_ROUTE));
            return response;
        }
    };
    // Credentials that do not check out are refused before the upgrade.
    if let Err(e) = state.auth.identify(&parts.headers) {
        let mut response = state.auth_error(e).into_response();
        response
            .extensions_mut()
            .insert(Label::Own(WEBSOCKET_ROUTE));
        return response;
    }
    let credentials = credentials(&state, &parts.headers);
    let peer = parts.extensions.get::<crate::PeerAddr>().copied();
    let router = crate::app::router(state.clone());
    let sessions = state.sessions.clone();
    let mut response = upgrade
        .max_message_size(settings.max_frame_bytes.saturating_mul(4))
        .on_upgrade(move |socket| {
            // Tracked, so that the gateway's stop waits for it to drain.
            sessions.track_future(
                Session {
                    state,
                    router,
                    credentials,
                    peer,
                    settings,
                }
                .run(socket),
            )
        });
    response
        .extensions_mut()
        .insert(Label::Own(WEBSOCKET_ROUTE));
    response
}

/// The headers of the upgrade request that every frame's request carries:
/// its credentials, and what the gateway reads of the client (its id and
/// address from a trusted proxy).
fn credentials(state: &AppState, headers: &HeaderMap) -> HeaderMap {
    let mut names: Vec<HeaderName> = vec![header::AUTHORIZATION, state.auth.api_key_header()];
    for name in [
        &state.settings.client_id_header,
        &state.settings.client_ip_header,
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            names.push(name);
        }
    }
    let mut kept = HeaderMap::new();
    for name in names {
        for value in headers.get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// One socket.
struct Session {
    state: AppState,
    router: Router,
    credentials: HeaderMap,
    peer: Option<crate::PeerAddr>,
    settings: WebSocketSettings,
}

impl Session {
    async fn run(self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::channel::<Message>(self.settings.max_in_flight * 2 + 4);
        let ping_every = self.settings.ping_interval.max(Duration::from_millis(100));
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(ping_every);
            ping.tick().await;
            loop {
                let message = tokio::select! {
                    message = outgoing.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    _ = ping.tick() => Message::Ping(Default::default()),
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            // The gateway's close, after everything it had to send; when the
            // client closed first, its close is answered (flushed) instead.
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: Utf8Bytes::from_static("done"),
                })))
                .await;
            let _ = sink.close().await;
        });
        let permits = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let mut running = JoinSet::new();
        let silence = ping_every * 2;
        let clean = loop {
            // Back-pressure: no frame is read while the socket is at its bound.
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break true,
                },
                () = self.state.shutdown.cancelled() => break true,
            };
            let message = tokio::select! {
                message = stream.next() => message,
                () = tokio::time::sleep(silence) => {
                    tracing::info!("closing a WebSocket silent for two ping intervals");
                    break false;
                }
                () = self.state.shutdown.cancelled() => break true,
            };
            while let Some(done) = running.try_join_next() {
                drop(done);
            }
            match message {
                Some(Ok(Message::Text(text))) => self.take(&text, permit, &out, &mut running),
                Some(Ok(Message::Binary(_))) => {
                    send(
                        &out,
                        error_frame(
                            &Value::Null,
                            ProblemKind::BadRequest,
                            "frames are JSON text frames, not binary",
                        ),
                    )
                    .await;
                }
                // Pings are answered by the socket itself; pongs and pings
                // show the client is there.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // The client closed: no data frame may follow its close, so
                // it is answered at once; its commands go on, their replies
                // stored and fetchable.
                Some(Ok(Message::Close(_))) | None => break false,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "WebSocket read failed");
                    break false;
                }
            }
        };
        if clean {
            // The gateway stops: the commands in flight are answered first.
            while running.join_next().await.is_some() {}
        } else {
            // Closed or gone: nobody reads the answers; the replies stay
            // fetchable (the commands carry `KeepOnDisconnect`).
            running.abort_all();
        }
        drop(out);
        let _ = writer.await;
    }

    /// Runs one text frame.
    fn take(
        &self,
        text: &str,
        permit: tokio::sync::OwnedSemaphorePermit,
        out: &mpsc::Sender<Message>,
        running: &mut JoinSet<()>,
    ) {
        let out = out.clone();
        if text.len() > self.settings.max_frame_bytes {
            let detail = format!(
                "a frame is at most {} bytes (websocket.max_frame_bytes)",
                self.settings.max_frame_bytes
            );
            running.spawn(async move {
                send(
                    &out,
                    error_frame(&Value::Null, ProblemKind::BodyTooLarge, &detail),
                )
                .await;
                drop(permit);
            });
            return;
        }
        let frame = match serde_json::from_str::<Frame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                let detail = format!("not a command frame: {e}");
                running.spawn(async move {
                    send(&out, error_frame(&id, ProblemKind::BadRequest, &detail)).await;
                    drop(permit);
                });
                return;
            }
        };
        let request = match self.request(&frame) {
            Ok(request) => request,
            Err(detail) => {
                running.spawn(async move {
                    send(
                        &out,
                        error_frame(&frame.id, ProblemKind::BadRequest, &detail),
                    )
                    .await;
                    drop(permit);
                });
                return;
            }
        };
        let router = self.router.clone();
        running.spawn(async move {
            let (told, produced) = oneshot::channel();
            let mut request = request;
            request
                .extensions_mut()
                .insert(ProducedNotice(std::sync::Mutex::new(Some(told))));
            // The notice is told before the reply can come (the command is
            // produced first), or dropped with the request: `accepted` goes
            // out first, the reply after both are done.
            let accepted = async {
                if let Ok(id) = produced.await {
                    send(
                        &out,
                        json!({ "id": frame.id, "type": "accepted", "correlation_id": id }),
                    )
                    .await;
                }
            };
            let (Ok(response), ()) = tokio::join!(router.oneshot(request), accepted);
            if response.extensions().get::<Streaming>().is_some() {
                send_parts(&out, &frame.id, response).await;
            } else {
                send(&out, reply_frame(&frame.id, response).await).await;
            }
            drop(permit);
        });
    }

    /// The HTTP request of a frame.
    fn request(&self, frame: &Frame) -> Result<Request<Body>, String> {
        let (method, path) = frame
            .route
            .split_once(' ')
            .ok_or_else(|| "`route` is \"METHOD /path\"".to_owned())?;
        let method = Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{method:?} is not an HTTP method"))?;
        let path = path.trim();
        if !path.starts_with('/') {
            return Err("the path of `route` starts with /".into());
        }
        let mut request = Request::builder().method(method).uri(path);
        let headers = request
            .headers_mut()
            .ok_or_else(|| format!("{path:?} is not a path"))?;
        for (name, value) in &frame.headers {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("header {name} is not visible ASCII"))?;
            headers.append(name, value);
        }
        for (name, value) in &self.credentials {
            headers.insert(name.clone(), value.clone());
        }
        // A streamed reply comes as lines, each sent as a frame of its own
        // (unless the frame asks for it otherwise, e.g. joined).
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("application/x-ndjson"));
        let body = match &frame.body {
            None | Some(Value::Null) => Body::empty(),
            Some(Value::String(text)) => Body::from(text.clone()),
            Some(json) => {
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                Body::from(json.to_string())
            }
        };
        let mut request = request
            .body(body)
            .map_err(|e| format!("not a request: {e}"))?;
        request.extensions_mut().insert(KeepOnDisconnect);
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        Ok(request)
    }
}

async fn send(out: &mpsc::Sender<Message>, frame: Value) {
    let _ = out.send(Message::Text(frame.to_string().into())).await;
}

fn error_frame(id: &Value, kind: ProblemKind, detail: &str) -> Value {
    json!({
        "id": id,
        "type": "error",
        "status": kind.status().as_u16(),
        "body": {
            "type": kind.uri(),
            "title": kind.title(),
            "status": kind.status().as_u16(),
            "detail": detail,
        },
    })
}

/// The parts of a streamed reply, each as a `part` frame, as they come.
async fn send_parts(out: &mpsc::Sender<Message>, id: &Value, response: Response) {
    let correlation_id = response
        .headers()
        .get(&crate::CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(mut part) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(fields) = part.as_object_mut() {
                let kind = if fields.contains_key("part") {
                    "part"
                } else {
                    "error"
                };
                fields.insert("id".into(), id.clone());
                fields.insert("type".into(), Value::String(kind.into()));
                fields.insert("correlation_id".into(), json!(correlation_id));
            }
            send(out, part).await;
        }
    }
}

/// The `reply` frame of an HTTP answer: its body as JSON when it is JSON, as
/// text when it is UTF-8, else base64 in `body_base64`.
async fn reply_frame(id: &Value, response: Response) -> Value {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        if let Ok(value) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(value.to_owned()));
        }
    }
    let correlation_id = parts
        .headers
        .get(&crate::CORRELATION_ID)
        .and_then(|v| v.to_str().ok());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut frame = json!({
        "id": id,
        "type": "reply",
        "status": parts.status.as_u16(),
        "headers": headers,
        "correlation_id": correlation_id,
    });
    match BodyJson::of(content_type, &bytes) {
        BodyJson::Json(value) => frame["body"] = value,
        BodyJson::Text(text) => frame["body"] = Value::String(text),
        BodyJson::Base64(encoded) => frame["body_base64"] = Value::String(encoded),
    }
    frame
}
