//! The operation of one configured route: its parameters (path, `Prefer`,
//! `Idempotency-Key`, forwarded and passed-on headers), its body, every answer
//! the gateway may give on it, and who may call it.

use utoipa::openapi::path::{
    Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::{ContentBuilder, Required, ResponseBuilder, SecurityRequirement};

use replyway_shared::store::RateLimit;

use super::parts::{
    Headers, VISIBLE_ASCII_PATTERN, any, challenge_headers, component, examples, fields,
    get_reply_link, header, human, location_header, pending_response, prefer_parameter,
    problem_response, rate_limit_headers, reply_response, retry_after_header, string,
    string_matching,
};
use crate::auth::RouteAuth;
use crate::config::Settings;
use crate::problem::ProblemKind;
use crate::routes::Route;

/// What `handlers::idempotency_key` accepts: after trimming, 1–255 printable ASCII
/// characters without `"` or `\`, optionally in double quotes (a structured-field
/// string).
const IDEMPOTENCY_KEY_PATTERN: &str = "^[\\t ]*(?:\"[ !#-\\[\\]-~]{1,255}\"|[!#-\\[\\]-~](?:[ !#-\\[\\]-~]{0,253}[!#-\\[\\]-~])?)[\\t ]*$";

/// Header parameters OpenAPI ignores (they are described by other means).
const IGNORED_HEADER_PARAMETERS: &[&str] = &["accept", "content-type", "authorization"];

/// The security schemes that can let a caller in on `route`.
pub(super) fn accepted_schemes(settings: &Settings, route: &Route) -> Vec<&'static str> {
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

/// A header parameter.
fn header_parameter(name: &str, description: &str, pattern: Option<&str>) -> Parameter {
    let schema = match pattern {
        Some(pattern) => string_matching(pattern),
        None => string(),
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// Header parameters by lower-case name; a header named twice gets both
/// descriptions.
#[derive(Default)]
struct HeaderParameters(Vec<(String, Parameter)>);

impl HeaderParameters {
    fn add(&mut self, name: &str, parameter: impl FnOnce() -> Parameter, note: &str) {
        if let Some((_, existing)) = self.0.iter_mut().find(|(n, _)| n == name) {
            if let Some(description) = &mut existing.description {
                description.push(' ');
                description.push_str(note);
            }
            return;
        }
        self.0.push((name.to_owned(), parameter()));
    }
}

/// The path parameters: each `{name}` of the pattern.
fn path_parameters(route: &Route) -> Vec<Parameter> {
    route
        .param_names()
        .into_iter()
        .map(|name| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!(
                    "A non-empty path segment, percent-decoded; sent to the service as the record header `param-{name}`. A segment that is not percent-encoded UTF-8 matches no route (`404`)."
                )))
                .schema(Some(string().min_length(Some(1))))
                .build()
        })
        .collect()
}

/// The `Idempotency-Key` header parameter.
fn idempotency_key_parameter(settings: &Settings) -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(format!(
            "The first request with a key on this route makes the correlation; a retry with the same key, method, path and body — on any replica, also while the first is in flight — gets that request's correlation id and reply (with `Prefer: respond-async`: the reply if stored, else `202`) and produces nothing. The same key with another request: `422`. Keys are remembered for {}. A key sent twice, empty, longer than 255 characters or with other characters: `400`.",
            human(settings.idempotency_ttl())
        )))
        .schema(Some(string_matching(IDEMPOTENCY_KEY_PATTERN)))
        .extensions(fields([(
            "examples",
            examples(&[("uuid", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")]),
        )]))
        .build()
}

/// The `Callback-URL` header parameter of a route that takes callbacks.
fn callback_url_parameter(callbacks: &crate::callbacks::RouteCallbacks) -> Parameter {
    let policy = &callbacks.policy;
    let hosts: Vec<String> = policy
        .allow_hosts
        .iter()
        .map(|h| match h {
            crate::callbacks::url_safety::HostPattern::Exact(n) => format!("`{n}`"),
            crate::callbacks::url_safety::HostPattern::Subdomains(d) => format!("`*.{d}`"),
        })
        .collect();
    let description = format!(
        "With `Prefer: respond-async`: once stored, the reply is POSTed to this URL, signed per Standard Webhooks (`webhook-id` = the correlation id, `webhook-timestamp`, `webhook-signature: v1,…`), and retried along the gateway's schedule; `GET /v1/replies/{{id}}` answers `callback-state` and `callback-attempts`. {} only, to a host of {}{}; a URL refused, or `Callback-URL` without `Prefer: respond-async`: `400`, nothing produced.",
        if policy.allow_http {
            "`https` or `http`"
        } else {
            "`https`"
        },
        hosts.join(", "),
        if policy.allow_private {
            ""
        } else {
            " that resolves to public addresses only"
        },
    );
    ParameterBuilder::new()
        .name("Callback-URL")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(
            string()
                .format(Some(utoipa::openapi::schema::SchemaFormat::Custom(
                    "uri".into(),
                )))
                .max_length(Some(2048)),
        ))
        .build()
}

/// The header parameters, and the forwarded headers OpenAPI has no parameter for.
fn header_parameters(settings: &Settings, route: &Route) -> (Vec<Parameter>, Vec<String>) {
    let mut headers = HeaderParameters::default();
    let timeout = human(route.timeout);
    headers.0.push(("prefer".into(), prefer_parameter(format!(
        "RFC 7240 preferences; others are ignored. `respond-async`: answer `202` at once with `Location` (the command's deadline is then the reply TTL, {}). `wait=N`: wait at most N seconds for the reply instead of the route's {timeout} (a longer wait is capped; `wait=0` does not wait); the command's deadline is then that wait, after which a service may drop it. A `wait` that is not a whole number of seconds (0–4294967295), or a value that is not visible ASCII: `400`.",
        human(settings.redis.ttl)
    ))));
    headers.0.push((
        "idempotency-key".into(),
        idempotency_key_parameter(settings),
    ));

    if let Some(callbacks) = route.callbacks.as_ref().filter(|c| c.url.is_none()) {
        headers
            .0
            .push(("callback-url".into(), callback_url_parameter(callbacks)));
    }

    if let Some(lanes) = route.lanes.as_ref().filter(|l| l.reads_priority()) {
        let note = format!(
            "RFC 9218 priority: its urgency `u=0` (most urgent) to `u=7` (`u=3` when absent) picks the command's lane by the route's lane rules (default lane `{}`).",
            lanes.default_lane().name
        );
        headers.add(
            "priority",
            || header_parameter("priority", &note, None),
            &note,
        );
    }

    let mut not_parameters = Vec::new();
    for name in &route.forward_headers {
        let name = name.as_str();
        if IGNORED_HEADER_PARAMETERS.contains(&name) {
            not_parameters.push(format!("`{name}`"));
            continue;
        }
        let note = format!(
            "Forwarded to the service as the record header `header-{name}` (several values joined with `, `); a value that is not visible ASCII: `400`."
        );
        headers.add(
            name,
            || header_parameter(name, &note, Some(VISIBLE_ASCII_PATTERN)),
            &note,
        );
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
        headers.add(
            &name,
            || header_parameter(&name, description, None),
            description,
        );
    }
    (
        headers.0.into_iter().map(|(_, p)| p).collect(),
        not_parameters,
    )
}

/// What the operation says of the route: what it does, its wait, what else is
/// forwarded, which reply headers pass.
fn description(route: &Route, not_parameters: &[String]) -> String {
    let mut description = format!(
        "Produces the request as a command to Kafka and answers with the service's reply: its status (200–599), content type, headers and body, with `correlation-id`. Waits up to {} for the reply (`Prefer: wait=N` shortens it), then answers `504` with `Location`: the reply is still collected and can be fetched there. The command carries the method, the path, the path parameters, the body's content type and the forwarded headers.",
        human(route.timeout)
    );
    if !not_parameters.is_empty() {
        description.push_str(&format!(
            " Also forwarded as `header-<name>`: {} (described by other means in OpenAPI).",
            not_parameters.join(", ")
        ));
    }
    if let Some(lanes) = &route.lanes {
        let names: Vec<String> = lanes
            .all()
            .map(|l| format!("`{}` (topic `{}`)", l.name, l.topic))
            .collect();
        description.push_str(&format!(
            " Lanes: {}; a request no lane rule picks goes to `{}`.",
            names.join(", "),
            lanes.default_lane().name
        ));
    }
    description.push_str(&format!(
        " A reply the service streams in parts comes as Server-Sent Events (`Accept: text/event-stream`) or NDJSON (`Accept: application/x-ndjson`) as the parts arrive, at most {} between two parts, else joined as a JSON array once the last is there.",
        human(route.timeout)
    ));
    description.push_str(match route.on_disconnect {
        crate::routes::OnDisconnect::Cancel => {
            " A client that goes away before its reply cancels the command (a cancel record follows it)."
        }
        crate::routes::OnDisconnect::Keep => {
            " A client that goes away before its reply leaves the command to be served; its reply can be fetched later."
        }
    });
    if let Some(allowed) = &route.reply_headers {
        let mut allowed: Vec<&str> = allowed.iter().map(|h| h.as_str()).collect();
        allowed.sort_unstable();
        let allowed = if allowed.is_empty() {
            "none".to_owned()
        } else {
            allowed
                .iter()
                .map(|h| format!("`{h}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        description.push_str(&format!(" Reply headers passed to the client: {allowed}."));
    }
    description
}

/// The operation of `route`, named `operation_id`.
pub(super) fn operation(settings: &Settings, route: &Route, operation_id: &str) -> Operation {
    let (headers, not_parameters) = header_parameters(settings, route);
    let operation = OperationBuilder::new()
        .tag("routes")
        .summary(Some(&route.name))
        .description(Some(description(route, &not_parameters)))
        .operation_id(Some(operation_id))
        .parameters(Some(path_parameters(route).into_iter().chain(headers)))
        .request_body(Some(request_body(route)));
    let operation = reply_responses(operation, route);
    let operation = request_problems(operation, settings, route);
    let operation = serving_problems(operation, settings, route);
    let operation = route_problems(operation, route);
    securities(operation, settings, route).build()
}

/// The body: anything up to the route's body limit, or JSON matching the
/// route's schema (the schema file itself, as OpenAPI 3.1 takes JSON Schema
/// 2020-12).
fn request_body(route: &Route) -> RequestBody {
    let limit = route.body_limit;
    if let Some(schema) = &route.schema {
        let document: utoipa::openapi::extensions::Extensions = schema
            .document
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        return RequestBodyBuilder::new()
            .required(Some(Required::True))
            .description(Some(format!(
                "JSON matching the route's schema ({}), at most {limit} bytes, sent as the command's value.",
                schema.path.display()
            )))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(any().extensions(Some(document))))
                    .build(),
            )
            .build();
    }
    RequestBodyBuilder::new()
        .required(Some(Required::False))
        .description(Some(format!(
            "Any body of any media type, at most {limit} bytes, sent as the command's value; its `Content-Type` becomes the record header `content-type`."
        )))
        .content("*/*", ContentBuilder::new().schema(Some(any())).build())
        .build()
}

/// The answers that are not errors: the service's reply, and `202` with
/// `Prefer: respond-async`.
fn reply_responses(operation: OperationBuilder, route: &Route) -> OperationBuilder {
    // Headers on the gateway's every answer that is not an error.
    let answered: fn() -> Headers = if route.rate_limit.is_some() {
        rate_limit_headers
    } else {
        Vec::new
    };
    operation
        .response(
            "default",
            reply_response(
                "The service's reply, with its status, content type and headers.",
                answered(),
            ),
        )
        .response(
            "202",
            pending_response(
                "With `Prefer: respond-async`: the command is produced and its reply can be fetched at `Location`.",
                true,
                answered(),
            ),
        )
}

/// The answers to a request the gateway cannot take: malformed, slow, too large,
/// a reused `Idempotency-Key`, too large a head.
fn request_problems(
    operation: OperationBuilder,
    settings: &Settings,
    route: &Route,
) -> OperationBuilder {
    let limit = route.body_limit;
    let operation = operation
        .response(
            "400",
            problem_response(
                if route.callbacks.is_some() {
                    "A malformed `Prefer`, `Idempotency-Key`, forwarded header or `Content-Type`, or a refused `Callback-URL` (`bad-request`), or a body that could not be read (`body-unreadable`)."
                } else {
                    "A malformed `Prefer`, `Idempotency-Key`, forwarded header or `Content-Type` (`bad-request`), or a body that could not be read (`body-unreadable`)."
                },
                &[ProblemKind::BadRequest, ProblemKind::BodyUnreadable],
                Vec::new(),
            ),
        )
        .response(
            "408",
            problem_response(
                &format!(
                    "The body did not arrive within {} (`body-timeout`).",
                    human(settings.body_read_timeout)
                ),
                &[ProblemKind::BodyTimeout],
                Vec::new(),
            ),
        )
        .response(
            "413",
            problem_response(
                &format!(
                    "The body is over {limit} bytes, by `Content-Length` or while reading (`body-too-large`)."
                ),
                &[ProblemKind::BodyTooLarge],
                Vec::new(),
            ),
        )
        .response(
            "422",
            problem_response(
                &format!(
                    "The `Idempotency-Key` was used on this route with another request (`idempotency-key-reused`){}.",
                    if route.schema.is_some() {
                        ", or the body does not match the route's schema: `violations` lists each with its JSON Pointer, keyword and message, at most 20, and `violation_count` how many there were (`invalid-body`); nothing produced"
                    } else {
                        ""
                    }
                ),
                if route.schema.is_some() {
                    &[ProblemKind::IdempotencyKeyReused, ProblemKind::InvalidBody]
                } else {
                    &[ProblemKind::IdempotencyKeyReused]
                },
                Vec::new(),
            ),
        )
        .response("431", component("responses", "HeadersTooLarge"));
    if route.schema.is_none() {
        return operation;
    }
    operation.response(
        "415",
        problem_response(
            "The `Content-Type` is not `application/json` or a `+json` type (`unsupported-media-type`); nothing produced.",
            &[ProblemKind::UnsupportedMediaType],
            Vec::new(),
        ),
    )
}

/// The answers when the gateway cannot serve a good request: `503` (overloaded,
/// Redis or the broker unavailable, stopping, no responders) and `504` (no reply
/// in time).
fn serving_problems(
    operation: OperationBuilder,
    settings: &Settings,
    route: &Route,
) -> OperationBuilder {
    let timeout = human(route.timeout);
    operation
        .response(
            "503",
            problem_response(
                &format!(
                    "Nothing half-done: {} requests already wait on this node (`overloaded`); Redis unreachable, nothing produced (`store-unavailable`); the broker did not take the command, or did not acknowledge it within {} — then the pending record is removed and the body names the correlation id, under which a late delivery's reply is still stored (`broker-unavailable`); the gateway is stopping (`shutting-down`){}.",
                    settings.max_waiting,
                    human(settings.produce_timeout.min(route.timeout)),
                    route.responder_group.as_ref().map_or_else(String::new, |g| format!(
                        "; Kafka reports that consumer group `{g}`, which serves this route, has no active member: answered at once, nothing produced (`no-responders`)"
                    )),
                ),
                &[
                    ProblemKind::Overloaded,
                    ProblemKind::StoreUnavailable,
                    ProblemKind::BrokerUnavailable,
                    ProblemKind::ShuttingDown,
                    ProblemKind::NoResponders,
                ],
                vec![("retry-after", retry_after_header("the gateway's `503`"))],
            ),
        )
        .response(
            "504",
            problem_response(
                &format!(
                    "No reply within {timeout} (or the `Prefer: wait`): the body names the correlation id; the reply is still collected and can be fetched at `Location` (`reply-timeout`)."
                ),
                &[ProblemKind::ReplyTimeout],
                vec![("location", location_header())],
            )
            .link("GetReply", get_reply_link()),
        )
}

/// The answers only some routes give: `404` with path parameters, `401` and
/// `403` with authentication, `429` with a rate limit, `502` with a reply
/// schema.
fn route_problems(mut operation: OperationBuilder, route: &Route) -> OperationBuilder {
    if !route.param_names().is_empty() {
        operation = operation.response(
            "404",
            problem_response(
                "A path segment that is not percent-encoded UTF-8 (`no-route`).",
                &[ProblemKind::NoRoute],
                Vec::new(),
            ),
        );
    }
    if route.auth != RouteAuth::None {
        operation = auth_problems(operation);
    }
    if let Some(limit) = &route.rate_limit {
        operation = operation.response("429", rate_limited_response(limit));
    }
    if let Some(schema) = &route.reply_schema {
        operation = operation.response(
            "502",
            problem_response(
                &format!(
                    "The service's 2xx reply does not match the route's reply schema ({}): `violations` lists each (`invalid-reply`).",
                    schema.path.display()
                ),
                &[ProblemKind::InvalidReply],
                Vec::new(),
            ),
        );
    }
    operation
}

/// `401` and `403`, on a route that requires authentication.
fn auth_problems(operation: OperationBuilder) -> OperationBuilder {
    operation
        .response(
            "401",
            problem_response(
                "No credentials, or credentials that do not check out (`unauthenticated`); nothing produced.",
                &[ProblemKind::Unauthenticated],
                challenge_headers(),
            ),
        )
        .response(
            "403",
            problem_response(
                "Authenticated without a scope the route requires (`forbidden`); nothing produced.",
                &[ProblemKind::Forbidden],
                challenge_headers(),
            ),
        )
}

/// `429`, on a route with rate limit `limit`.
fn rate_limited_response(limit: &RateLimit) -> ResponseBuilder {
    let mut headers = rate_limit_headers();
    headers.push((
        "retry-after",
        header(
            "Seconds until a request is allowed again, on the gateway's answer.",
            string(),
            false,
        ),
    ));
    problem_response(
        &format!(
            "Over the route's rate limit of {} requests at once, one more every {}, per caller (the principal, else the client's address), over all replicas (`rate-limited`); nothing produced.",
            limit.burst,
            human(limit.interval)
        ),
        &[ProblemKind::RateLimited],
        headers,
    )
}

/// Who may call: the schemes that can let a caller in, each with the route's
/// scopes; none on an open route.
fn securities(operation: OperationBuilder, settings: &Settings, route: &Route) -> OperationBuilder {
    let schemes = accepted_schemes(settings, route);
    if schemes.is_empty() {
        return operation;
    }
    // Scopes: every one is required, whichever credentials carry them.
    operation.securities(Some(
        schemes
            .iter()
            .map(|scheme| SecurityRequirement::new(*scheme, route.scopes.iter())),
    ))
}
