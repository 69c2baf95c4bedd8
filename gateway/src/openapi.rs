//! The gateway's OpenAPI 3.1 description of itself, served at `GET /openapi.json`:
//! its own endpoints (`/v1/replies/{id}`, `/healthz`, `/readyz`, `/openapi.json`)
//! and every configured route.
//!
//! A configured route answers with whatever its service replies — any status
//! 200–599, any content type — so every status the gateway answers itself on a
//! route (`202`, `400`, `401`, `403`, `404`, `408`, `413`, `422`, `429`, `503`,
//! `504`) may also be a service's reply. The document says so: such a response is
//! either the gateway's problem, recognisable by its `urn:replyway:problem:` type
//! and then described exactly by the `Problem` schema, or the service's reply,
//! which can be anything.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::RouteAuth;
use crate::config::Settings;
use crate::routes::{Route, RouteTable};

/// Every problem `type` the gateway answers with (`urn:replyway:problem:<kind>`)
/// and its status, as `problem.rs` renders them.
pub const PROBLEM_KINDS: &[(&str, u16)] = &[
    ("bad-request", 400),
    ("body-unreadable", 400),
    ("unauthenticated", 401),
    ("forbidden", 403),
    ("no-route", 404),
    ("unknown-reply", 404),
    ("method-not-allowed", 405),
    ("body-timeout", 408),
    ("body-too-large", 413),
    ("idempotency-key-reused", 422),
    ("rate-limited", 429),
    ("overloaded", 503),
    ("store-unavailable", 503),
    ("broker-unavailable", 503),
    ("shutting-down", 503),
    ("no-responders", 503),
    ("reply-timeout", 504),
];

/// Problem kinds whose body always names the correlation id.
pub const KINDS_WITH_CORRELATION_ID: &[&str] = &["reply-timeout", "unknown-reply"];

/// Problem kinds whose body may name the correlation id: the broker did not
/// acknowledge in time, so the command may still be delivered.
pub const KINDS_MAYBE_WITH_CORRELATION_ID: &[&str] = &["broker-unavailable"];

/// Prefix of the gateway's problem types.
const PROBLEM_PREFIX: &str = "urn:replyway:problem:";

/// A correlation id: what `replyway_shared::record::is_valid_correlation_id` accepts.
const CORRELATION_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// A header value `HeaderValue::to_str` accepts: tab and visible ASCII.
const VISIBLE_ASCII_PATTERN: &str = "^[\\t -~]*$";

/// What `handlers::idempotency_key` accepts: after trimming, 1–255 printable ASCII
/// characters without `"` or `\`, optionally in double quotes (a structured-field
/// string).
const IDEMPOTENCY_KEY_PATTERN: &str = "^[\\t ]*(?:\"[ !#-\\[\\]-~]{1,255}\"|[!#-\\[\\]-~](?:[ !#-\\[\\]-~]{0,253}[!#-\\[\\]-~])?)[\\t ]*$";

/// The gateway's own paths, matched before any configured route.
const OWN_PATHS: &[&str] = &["/healthz", "/readyz", "/openapi.json", "/v1/replies/{id}"];

/// Header parameters OpenAPI ignores (they are described by other means).
const IGNORED_HEADER_PARAMETERS: &[&str] = &["accept", "content-type", "authorization"];

/// `GET /openapi.json`: the document, as JSON.
pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    Json(document(&state.settings, &state.routes))
}

/// The OpenAPI 3.1 document of the gateway with these settings and routes.
pub fn document(settings: &Settings, routes: &RouteTable) -> Value {
    let mut paths = Map::new();
    paths.insert(
        "/v1/replies/{id}".into(),
        json!({ "get": get_reply(settings) }),
    );
    for (path, mut operation) in [
        ("/healthz", healthz()),
        ("/readyz", readyz()),
        ("/openapi.json", openapi()),
    ] {
        operation["responses"]["431"] = reference("responses", "HeadersTooLarge");
        paths.insert(path.into(), json!({ "get": operation }));
    }

    let mut notes = Vec::new();
    // Path keys of configured routes, and the patterns of the routes documented.
    let mut documented: Vec<(String, Method, String)> = Vec::new();
    let mut operation_ids = Vec::new();
    for route in routes.routes() {
        let pattern = route.path_pattern();
        let mut label = format!("`{} {pattern}`", route.method);
        if route.name != format!("{} {pattern}", route.method) {
            label.push_str(&format!(" (route {:?})", route.name));
        }
        let Some(method) = documentable_method(&route.method) else {
            notes.push(format!(
                "{label} is served, but OpenAPI 3.1 has no field for the method {}.",
                route.method
            ));
            continue;
        };
        if OWN_PATHS.contains(&pattern.as_str()) {
            notes.push(format!(
                "{label} is never reached: the gateway's own endpoint has that path."
            ));
            continue;
        }
        if let Some((_, _, earlier)) = documented
            .iter()
            .find(|(_, m, p)| *m == route.method && covers(p, &pattern))
        {
            notes.push(format!(
                "{label} is never reached: the earlier route `{} {earlier}` matches every path it would.",
                route.method
            ));
            continue;
        }
        // OpenAPI treats paths that differ only in parameter names as the same
        // path: such routes share the first one's path key.
        let key = documented
            .iter()
            .map(|(k, _, _)| k)
            .find(|k| shape(k) == shape(&pattern))
            .cloned()
            .unwrap_or_else(|| pattern.clone());
        let operation_id = unique_operation_id(&route.method, &pattern, &mut operation_ids);
        let operation = route_operation(settings, route, &key, &operation_id);
        let item = paths
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(method.into(), operation);
        }
        documented.push((key, route.method.clone(), pattern));
    }

    let mut description = String::from(DESCRIPTION);
    if !notes.is_empty() {
        description.push_str("\n\nConfigured routes not described as operations:\n");
        for note in &notes {
            description.push_str("\n* ");
            description.push_str(note);
        }
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Replyway gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "tags": [
            { "name": "routes", "description": "The configured routes: each request becomes a Kafka command, answered with its service's reply." },
            { "name": "gateway", "description": "The gateway's own endpoints." },
        ],
        "paths": paths,
        "components": components(settings, routes),
    })
}

const DESCRIPTION: &str = "\
Replyway is a request–reply gateway for Kafka. A request to a configured route is \
produced to the route's Kafka topic as a command with a fresh correlation id; the \
gateway waits for the service's reply and answers with it (its status, content type, \
headers and body), or answers `202 Accepted` at once with `Prefer: respond-async`, \
after which the reply is fetched from `GET /v1/replies/{id}` on any gateway replica.

Every status a route answers may be the service's: a response listed with a status is \
either the gateway's own answer, an RFC 9457 `application/problem+json` body whose \
`type` starts with `urn:replyway:problem:` (schema `Problem`), or a service's reply \
with that status, which can have any content type and body.

Reply headers reach the client unless they are hop-by-hop or framing headers or set by \
the gateway (`correlation-id`, `location`, `content-type` comes from the reply's own \
content type); a route may narrow this to a list.

A path no route matches: `404` problem (`no-route`). A path that routes match with \
other methods: `405` problem (`method-not-allowed`) with `Allow`; the gateway's own \
endpoints answer other methods `405` with `Allow` and no body. Request headers not \
received within the header read timeout: the connection is closed. The gateway speaks \
HTTP/1.1 and HTTP/2 (without TLS by prior knowledge, or negotiated over TLS when \
the gateway has a certificate).";

/// The OpenAPI field of a method, when OpenAPI 3.1 has one.
fn documentable_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "get",
        Method::PUT => "put",
        Method::POST => "post",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        Method::HEAD => "head",
        Method::PATCH => "patch",
        Method::TRACE => "trace",
        _ => return None,
    })
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

/// A pattern with its parameter names left out: patterns of one shape match the
/// same paths.
fn shape(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| if is_param(s) { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether pattern `a` matches every path pattern `b` matches.
fn covers(a: &str, b: &str) -> bool {
    let (a, b): (Vec<_>, Vec<_>) = (a.split('/').collect(), b.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| is_param(x) || (!is_param(y) && x == y))
}

fn unique_operation_id(method: &Method, pattern: &str, taken: &mut Vec<String>) -> String {
    let mut base = method.as_str().to_ascii_lowercase();
    for c in pattern.chars() {
        if c.is_ascii_alphanumeric() {
            base.push(c.to_ascii_lowercase());
        } else if !base.ends_with('_') {
            base.push('_');
        }
    }
    let base = base.trim_end_matches('_').to_owned();
    let mut id = base.clone();
    let mut n = 2;
    while taken.contains(&id) || ["getReply", "healthz", "readyz", "openapi"].contains(&id.as_str())
    {
        id = format!("{base}_{n}");
        n += 1;
    }
    taken.push(id.clone());
    id
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{} ms", d.as_millis())
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

fn reference(kind: &str, name: &str) -> Value {
    json!({ "$ref": format!("#/components/{kind}/{name}") })
}

fn header(description: &str, schema: Value, required: bool) -> Value {
    json!({ "description": description, "required": required, "schema": schema })
}

fn correlation_id_header(required: bool) -> Value {
    header(
        if required {
            "The request's correlation id."
        } else {
            "The request's correlation id, on the gateway's answers that have one and on every reply."
        },
        reference("schemas", "CorrelationId"),
        required,
    )
}

fn location_header() -> Value {
    header(
        "Where the reply can be fetched: `/v1/replies/{id}`. Only the gateway sets it (a reply's own `location` header is dropped).",
        json!({ "type": "string", "pattern": "^/v1/replies/[A-Za-z0-9._:-]{1,128}$" }),
        false,
    )
}

fn retry_after_header(what: &str) -> Value {
    header(
        &format!("`1` (second) on {what}; a reply may carry its own."),
        json!({ "type": "string" }),
        false,
    )
}

/// The schema of a body that is the gateway's problem of one of `kinds` when its
/// `type` is one of the gateway's, and a service's reply otherwise.
fn problem_or_reply(kinds: &[&str]) -> Value {
    let types: Vec<String> = kinds
        .iter()
        .map(|k| format!("{PROBLEM_PREFIX}{k}"))
        .collect();
    json!({
        "description": "The gateway's problem when `type` starts with `urn:replyway:problem:`, else a reply with this status.",
        "if": {
            "type": "object",
            "required": ["type"],
            "properties": { "type": { "type": "string", "pattern": format!("^{PROBLEM_PREFIX}") } },
        },
        "then": {
            "allOf": [
                reference("schemas", "Problem"),
                { "properties": { "type": { "enum": types } } },
            ],
        },
    })
}

/// A response of `status` that is the gateway's problem (`kinds`) or a reply.
fn problem_response(description: &str, kinds: &[&str], mut headers: Map<String, Value>) -> Value {
    headers.insert("correlation-id".into(), correlation_id_header(false));
    json!({
        "description": format!("{description} Or a reply with this status."),
        "headers": headers,
        "content": {
            "application/problem+json": { "schema": problem_or_reply(kinds) },
            "*/*": { "schema": reference("schemas", "ServiceReply") },
        },
    })
}

/// The reply, with any status the operation does not list.
fn reply_response(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "correlation-id": correlation_id_header(true) },
        "content": { "*/*": { "schema": reference("schemas", "ServiceReply") } },
        "links": { "GetReply": reference("links", "GetReply") },
    })
}

/// `202`: the gateway's pending answer, or a reply with status 202.
fn pending_response(description: &str, preference_applied: bool) -> Value {
    let mut headers = Map::new();
    headers.insert("correlation-id".into(), correlation_id_header(true));
    headers.insert("location".into(), location_header());
    headers.insert(
        "retry-after".into(),
        retry_after_header("the gateway's pending answer"),
    );
    if preference_applied {
        headers.insert(
            "preference-applied".into(),
            header(
                "`respond-async` when the gateway answered a fresh request at once (not on a retry with an `Idempotency-Key`).",
                json!({ "type": "string" }),
                false,
            ),
        );
    }
    json!({
        "description": format!("{description} Or a reply with status 202."),
        "headers": headers,
        "content": {
            "application/json": {
                "schema": { "anyOf": [reference("schemas", "PendingReply"), reference("schemas", "ServiceReply")] },
            },
            "*/*": { "schema": reference("schemas", "ServiceReply") },
        },
        "links": { "GetReply": reference("links", "GetReply") },
    })
}

fn prefer_parameter(description: String) -> Value {
    json!({
        "name": "Prefer",
        "in": "header",
        "required": false,
        "description": description,
        "schema": { "type": "string", "pattern": VISIBLE_ASCII_PATTERN },
        "examples": {
            "async": { "value": "respond-async" },
            "wait": { "value": "wait=3" },
        },
    })
}

fn route_operation(settings: &Settings, route: &Route, key: &str, operation_id: &str) -> Value {
    let mut parameters = Vec::new();
    let names = route.param_names();
    let key_names: Vec<&str> = key
        .split('/')
        .filter(|s| is_param(s))
        .map(|s| &s[1..s.len() - 1])
        .collect();
    for (documented, actual) in key_names.iter().zip(&names) {
        let mut description = format!(
            "A non-empty path segment, percent-decoded; sent to the service as the record header `param-{actual}`. A segment that is not percent-encoded UTF-8 matches no route (`404`)."
        );
        if documented != actual {
            description.push_str(&format!(
                " (The route names it `{actual}`; OpenAPI names it after the path key.)"
            ));
        }
        parameters.push(json!({
            "name": documented,
            "in": "path",
            "required": true,
            "description": description,
            "schema": { "type": "string", "minLength": 1 },
        }));
    }

    let mut headers: Vec<(String, Value)> = Vec::new();
    let timeout = human(route.timeout);
    headers.push(("prefer".into(), prefer_parameter(format!(
        "RFC 7240 preferences; others are ignored. `respond-async`: answer `202` at once with `Location` (the command's deadline is then the reply TTL, {}). `wait=N`: wait at most N seconds for the reply instead of the route's {timeout} (a longer wait is capped; `wait=0` does not wait); the command's deadline is then that wait, after which a service may drop it. A `wait` that is not a whole number of seconds (0–4294967295), or a value that is not visible ASCII: `400`.",
        human(settings.redis.ttl)
    ))));
    headers.push(("idempotency-key".into(), json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": false,
        "description": format!(
            "The first request with a key on this route makes the correlation; a retry with the same key, method, path and body — on any replica, also while the first is in flight — gets that request's correlation id and reply (with `Prefer: respond-async`: the reply if stored, else `202`) and produces nothing. The same key with another request: `422`. Keys are remembered for {}. A key sent twice, empty, longer than 255 characters or with other characters: `400`.",
            human(settings.idempotency_ttl())
        ),
        "schema": { "type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN },
        "examples": { "uuid": { "value": "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"" } },
    })));
    let mut not_parameters = Vec::new();
    for name in &route.forward_headers {
        let name = name.as_str();
        let note = format!(
            "Forwarded to the service as the record header `header-{name}` (several values joined with `, `); a value that is not visible ASCII: `400`."
        );
        if IGNORED_HEADER_PARAMETERS.contains(&name) {
            not_parameters.push(format!("`{name}`"));
            continue;
        }
        if let Some((_, existing)) = headers.iter_mut().find(|(n, _)| n == name) {
            if let Some(Value::String(d)) = existing.get_mut("description") {
                d.push(' ');
                d.push_str(&note);
            }
            continue;
        }
        headers.push((
            name.to_owned(),
            json!({
                "name": name,
                "in": "header",
                "required": false,
                "description": note,
                "schema": { "type": "string", "pattern": VISIBLE_ASCII_PATTERN },
            }),
        ));
    }
    let mut passed = vec![
        (
            "traceparent".to_owned(),
            "W3C trace context, passed to the service as the record header `traceparent` when visible ASCII.",
        ),
        (
            "tracestate".to_owned(),
            "W3C trace context, passed to the service as the record header `tracestate` when visible ASCII.",
        ),
    ];
    if let Some(client) = &settings.client_id_header {
        passed.push((
            client.to_ascii_lowercase(),
            "The calling client's id, set by the trusted proxy in front of the gateway; passed to the service as the record header `client-id` when visible ASCII and not empty.",
        ));
    }
    for (name, description) in passed {
        if let Some((_, existing)) = headers.iter_mut().find(|(n, _)| *n == name) {
            if let Some(Value::String(d)) = existing.get_mut("description") {
                d.push(' ');
                d.push_str(description);
            }
            continue;
        }
        headers.push((
            name.clone(),
            json!({
                "name": name,
                "in": "header",
                "required": false,
                "description": description,
                "schema": { "type": "string" },
            }),
        ));
    }
    parameters.extend(headers.into_iter().map(|(_, p)| p));

    let mut description = format!(
        "Produces the request as a command to Kafka and answers with the service's reply: its status (200–599), content type, headers and body, with `correlation-id`. Waits up to {timeout} for the reply (`Prefer: wait=N` shortens it), then answers `504` with `Location`: the reply is still collected and can be fetched there. The command carries the method, the path, the path parameters, the body's content type and the forwarded headers."
    );
    if !not_parameters.is_empty() {
        description.push_str(&format!(
            " Also forwarded as `header-<name>`: {} (described by other means in OpenAPI).",
            not_parameters.join(", ")
        ));
    }
    if let Some(allowed) = &route.reply_headers {
        let mut allowed: Vec<&str> = allowed.iter().map(|h| h.as_str()).collect();
        allowed.sort_unstable();
        description.push_str(&format!(
            " Reply headers passed to the client: {}.",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }

    let limit = route.body_limit;
    let mut responses = Map::new();
    responses.insert(
        "default".into(),
        reply_response("The service's reply, with its status, content type and headers."),
    );
    responses.insert(
        "202".into(),
        pending_response(
            "With `Prefer: respond-async`: the command is produced and its reply can be fetched at `Location`.",
            true,
        ),
    );
    responses.insert(
        "400".into(),
        problem_response(
            "A malformed `Prefer`, `Idempotency-Key`, forwarded header or `Content-Type` (`bad-request`), or a body that could not be read (`body-unreadable`).",
            &["bad-request", "body-unreadable"],
            Map::new(),
        ),
    );
    if !names.is_empty() {
        responses.insert(
            "404".into(),
            problem_response(
                "A path segment that is not percent-encoded UTF-8 (`no-route`).",
                &["no-route"],
                Map::new(),
            ),
        );
    }
    responses.insert(
        "408".into(),
        problem_response(
            &format!(
                "The body did not arrive within {} (`body-timeout`).",
                human(settings.body_read_timeout)
            ),
            &["body-timeout"],
            Map::new(),
        ),
    );
    responses.insert(
        "413".into(),
        problem_response(
            &format!(
                "The body is over {limit} bytes, by `Content-Length` or while reading (`body-too-large`)."
            ),
            &["body-too-large"],
            Map::new(),
        ),
    );
    responses.insert(
        "422".into(),
        problem_response(
            "The `Idempotency-Key` was used on this route with another request (`idempotency-key-reused`).",
            &["idempotency-key-reused"],
            Map::new(),
        ),
    );
    if route.auth != RouteAuth::None {
        let challenge = challenge_headers;
        responses.insert(
            "401".into(),
            problem_response(
                "No credentials, or credentials that do not check out (`unauthenticated`); nothing produced.",
                &["unauthenticated"],
                challenge(),
            ),
        );
        responses.insert(
            "403".into(),
            problem_response(
                "Authenticated without a scope the route requires (`forbidden`); nothing produced.",
                &["forbidden"],
                challenge(),
            ),
        );
    }
    if let Some(limit) = &route.rate_limit {
        let mut headers = rate_limit_headers();
        headers.insert(
            "retry-after".into(),
            header(
                "Seconds until a request is allowed again, on the gateway's answer.",
                json!({ "type": "string" }),
                false,
            ),
        );
        responses.insert(
            "429".into(),
            problem_response(
                &format!(
                    "Over the route's rate limit of {} requests at once, one more every {}, per caller (the principal, else the client's address), over all replicas (`rate-limited`); nothing produced.",
                    limit.burst,
                    human(limit.interval)
                ),
                &["rate-limited"],
                headers,
            ),
        );
        for status in ["default", "202"] {
            if let Some(Value::Object(headers)) =
                responses.get_mut(status).and_then(|r| r.get_mut("headers"))
            {
                headers.extend(rate_limit_headers());
            }
        }
    }
    responses.insert("431".into(), reference("responses", "HeadersTooLarge"));
    let mut retry = Map::new();
    retry.insert(
        "retry-after".into(),
        retry_after_header("the gateway's `503`"),
    );
    responses.insert(
        "503".into(),
        problem_response(
            &format!(
                "Nothing half-done: {} requests already wait on this node (`overloaded`); Redis unreachable, nothing produced (`store-unavailable`); the broker did not take the command, or did not acknowledge it within {} — then the pending record is removed and the body names the correlation id, under which a late delivery's reply is still stored (`broker-unavailable`); the gateway is stopping (`shutting-down`){}.",
                settings.max_waiting,
                human(settings.produce_timeout.min(route.timeout)),
                route.responder_group.as_ref().map_or_else(String::new, |g| format!(
                    "; Kafka reports that consumer group `{g}`, which serves this route, has no active member: answered at once, nothing produced (`no-responders`)"
                )),
            ),
            &["overloaded", "store-unavailable", "broker-unavailable", "shutting-down", "no-responders"],
            retry,
        ),
    );
    let mut timeout_headers = Map::new();
    timeout_headers.insert("location".into(), location_header());
    let mut timeout_response = problem_response(
        &format!(
            "No reply within {timeout} (or the `Prefer: wait`): the body names the correlation id; the reply is still collected and can be fetched at `Location` (`reply-timeout`)."
        ),
        &["reply-timeout"],
        timeout_headers,
    );
    timeout_response["links"] = json!({ "GetReply": reference("links", "GetReply") });
    responses.insert("504".into(), timeout_response);

    let mut operation = json!({
        "tags": ["routes"],
        "summary": route.name,
        "description": description,
        "operationId": operation_id,
        "parameters": parameters,
        "requestBody": {
            "required": false,
            "description": format!(
                "Any body of any media type, at most {limit} bytes, sent as the command's value; its `Content-Type` becomes the record header `content-type`."
            ),
            "content": { "*/*": { "schema": {} } },
        },
        "responses": responses,
    });
    let schemes = accepted_schemes(settings, route);
    if !schemes.is_empty() {
        // Scopes: every one is required, whichever credentials carry them.
        operation["security"] = schemes
            .iter()
            .map(|scheme| json!({ *scheme: route.scopes }))
            .collect();
    }
    operation
}

/// The security schemes that can let a caller in on `route`.
fn accepted_schemes(settings: &Settings, route: &Route) -> Vec<&'static str> {
    let keys = !settings.auth.api_keys.is_empty();
    let jwt = settings.auth.jwt.is_some();
    let (api_key, token) = match route.auth {
        RouteAuth::None => (false, false),
        RouteAuth::ApiKey => (true, false),
        RouteAuth::Jwt => (false, true),
        RouteAuth::Any => (keys, jwt),
    };
    let mut schemes = Vec::new();
    if api_key {
        schemes.push("apiKey");
    }
    if token {
        schemes.push("jwt");
    }
    schemes
}

/// `WWW-Authenticate` on `401` and `403`.
fn challenge_headers() -> Map<String, Value> {
    let mut headers = Map::new();
    headers.insert(
        "www-authenticate".into(),
        header(
            "The challenge (`Bearer` or `ApiKey`, `realm`, and `error`, `scope` when they apply) on the gateway's answer.",
            json!({ "type": "string" }),
            false,
        ),
    );
    headers
}

/// `RateLimit` and `RateLimit-Policy` (IETF draft) on a rate-limited route's answers.
fn rate_limit_headers() -> Map<String, Value> {
    let mut headers = Map::new();
    headers.insert(
        "ratelimit".into(),
        header(
            "`limit=<burst>, remaining=<n>, reset=<seconds>` on the gateway's answers (IETF draft).",
            json!({ "type": "string" }),
            false,
        ),
    );
    headers.insert(
        "ratelimit-policy".into(),
        header(
            "`<burst>;w=<window seconds>` on the gateway's answers (IETF draft).",
            json!({ "type": "string" }),
            false,
        ),
    );
    headers
}

fn get_reply(settings: &Settings) -> Value {
    let mut unavailable = Map::new();
    unavailable.insert(
        "retry-after".into(),
        retry_after_header("the gateway's `503`"),
    );
    let mut operation = get_reply_operation(settings, unavailable);
    // Without [auth], credentials are ignored: no 401 here.
    if settings.auth.api_keys.is_empty()
        && settings.auth.jwt.is_none()
        && let Some(responses) = operation["responses"].as_object_mut()
    {
        responses.remove("401");
    }
    operation
}

fn get_reply_operation(settings: &Settings, unavailable: Map<String, Value>) -> Value {
    json!({
        "tags": ["gateway"],
        "summary": "Fetch a reply",
        "description": format!(
            "The reply of a request by its correlation id, on any gateway replica, while it is stored ({}). Also for requests that timed out (`504`) or were answered `202`. The reply of a request made by an authenticated principal goes only to that principal (credentials of any configured kind).",
            human(settings.redis.ttl)
        ),
        "operationId": "getReply",
        "parameters": [
            {
                "name": "id",
                "in": "path",
                "required": true,
                "description": "The correlation id (the `correlation-id` header of the request's answer).",
                "schema": reference("schemas", "CorrelationId"),
            },
            prefer_parameter(format!(
                "RFC 7240 preferences; others are ignored. `wait=N`: while the request is pending, wait up to N seconds (capped at {}) for its reply before answering `202`. A `wait` that is not a whole number of seconds (0–4294967295), or a value that is not visible ASCII: `400`.",
                human(settings.max_poll_wait)
            )),
        ],
        "responses": {
            "default": reply_response("The reply, with its status, content type and headers."),
            "202": pending_response("The request is pending: no reply yet.", false),
            "400": problem_response(
                "A malformed correlation id (also one that is not percent-encoded UTF-8) or `Prefer` (`bad-request`).",
                &["bad-request"],
                Map::new(),
            ),
            "401": problem_response(
                "Credentials were sent that do not check out as an API key or a JWT (`unauthenticated`).",
                &["unauthenticated"],
                challenge_headers(),
            ),
            "404": problem_response(
                "No reply or pending request with this id: never issued (or, with `correlation_secret`, not signed by the gateway), expired, or made by another principal (`unknown-reply`).",
                &["unknown-reply"],
                Map::new(),
            ),
            "431": reference("responses", "HeadersTooLarge"),
            "503": problem_response(
                "Redis unreachable (`store-unavailable`), or too many requests wait on this node to long-poll (`overloaded`).",
                &["store-unavailable", "overloaded"],
                unavailable,
            ),
        },
    })
}

fn healthz() -> Value {
    json!({
        "tags": ["gateway"],
        "summary": "Liveness",
        "description": "`ok` while the process runs.",
        "operationId": "healthz",
        "responses": {
            "200": {
                "description": "The process runs.",
                "content": { "text/plain": { "schema": { "type": "string", "const": "ok" } } },
            },
        },
    })
}

fn readyz() -> Value {
    json!({
        "tags": ["gateway"],
        "summary": "Readiness",
        "description": "Ready when Redis answers a `PING`, this node's Redis subscription is live, the broker answers a metadata request (within 2 s) and the gateway is not stopping.",
        "operationId": "readyz",
        "responses": {
            "200": {
                "description": "Ready.",
                "content": { "application/json": { "schema": {
                    "allOf": [reference("schemas", "Readiness")],
                    "properties": {
                        "ready": { "const": true },
                        "redis": { "const": true },
                        "subscription": { "const": true },
                        "kafka": { "const": true },
                    },
                } } },
            },
            "503": {
                "description": "Not ready: the fields say which part failed (all `true` with `ready: false` while stopping).",
                "content": { "application/json": { "schema": {
                    "allOf": [reference("schemas", "Readiness")],
                    "properties": { "ready": { "const": false } },
                } } },
            },
        },
    })
}

fn openapi() -> Value {
    json!({
        "tags": ["gateway"],
        "summary": "This document",
        "description": "The OpenAPI 3.1 description of the gateway's endpoints and its configured routes.",
        "operationId": "openapi",
        "responses": {
            "200": {
                "description": "The document.",
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "required": ["openapi", "info", "paths"],
                    "properties": { "openapi": { "const": "3.1.0" } },
                } } },
            },
        },
    })
}

fn problem_schema() -> Value {
    let types: Vec<String> = PROBLEM_KINDS
        .iter()
        .map(|(k, _)| format!("{PROBLEM_PREFIX}{k}"))
        .collect();
    let mut statuses: Vec<u16> = PROBLEM_KINDS.iter().map(|(_, s)| *s).collect();
    statuses.dedup();
    let mut rules: Vec<Value> = PROBLEM_KINDS
        .iter()
        .map(|(kind, status)| {
            let title = StatusCode::from_u16(*status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            json!({
                "if": { "properties": { "type": { "const": format!("{PROBLEM_PREFIX}{kind}") } } },
                "then": { "properties": { "status": { "const": status }, "title": { "const": title } } },
            })
        })
        .collect();
    let urns = |kinds: &[&str]| -> Vec<String> {
        kinds
            .iter()
            .map(|k| format!("{PROBLEM_PREFIX}{k}"))
            .collect()
    };
    let with_id = urns(KINDS_WITH_CORRELATION_ID);
    let mut may_have_id = with_id.clone();
    may_have_id.extend(urns(KINDS_MAYBE_WITH_CORRELATION_ID));
    rules.push(json!({
        "if": { "properties": { "type": { "enum": with_id } } },
        "then": { "required": ["correlation_id"] },
    }));
    rules.push(json!({
        "if": { "properties": { "type": { "not": { "enum": may_have_id } } } },
        "then": { "not": { "required": ["correlation_id"] } },
    }));
    json!({
        "description": "The gateway's own errors: RFC 9457 problem details.",
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "additionalProperties": false,
        "properties": {
            "type": { "type": "string", "enum": types, "description": "`urn:replyway:problem:<kind>`." },
            "title": { "type": "string", "description": "The status's reason phrase." },
            "status": { "type": "integer", "enum": statuses },
            "detail": { "type": "string", "description": "What went wrong, for people." },
            "correlation_id": {
                "allOf": [reference("schemas", "CorrelationId")],
                "description": "The request's correlation id, when it has one the client can use: after a reply timeout, for an unknown reply, when the broker did not acknowledge in time.",
            },
        },
        "allOf": rules,
    })
}

fn components(settings: &Settings, routes: &RouteTable) -> Value {
    let mut components = json!({
        "schemas": {
            "CorrelationId": {
                "description": "1–128 characters of `A-Z a-z 0-9 . _ : -` (the gateway issues UUIDs).",
                "type": "string",
                "pattern": CORRELATION_ID_PATTERN,
            },
            "Problem": problem_schema(),
            "PendingReply": {
                "description": "The gateway's answer for a request whose reply is not there yet.",
                "type": "object",
                "required": ["correlation_id", "status", "location"],
                "additionalProperties": false,
                "properties": {
                    "correlation_id": reference("schemas", "CorrelationId"),
                    "status": { "const": "pending" },
                    "location": { "type": "string", "pattern": "^/v1/replies/[A-Za-z0-9._:-]{1,128}$" },
                },
            },
            "ServiceReply": {
                "description": "A service's reply body: any bytes, of the content type the reply names (no `Content-Type` when it names none).",
            },
            "Readiness": {
                "type": "object",
                "required": ["ready", "redis", "subscription", "kafka"],
                "additionalProperties": false,
                "properties": {
                    "ready": { "type": "boolean" },
                    "redis": { "type": "boolean", "description": "Redis answered a `PING`." },
                    "subscription": { "type": "boolean", "description": "This node's Redis subscription is live." },
                    "kafka": { "type": "boolean", "description": "The broker answered a metadata request." },
                },
            },
        },
        "responses": {
            "HeadersTooLarge": {
                "description": format!(
                    "The request line and headers are over {} bytes: answered before routing, with no body.",
                    settings.max_header_bytes
                ),
            },
            "NoRoute": {
                "description": "No configured route matches the path (`no-route`).",
                "content": { "application/problem+json": { "schema": {
                    "allOf": [reference("schemas", "Problem")],
                    "properties": { "type": { "const": format!("{PROBLEM_PREFIX}no-route") } },
                } } },
            },
            "MethodNotAllowed": {
                "description": "Routes match the path, but with other methods (`method-not-allowed`); `Allow` lists them. The gateway's own endpoints answer other methods `405` with `Allow` and an empty body.",
                "headers": { "allow": header("The methods of the routes that match the path.", json!({ "type": "string" }), true) },
                "content": { "application/problem+json": { "schema": {
                    "allOf": [reference("schemas", "Problem")],
                    "properties": { "type": { "const": format!("{PROBLEM_PREFIX}method-not-allowed") } },
                } } },
            },
        },
        "links": {
            "GetReply": {
                "operationId": "getReply",
                "parameters": { "id": "$response.header.correlation-id" },
                "description": "The reply, fetched by the request's correlation id.",
            },
        },
    });
    let schemes = security_schemes(settings, routes);
    if !schemes.is_empty() {
        components["securitySchemes"] = Value::Object(schemes);
    }
    components
}

/// The security schemes the routes use: API keys (as `Bearer` credentials, or
/// in a header of their own) and JWTs.
fn security_schemes(settings: &Settings, routes: &RouteTable) -> Map<String, Value> {
    let uses = |scheme: &str| {
        routes
            .routes()
            .iter()
            .any(|r| accepted_schemes(settings, r).contains(&scheme))
    };
    let mut schemes = Map::new();
    if uses("apiKey") {
        let header = settings.auth.api_key_header.to_ascii_lowercase();
        let scheme = if header == "authorization" {
            json!({
                "type": "http",
                "scheme": "bearer",
                "description": "An API key, as `Authorization: Bearer <key>`; the principal it names is sent to services as `client-id`. Scopes are the key's.",
            })
        } else {
            json!({
                "type": "apiKey",
                "in": "header",
                "name": header,
                "description": "An API key; the principal it names is sent to services as `client-id`. Scopes are the key's.",
            })
        };
        schemes.insert("apiKey".into(), scheme);
    }
    if let Some(jwt) = settings.auth.jwt.as_ref().filter(|_| uses("jwt")) {
        let description = format!(
            "A JWT as `Authorization: Bearer <token>`, signed with {}; `iss` {}, `aud` one of {}, `exp` required. Its `{}` claim is the principal, sent to services as `client-id`; scopes from its `scope` (space-separated) and `scp` (array) claims.",
            jwt.algorithms.join(", "),
            jwt.issuer
                .as_deref()
                .map_or_else(|| "any".to_owned(), |i| format!("`{i}`")),
            jwt.audience
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", "),
            jwt.principal_claim,
        );
        schemes.insert(
            "jwt".into(),
            json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": description }),
        );
    }
    schemes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;
    use crate::problem::GatewayError;
    use crate::routes::RouteConfig;
    use http_body_util::BodyExt;

    fn settings() -> Settings {
        Settings {
            client_id_header: Some("x-client-id".into()),
            routes: vec![
                RouteConfig {
                    method: "POST".into(),
                    path: "/accounts/{account}/transfers".into(),
                    topic: "transfers".into(),
                    body_limit: 4096,
                    forward_headers: vec!["X-Request-Id".into(), "Authorization".into()],
                    ..RouteConfig::default()
                },
                RouteConfig {
                    method: "get".into(),
                    path: "/accounts/{id}/transfers".into(),
                    topic: "transfers".into(),
                    ..RouteConfig::default()
                },
                RouteConfig {
                    method: "POST".into(),
                    path: "/accounts/{other}/transfers".into(),
                    topic: "transfers".into(),
                    ..RouteConfig::default()
                },
                RouteConfig {
                    method: "PURGE".into(),
                    path: "/cache".into(),
                    topic: "cache".into(),
                    ..RouteConfig::default()
                },
                RouteConfig {
                    method: "GET".into(),
                    path: "/healthz".into(),
                    topic: "health".into(),
                    ..RouteConfig::default()
                },
                RouteConfig {
                    method: "DELETE".into(),
                    path: "/admin/{thing}".into(),
                    topic: "admin".into(),
                    auth: RouteAuth::ApiKey,
                    scopes: vec!["admin".into()],
                    rate_limit: Some(crate::routes::RateLimitConfig {
                        requests: 10,
                        per: Duration::from_secs(1),
                        burst: Some(5),
                    }),
                    ..RouteConfig::default()
                },
            ],
            auth: crate::auth::AuthConfig {
                api_keys: vec![crate::auth::ApiKeyConfig {
                    id: "ops".into(),
                    sha256: "0".repeat(64),
                    scopes: vec!["admin".into()],
                }],
                ..crate::auth::AuthConfig::default()
            },
            ..Settings::default()
        }
    }

    fn doc() -> Value {
        let settings = settings();
        let routes = settings.validate().unwrap();
        document(&settings, &routes)
    }

    #[test]
    fn routes_parameters_and_own_endpoints_appear() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in ["/v1/replies/{id}", "/healthz", "/readyz", "/openapi.json"] {
            assert!(doc["paths"][path]["get"].is_object(), "{path}");
        }
        let item = &doc["paths"]["/accounts/{account}/transfers"];
        let post = &item["post"];
        assert_eq!(post["summary"], "POST /accounts/{account}/transfers");
        let params = post["parameters"].as_array().unwrap();
        let find = |name: &str, place: &str| {
            params
                .iter()
                .find(|p| p["name"] == name && p["in"] == place)
                .cloned()
        };
        assert_eq!(find("account", "path").unwrap()["required"], true);
        for h in [
            "Prefer",
            "Idempotency-Key",
            "x-request-id",
            "x-client-id",
            "traceparent",
        ] {
            assert_eq!(find(h, "header").unwrap()["required"], false, "{h}");
        }
        assert!(find("authorization", "header").is_none());
        assert!(
            post["requestBody"]["description"]
                .as_str()
                .unwrap()
                .contains("4096 bytes")
        );
        for status in [
            "default", "202", "400", "404", "408", "413", "422", "503", "504",
        ] {
            assert!(post["responses"][status].is_object(), "{status}");
        }
        assert_eq!(
            post["responses"]["504"]["headers"]["location"]["schema"]["type"],
            "string"
        );

        // Another method on a path of the same shape shares the path key and
        // names the route's own parameter.
        let get = &item["get"];
        let id = &get["parameters"][0];
        assert_eq!(id["name"], "account");
        assert!(id["description"].as_str().unwrap().contains("param-id"));
        assert!(doc["paths"].get("/accounts/{id}/transfers").is_none());

        // Unreachable or undocumentable routes are named, not described.
        let description = doc["info"]["description"].as_str().unwrap();
        assert!(description.contains("`POST /accounts/{other}/transfers`"));
        assert!(description.contains("`PURGE /cache`"));
        assert!(description.contains("`GET /healthz`"));
        assert_eq!(doc["paths"].as_object().unwrap().len(), 6);
        assert!(post.get("security").is_none());
        assert!(post["responses"].get("401").is_none());
        assert!(post["responses"].get("429").is_none());

        let reply = &doc["paths"]["/v1/replies/{id}"]["get"];
        assert_eq!(reply["operationId"], "getReply");
        for status in ["default", "202", "400", "404", "503"] {
            assert!(reply["responses"][status].is_object(), "{status}");
        }
    }

    #[test]
    fn authentication_and_rate_limits_are_described() {
        let doc = doc();
        let delete = &doc["paths"]["/admin/{thing}"]["delete"];
        assert_eq!(delete["security"], json!([{ "apiKey": ["admin"] }]));
        for status in ["401", "403", "429", "431"] {
            assert!(delete["responses"][status].is_object(), "{status}");
        }
        assert!(delete["responses"]["429"]["headers"]["retry-after"].is_object());
        assert!(delete["responses"]["default"]["headers"]["ratelimit"].is_object());
        assert!(
            delete["responses"]["429"]["description"]
                .as_str()
                .unwrap()
                .contains("5 requests at once, one more every 100 ms")
        );
        let scheme = &doc["components"]["securitySchemes"]["apiKey"];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        assert!(doc["components"]["securitySchemes"].get("jwt").is_none());
        assert!(doc["paths"]["/v1/replies/{id}"]["get"]["responses"]["401"].is_object());
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = doc();
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                ids.push(op["operationId"].as_str().unwrap().to_owned());
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    /// Does not compile when `GatewayError` gains a variant: document its problem
    /// kind in `PROBLEM_KINDS` (and the responses that can carry it), then add it
    /// here and to the test below.
    #[allow(dead_code)]
    fn every_error_is_documented(error: &GatewayError) {
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
            | GatewayError::RateLimited(_) => {}
        }
    }

    /// The `Problem` schema's table is what `problem.rs` answers: every error's
    /// type, status, title and correlation id.
    #[tokio::test]
    async fn problem_kinds_match_the_gateways_errors() {
        use replyway_shared::store::{RateDecision, RateLimit};
        let errors = vec![
            GatewayError::NoRoute("/x".into()),
            GatewayError::MethodNotAllowed(vec![Method::POST]),
            GatewayError::BodyTooLarge(8),
            GatewayError::BodyRead,
            GatewayError::BodyTimeout,
            GatewayError::IdempotencyMismatch,
            GatewayError::BadRequest("bad".into()),
            GatewayError::Overloaded,
            GatewayError::Redis(replyway_shared::store::StoreError::Timeout(
                Duration::from_secs(1),
            )),
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
            GatewayError::RateLimited(crate::handlers::RateInfo {
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
        ];
        let mut seen = Vec::new();
        for error in errors {
            let response = error.into_response();
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let object = body.as_object().unwrap();
            for key in object.keys() {
                assert!(
                    ["type", "title", "status", "detail", "correlation_id"].contains(&key.as_str())
                );
            }
            let kind = body["type"]
                .as_str()
                .unwrap()
                .strip_prefix(PROBLEM_PREFIX)
                .unwrap()
                .to_owned();
            let (_, documented) = PROBLEM_KINDS
                .iter()
                .find(|(k, _)| *k == kind)
                .unwrap_or_else(|| panic!("{kind} is not documented"));
            assert_eq!(*documented, status.as_u16());
            assert_eq!(body["status"], status.as_u16());
            assert_eq!(body["title"], status.canonical_reason().unwrap());
            assert!(body["detail"].is_string());
            let has_id = body.get("correlation_id").is_some();
            if KINDS_WITH_CORRELATION_ID.contains(&kind.as_str()) {
                assert!(has_id, "{kind}");
            } else if !KINDS_MAYBE_WITH_CORRELATION_ID.contains(&kind.as_str()) {
                assert!(!has_id, "{kind}");
            }
            seen.push(kind);
        }
        for (kind, _) in PROBLEM_KINDS {
            assert!(seen.iter().any(|s| s == kind), "{kind} is never answered");
        }
    }

    #[test]
    fn coverage_and_shapes() {
        assert!(covers("/a/{x}", "/a/b"));
        assert!(covers("/a/{x}", "/a/{y}"));
        assert!(!covers("/a/b", "/a/{y}"));
        assert!(!covers("/a/{x}", "/a/b/c"));
        assert_eq!(shape("/a/{x}/c"), "/a/{}/c");
        assert_eq!(human(Duration::from_secs(5)), "5 s");
        assert_eq!(human(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(human(Duration::from_secs(600)), "10 min");
        assert_eq!(human(Duration::from_secs(90)), "90 s");
        assert_eq!(human(Duration::from_secs(7200)), "2 h");
    }
}
