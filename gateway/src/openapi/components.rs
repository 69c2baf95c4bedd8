//! The document's components: the schemas the operations share (`Problem`
//! from [`ProblemKind::ALL`] among them), the answers before routing, the link
//! to a reply's pick-up and the security schemes the routes use.

use serde_json::Value;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::schema::AdditionalProperties;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    AllOfBuilder, Components, ComponentsBuilder, ContentBuilder, ObjectBuilder, ResponseBuilder,
    Type,
};

use super::parts::{
    CORRELATION_ID_PATTERN, LOCATION_PATTERN, all_of, any, constant, fields, header, json,
    schema_ref, string, string_matching,
};
use super::route::accepted_schemes;
use crate::config::Settings;
use crate::problem::{CorrelationIdField, ProblemKind};
use crate::routes::RouteTable;

/// `type` is one of `kinds`.
fn type_is_one_of(kinds: &[ProblemKind]) -> ObjectBuilder {
    any().property(
        "type",
        any().enum_values(Some(kinds.iter().map(|k| k.uri()))),
    )
}

/// The problem's `type` is none of `kinds`.
fn type_is_none_of(kinds: &[ProblemKind]) -> ObjectBuilder {
    any().property(
        "type",
        any().extensions(fields([(
            "not",
            json(any().enum_values(Some(kinds.iter().map(|k| k.uri())))),
        )])),
    )
}

/// `if` `condition` holds, `then` `consequence` must.
fn rule(condition: ObjectBuilder, consequence: ObjectBuilder) -> Value {
    json(any().extensions(fields([
        ("if", json(condition)),
        ("then", json(consequence)),
    ])))
}

/// RFC 9457 problem details as the gateway answers them: per type, its status
/// and title, and whether the body names the correlation id.
fn problem_schema() -> ObjectBuilder {
    let mut statuses: Vec<u16> = ProblemKind::ALL
        .iter()
        .map(|k| k.status().as_u16())
        .collect();
    statuses.dedup();
    let mut rules: Vec<Value> = ProblemKind::ALL
        .iter()
        .map(|kind| {
            rule(
                any().property("type", constant(kind.uri())),
                any()
                    .property("status", constant(kind.status().as_u16()))
                    .property("title", constant(kind.title())),
            )
        })
        .collect();
    // `violations` and `violation_count` on `invalid-body` and
    // `invalid-reply`, and only there.
    let with_violations = [ProblemKind::InvalidBody, ProblemKind::InvalidReply];
    rules.push(rule(
        type_is_one_of(&with_violations),
        any().required("violations").required("violation_count"),
    ));
    rules.push(rule(
        type_is_none_of(&with_violations),
        any().extensions(fields([(
            "not",
            serde_json::json!({"anyOf": [{"required": ["violations"]}, {"required": ["violation_count"]}]}),
        )])),
    ));
    let with = |fields: &[CorrelationIdField]| -> Vec<ProblemKind> {
        ProblemKind::ALL
            .into_iter()
            .filter(|k| fields.contains(&k.correlation_id()))
            .collect()
    };
    rules.push(rule(
        type_is_one_of(&with(&[CorrelationIdField::Always])),
        any().required("correlation_id"),
    ));
    let may_have_id = with(&[CorrelationIdField::Always, CorrelationIdField::Sometimes]);
    rules.push(rule(
        type_is_none_of(&may_have_id),
        any().extensions(fields([("not", json(any().required("correlation_id")))])),
    ));
    let kinds: Vec<String> = ProblemKind::ALL
        .iter()
        .map(|k| {
            format!(
                "\n* `{}` ({}): {}",
                k.name(),
                k.status().as_u16(),
                k.description()
            )
        })
        .collect();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("The gateway's own errors: RFC 9457 problem details."))
        .required("type")
        .required("title")
        .required("status")
        .required("detail")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .property(
            "type",
            string()
                .enum_values(Some(ProblemKind::ALL.iter().map(|k| k.uri())))
                .description(Some(format!(
                    "`{}<kind>`:\n{}",
                    ProblemKind::PREFIX,
                    kinds.concat()
                ))),
        )
        .property(
            "title",
            string().description(Some("The status's reason phrase.")),
        )
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some(statuses)),
        )
        .property(
            "detail",
            string().description(Some("What went wrong, for people.")),
        )
        .property(
            "correlation_id",
            AllOfBuilder::new()
                .item(schema_ref("CorrelationId"))
                .description(Some(
                    "The request's correlation id, when it has one the client can use: after a reply timeout, for an unknown reply, when the broker did not acknowledge in time.",
                )),
        )
        .property(
            "violations",
            any()
                .description(Some(
                    "With `invalid-body`: how the body does not match the route's schema, at most 20.",
                ))
                .extensions(fields([
                    ("type", Value::from("array")),
                    ("maxItems", Value::from(crate::schema::MAX_VIOLATIONS)),
                    (
                        "items",
                        serde_json::json!({
                            "type": "object",
                            "required": ["pointer", "keyword", "message"],
                            "additionalProperties": false,
                            "properties": {
                                "pointer": {"type": "string", "description": "JSON Pointer to the offending value (empty: the whole body)."},
                                "keyword": {"type": "string", "description": "The schema keyword violated."},
                                "message": {"type": "string"}
                            }
                        }),
                    ),
                ])),
        )
        .property(
            "violation_count",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .description(Some("With `invalid-body`: how many violations there were.")),
        )
        .extensions(fields([("allOf", Value::Array(rules))]))
}

fn schemas(components: ComponentsBuilder) -> ComponentsBuilder {
    let boolean = |description: Option<&str>| {
        ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(description)
    };
    components
        .schema(
            "CorrelationId",
            string_matching(CORRELATION_ID_PATTERN).description(Some(
                "1–128 characters of `A-Z a-z 0-9 . _ : -` (the gateway issues UUIDs).",
            )),
        )
        .schema("Problem", problem_schema())
        .schema(
            "PendingReply",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "The gateway's answer for a request whose reply is not there yet: `pending`, or `cancelled` after its client went away or deleted it (a reply that still comes is served as usual).",
                ))
                .required("correlation_id")
                .required("status")
                .required("location")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .property("correlation_id", schema_ref("CorrelationId"))
                .property(
                    "status",
                    string().enum_values(Some(["pending", "cancelled"])),
                )
                .property("location", string_matching(LOCATION_PATTERN)),
        )
        .schema(
            "ServiceReply",
            any().description(Some(
                "A service's reply body: any bytes, of the content type the reply names (no `Content-Type` when it names none).",
            )),
        )
        .schema(
            "Readiness",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .required("ready")
                .required("redis")
                .required("subscription")
                .required("kafka")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .property("ready", boolean(None))
                .property("redis", boolean(Some("Redis answered a `PING`.")))
                .property(
                    "subscription",
                    boolean(Some("This node's Redis subscription is live.")),
                )
                .property(
                    "kafka",
                    boolean(Some("The broker answered a metadata request.")),
                ),
        )
}

/// A problem of `kind` alone, as answered before any route is chosen.
fn problem_of(kind: ProblemKind) -> ObjectBuilder {
    any()
        .property("type", constant(kind.uri()))
        .extensions(all_of([schema_ref("Problem")]))
}

fn responses(components: ComponentsBuilder, settings: &Settings) -> ComponentsBuilder {
    components
        .response(
            "HeadersTooLarge",
            ResponseBuilder::new().description(format!(
                "The request line and headers are over {} bytes: answered before routing, with no body.",
                settings.max_header_bytes
            )),
        )
        .response(
            "NoRoute",
            ResponseBuilder::new()
                .description("No configured route matches the path (`no-route`).")
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(problem_of(ProblemKind::NoRoute)))
                        .build(),
                ),
        )
        .response(
            "MethodNotAllowed",
            ResponseBuilder::new()
                .description("Routes match the path, but with other methods (`method-not-allowed`); `Allow` lists them. The gateway's own endpoints answer other methods `405` with `Allow` and an empty body.")
                .header(
                    "allow",
                    header("The methods of the routes that match the path.", string(), true),
                )
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(problem_of(ProblemKind::MethodNotAllowed)))
                        .build(),
                ),
        )
}

/// The security schemes the routes use: API keys (as `Bearer` credentials, or
/// in a header of their own) and JWTs.
fn security_schemes(
    mut components: ComponentsBuilder,
    settings: &Settings,
    routes: &RouteTable,
) -> ComponentsBuilder {
    let uses = |scheme: &str| {
        routes
            .routes()
            .iter()
            .any(|r| accepted_schemes(settings, r).contains(&scheme))
    };
    if uses("apiKey") {
        let header = settings.auth.api_key_header.to_ascii_lowercase();
        let scheme = if header == "authorization" {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key, as `Authorization: Bearer <key>`; the principal it names is sent to services as `client-id`. Scopes are the key's."))
                    .build(),
            )
        } else {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                header,
                "An API key; the principal it names is sent to services as `client-id`. Scopes are the key's.".to_owned(),
            )))
        };
        components = components.security_scheme("apiKey", scheme);
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
        components = components.security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(description))
                    .build(),
            ),
        );
    }
    components
}

/// Every component of the document.
pub(super) fn components(settings: &Settings, routes: &RouteTable) -> Components {
    let components = schemas(ComponentsBuilder::new());
    let components = responses(components, settings).link(
        "GetReply",
        LinkBuilder::new()
            .operation_id("getReply")
            .parameter("id", "$response.header.correlation-id")
            .description("The reply, fetched by the request's correlation id.")
            .build(),
    );
    security_schemes(components, settings, routes).build()
}
