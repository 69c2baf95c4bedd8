//! The gateway's own endpoints: `GET` and `DELETE /v1/replies/{id}`,
//! `/healthz`, `/readyz` and `/openapi.json`.

use utoipa::openapi::path::{Operation, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Required, ResponseBuilder, Type};

use super::parts::{
    all_of, any, challenge_headers, component, constant, fields, human, pending_response,
    prefer_parameter, problem_response, reply_response, retry_after_header, schema_ref, string,
};
use crate::config::Settings;
use crate::problem::ProblemKind;

/// The start of an operation of the gateway's own.
fn own(summary: &str, description: impl Into<String>, id: &str) -> OperationBuilder {
    OperationBuilder::new()
        .tag("gateway")
        .summary(Some(summary))
        .description(Some(description))
        .operation_id(Some(id))
        // Every request is read up to its headers first.
        .response("431", component("responses", "HeadersTooLarge"))
}

/// `GET /v1/replies/{id}`.
/// The headers of a pick-up of a request with a callback, when a route
/// takes callbacks.
fn callback_headers(settings: &Settings) -> super::parts::Headers {
    if !settings.routes.iter().any(|r| r.callbacks.is_some()) {
        return Vec::new();
    }
    vec![
        (
            "callback-state",
            super::parts::header(
                "Of a request with a callback: `pending` (not attempted yet), `retrying`, `delivered` or `failed`.",
                string().enum_values(Some(["pending", "retrying", "delivered", "failed"])),
                false,
            ),
        ),
        (
            "callback-attempts",
            super::parts::header(
                "Of a request with a callback: the delivery attempts made so far.",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
                false,
            ),
        ),
    ]
}

pub(super) fn get_reply(settings: &Settings) -> Operation {
    let id = id_parameter();
    let prefer = prefer_parameter(format!(
        "RFC 7240 preferences; others are ignored. `wait=N`: while the request is pending, wait up to N seconds (capped at {}) for its reply before answering `202`. A `wait` that is not a whole number of seconds (0–4294967295), or a value that is not visible ASCII: `400`.",
        human(settings.max_poll_wait)
    ));
    let operation = own(
        "Fetch a reply",
        format!(
            "The reply of a request by its correlation id, on any gateway replica, while it is stored ({}). Also for requests that timed out (`504`) or were answered `202`. A reply the service streams in parts comes as Server-Sent Events (`Accept: text/event-stream`) or NDJSON (`Accept: application/x-ndjson`) as the parts arrive, else joined as a JSON array once the last is there. The reply of a request made by an authenticated principal goes only to that principal (credentials of any configured kind).",
            human(settings.redis.ttl)
        ),
        "getReply",
    )
    .parameter(id)
    .parameter(prefer)
    .parameter(
        ParameterBuilder::new()
            .name("Last-Event-ID")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "With a streamed reply and `Accept: text/event-stream` (or `application/x-ndjson`): resume after this part. Not a part number: `400`.",
            ))
            .schema(Some(string())),
    )
    .response(
        "default",
        reply_response(
            "The reply, with its status, content type and headers.",
            callback_headers(settings),
        ),
    )
    .response(
        "202",
        pending_response(
            "The request is pending: no reply yet (`status` is `cancelled` once it was cancelled).",
            false,
            callback_headers(settings),
        ),
    )
    .response(
        "400",
        problem_response(
            "A malformed correlation id (also one that is not percent-encoded UTF-8) or `Prefer` (`bad-request`).",
            &[ProblemKind::BadRequest],
            Vec::new(),
        ),
    )
    .response(
        "404",
        problem_response(
            "No reply or pending request with this id: never issued (or, with `correlation_secret`, not signed by the gateway), expired, or made by another principal (`unknown-reply`).",
            &[ProblemKind::UnknownReply],
            Vec::new(),
        ),
    )
    .response(
        "503",
        problem_response(
            "Redis unreachable (`store-unavailable`), or too many requests wait on this node to long-poll (`overloaded`).",
            &[ProblemKind::StoreUnavailable, ProblemKind::Overloaded],
            vec![("retry-after", retry_after_header("the gateway's `503`"))],
        ),
    );
    with_refused_credentials(operation, settings, "").build()
}

/// `DELETE /v1/replies/{id}`.
pub(super) fn delete_reply(settings: &Settings) -> Operation {
    let operation = own(
        "Cancel a request",
        "Cancels a pending request by its correlation id, on any gateway replica: its pending record is marked cancelled and a cancel record (`cancel: true`, same `correlation-id`) is produced to the command's topic with its key, after the command; a service skips the command if it has not started it, or is told to stop it. A reply that still comes is stored and served as usual. Only the principal that made the request may cancel it.",
        "cancelRequest",
    )
    .parameter(id_parameter())
    .response(
        "202",
        ResponseBuilder::new()
            .description("Cancelled (also when it was cancelled before): `status` is `cancelled`; `GET` at `Location` serves the reply if the service still sends one.")
            .header("correlation-id", super::parts::correlation_id_header(true))
            .header("location", super::parts::location_header())
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(schema_ref("PendingReply")))
                    .build(),
            ),
    )
    .response(
        "400",
        problem_response(
            "A malformed correlation id (`bad-request`).",
            &[ProblemKind::BadRequest],
            Vec::new(),
        ),
    )
    .response(
        "404",
        problem_response(
            "No pending request with this id: never issued, expired, or made by another principal (`unknown-reply`).",
            &[ProblemKind::UnknownReply],
            Vec::new(),
        ),
    )
    .response(
        "409",
        problem_response(
            "The reply is stored already: nothing is cancelled; `GET` fetches it (`already-answered`).",
            &[ProblemKind::AlreadyAnswered],
            Vec::new(),
        ),
    )
    .response(
        "503",
        problem_response(
            "Redis unreachable (`store-unavailable`), or the broker did not take the cancel record (`broker-unavailable`): nothing is cancelled, try again.",
            &[ProblemKind::StoreUnavailable, ProblemKind::BrokerUnavailable],
            vec![("retry-after", retry_after_header("the gateway's `503`"))],
        ),
    );
    with_refused_credentials(operation, settings, "").build()
}

/// `GET /v1/ws`, with `websocket.enabled`.
pub(super) fn websocket(settings: &Settings) -> Operation {
    let ws = &settings.websocket;
    let operation = own(
        "Commands over a WebSocket",
        format!(
            "Upgrades (HTTP/1.1 `Upgrade: websocket`) to a socket on which the client sends commands as JSON text frames `{{\"id\", \"route\": \"METHOD /path\", \"headers\", \"body\"}}` — each run through the same routes, authentication (the upgrade request's credentials), rate limits and schemas as an HTTP request — and receives `accepted` (with the correlation id), `reply` (status, headers, body) and `error` frames, matched by `id`. At most {} commands of a socket in flight (then no frame is read until one is answered); frames of at most {} bytes; a ping every {}. A socket that drops cancels nothing: each reply stays fetchable at `/v1/replies/{{correlation_id}}`.",
            ws.max_in_flight,
            ws.max_frame_bytes,
            human(ws.ping_interval)
        ),
        "websocket",
    )
    .response(
        "101",
        ResponseBuilder::new().description("Switching Protocols: the socket is open."),
    )
    .response(
        "400",
        problem_response(
            "Not a WebSocket upgrade (`bad-request`).",
            &[ProblemKind::BadRequest],
            Vec::new(),
        ),
    );
    with_refused_credentials(operation, settings, "; no socket").build()
}

/// `401` for credentials that do not check out; without `[auth]`, credentials
/// are ignored and there is none.
fn with_refused_credentials(
    operation: OperationBuilder,
    settings: &Settings,
    then: &str,
) -> OperationBuilder {
    if settings.auth.api_keys.is_empty() && settings.auth.jwt.is_none() {
        return operation;
    }
    operation.response(
        "401",
        problem_response(
            &format!(
                "Credentials were sent that do not check out as an API key or a JWT (`unauthenticated`){then}."
            ),
            &[ProblemKind::Unauthenticated],
            challenge_headers(),
        ),
    )
}

/// The `{id}` path parameter of `/v1/replies/{id}`.
fn id_parameter() -> ParameterBuilder {
    ParameterBuilder::new()
        .name("id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(
            "The correlation id (the `correlation-id` header of the request's answer).",
        ))
        .schema(Some(schema_ref("CorrelationId")))
}

/// `GET /healthz`.
pub(super) fn healthz() -> Operation {
    own("Liveness", "`ok` while the process runs.", "healthz")
        .response(
            "200",
            ResponseBuilder::new()
                .description("The process runs.")
                .content(
                    "text/plain",
                    ContentBuilder::new()
                        .schema(Some(string().extensions(fields([("const", "ok".into())]))))
                        .build(),
                ),
        )
        .build()
}

/// A readiness answer with `ready` fixed, and when ready every part too.
fn readiness(ready: bool) -> ObjectBuilder {
    let fixed: &[&str] = if ready {
        &["ready", "redis", "subscription", "kafka"]
    } else {
        &["ready"]
    };
    fixed
        .iter()
        .fold(any(), |schema, name| {
            schema.property(*name, constant(ready))
        })
        .extensions(all_of([schema_ref("Readiness")]))
}

/// `GET /readyz`.
pub(super) fn readyz() -> Operation {
    own(
        "Readiness",
        "Ready when Redis answers a `PING`, this node's Redis subscription is live, the broker answers a metadata request (within 2 s) and the gateway is not stopping.",
        "readyz",
    )
    .response(
        "200",
        ResponseBuilder::new().description("Ready.").content(
            "application/json",
            ContentBuilder::new().schema(Some(readiness(true))).build(),
        ),
    )
    .response(
        "503",
        ResponseBuilder::new()
            .description("Not ready: the fields say which part failed (all `true` with `ready: false` while stopping).")
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(readiness(false))).build(),
            ),
    )
    .build()
}

/// `GET /openapi.json`.
pub(super) fn openapi() -> Operation {
    let document = ObjectBuilder::new()
        .schema_type(Type::Object)
        .required("openapi")
        .required("info")
        .required("paths")
        .property("openapi", constant(super::OPENAPI_VERSION));
    own(
        "This document",
        "The OpenAPI 3.1 description of the gateway's endpoints and its configured routes.",
        "openapi",
    )
    .response(
        "200",
        ResponseBuilder::new().description("The document.").content(
            "application/json",
            ContentBuilder::new().schema(Some(document)).build(),
        ),
    )
    .build()
}
