//! The pieces the document's operations share: small schemas, headers, the
//! `Prefer` parameter, and the responses every route and pick-up can give.

use std::time::Duration;

use serde_json::Value;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::Link;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AnyOfBuilder, SchemaType};
use utoipa::openapi::{
    AllOfBuilder, ContentBuilder, Header, HeaderBuilder, ObjectBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema, Type,
};

use crate::problem::ProblemKind;

/// A correlation id: what `replyway_shared::record::is_valid_correlation_id` accepts.
pub(super) const CORRELATION_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// Where a reply is fetched: `/v1/replies/` and a correlation id.
pub(super) const LOCATION_PATTERN: &str = "^/v1/replies/[A-Za-z0-9._:-]{1,128}$";

/// A header value `HeaderValue::to_str` accepts: tab and visible ASCII.
pub(super) const VISIBLE_ASCII_PATTERN: &str = "^[\\t -~]*$";

/// Headers of a response, by name.
pub(super) type Headers = Vec<(&'static str, Header)>;

/// Fields of OpenAPI 3.1 and JSON Schema 2020-12 that utoipa's model has no
/// field for: `const`, `not`, `if`/`then`, `allOf` beside `properties`, a
/// header's `required`, a parameter's `examples`. utoipa writes an object's
/// extension map into the object itself, so they land where the specification
/// puts them; an `Extensions` made by `collect` keeps the names as given (its
/// builder would prefix them with `x-`). A unit test checks that they arrive.
pub(super) fn fields<const N: usize>(fields: [(&str, Value); N]) -> Option<Extensions> {
    Some(fields.into_iter().collect())
}

/// A schema as JSON, to go into one of [`fields`].
pub(super) fn json(schema: impl Into<RefOr<Schema>>) -> Value {
    serde_json::to_value(schema.into()).expect("a schema serializes: its maps have string keys")
}

/// `#/components/<kind>/<name>`.
pub(super) fn component(kind: &str, name: &str) -> Ref {
    Ref::new(format!("#/components/{kind}/{name}"))
}

/// `#/components/schemas/<name>`.
pub(super) fn schema_ref(name: &str) -> Ref {
    component("schemas", name)
}

/// A schema without a `type`: any value, until more is said.
pub(super) fn any() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

/// A string.
pub(super) fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// A string matching `pattern`.
pub(super) fn string_matching(pattern: &str) -> ObjectBuilder {
    string().pattern(Some(pattern))
}

/// Exactly `value` (`const`).
pub(super) fn constant(value: impl Into<Value>) -> ObjectBuilder {
    any().extensions(fields([("const", value.into())]))
}

/// `allOf: [schemas…]`, beside whatever else the schema says.
pub(super) fn all_of<const N: usize>(schemas: [Ref; N]) -> Option<Extensions> {
    fields([(
        "allOf",
        Value::Array(schemas.into_iter().map(json).collect()),
    )])
}

/// Named examples (`examples` of a parameter): name and value.
pub(super) fn examples(examples: &[(&str, &str)]) -> Value {
    Value::Object(
        examples
            .iter()
            .map(|(name, value)| {
                let example = ExampleBuilder::new().value(Some((*value).into())).build();
                let example = serde_json::to_value(example).expect("an example serializes to JSON");
                ((*name).to_owned(), example)
            })
            .collect(),
    )
}

/// A duration as people write it: `5 s`, `1500 ms`, `10 min`, `2 h`.
pub(super) fn human(d: Duration) -> String {
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

/// A response header.
pub(super) fn header(
    description: &str,
    schema: impl Into<RefOr<Schema>>,
    required: bool,
) -> Header {
    HeaderBuilder::new()
        .description(Some(description))
        .schema(Some(schema))
        .extensions(fields([("required", required.into())]))
        .build()
}

pub(super) fn correlation_id_header(required: bool) -> Header {
    header(
        if required {
            "The request's correlation id."
        } else {
            "The request's correlation id, on the gateway's answers that have one and on every reply."
        },
        schema_ref("CorrelationId"),
        required,
    )
}

pub(super) fn location_header() -> Header {
    header(
        "Where the reply can be fetched: `/v1/replies/{id}`. Only the gateway sets it (a reply's own `location` header is dropped).",
        string_matching(LOCATION_PATTERN),
        false,
    )
}

pub(super) fn retry_after_header(what: &str) -> Header {
    header(
        &format!("`1` (second) on {what}; a reply may carry its own."),
        string(),
        false,
    )
}

/// `WWW-Authenticate` on `401` and `403`.
pub(super) fn challenge_headers() -> Headers {
    vec![(
        "www-authenticate",
        header(
            "The challenge (`Bearer` or `ApiKey`, `realm`, and `error`, `scope` when they apply) on the gateway's answer.",
            string(),
            false,
        ),
    )]
}

/// `RateLimit` and `RateLimit-Policy` (IETF draft) on a rate-limited route's answers.
pub(super) fn rate_limit_headers() -> Headers {
    vec![
        (
            "ratelimit",
            header(
                "`limit=<burst>, remaining=<n>, reset=<seconds>` on the gateway's answers (IETF draft).",
                string(),
                false,
            ),
        ),
        (
            "ratelimit-policy",
            header(
                "`<burst>;w=<window seconds>` on the gateway's answers (IETF draft).",
                string(),
                false,
            ),
        ),
    ]
}

fn with_headers(mut response: ResponseBuilder, headers: Headers) -> ResponseBuilder {
    for (name, header) in headers {
        response = response.header(name, header);
    }
    response
}

/// The schema of a body that is the gateway's problem of one of `kinds` when its
/// `type` is one of the gateway's, and a service's reply otherwise.
fn problem_or_reply(kinds: &[ProblemKind]) -> ObjectBuilder {
    let prefix = ProblemKind::PREFIX;
    let is_problem = ObjectBuilder::new()
        .schema_type(Type::Object)
        .required("type")
        .property("type", string_matching(&format!("^{prefix}")));
    let is_one_of_these = AllOfBuilder::new()
        .item(schema_ref("Problem"))
        .item(any().property(
            "type",
            any().enum_values(Some(kinds.iter().map(|k| k.uri()))),
        ));
    any()
        .description(Some(format!(
            "The gateway's problem when `type` starts with `{prefix}`, else a reply with this status."
        )))
        .extensions(fields([
            ("if", json(is_problem)),
            ("then", json(is_one_of_these)),
        ]))
}

/// The link from an answer to its reply's pick-up (`#/components/links/GetReply`).
pub(super) fn get_reply_link() -> RefOr<Link> {
    RefOr::Ref(component("links", "GetReply"))
}

/// A response of a status that is the gateway's problem (one of `kinds`) or a
/// service's reply with that status.
pub(super) fn problem_response(
    description: &str,
    kinds: &[ProblemKind],
    headers: Headers,
) -> ResponseBuilder {
    with_headers(ResponseBuilder::new(), headers)
        .description(format!("{description} Or a reply with this status."))
        .header("correlation-id", correlation_id_header(false))
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(problem_or_reply(kinds)))
                .build(),
        )
        .content(
            "*/*",
            ContentBuilder::new()
                .schema(Some(schema_ref("ServiceReply")))
                .build(),
        )
}

/// The reply, with any status the operation does not list.
pub(super) fn reply_response(description: &str, headers: Headers) -> ResponseBuilder {
    with_headers(ResponseBuilder::new(), headers)
        .description(description)
        .header("correlation-id", correlation_id_header(true))
        .content(
            "*/*",
            ContentBuilder::new()
                .schema(Some(schema_ref("ServiceReply")))
                .build(),
        )
        .content(
            "text/event-stream",
            ContentBuilder::new()
                .schema(Some(string().description(Some(
                    "A streamed reply, with `Accept: text/event-stream`: one event per part (`id:` its number, `event: part` or `last`, `data:` its body; `event: timeout` when no part came in time).",
                ))))
                .build(),
        )
        .content(
            "application/x-ndjson",
            ContentBuilder::new()
                .schema(Some(string().description(Some(
                    "A streamed reply, with `Accept: application/x-ndjson`: one JSON object per part and line, `{\"part\", \"last\", \"status\", \"content_type\", \"body\"}`.",
                ))))
                .build(),
        )
        .link("GetReply", get_reply_link())
}

/// `202`: the gateway's pending answer, or a reply with status 202.
pub(super) fn pending_response(
    description: &str,
    preference_applied: bool,
    headers: Headers,
) -> ResponseBuilder {
    let mut response = with_headers(ResponseBuilder::new(), headers)
        .description(format!("{description} Or a reply with status 202."))
        .header("correlation-id", correlation_id_header(true))
        .header("location", location_header())
        .header(
            "retry-after",
            retry_after_header("the gateway's pending answer"),
        );
    if preference_applied {
        response = response.header(
            "preference-applied",
            header(
                "`respond-async` when the gateway answered a fresh request at once (not on a retry with an `Idempotency-Key`).",
                string(),
                false,
            ),
        );
    }
    let pending_or_reply = AnyOfBuilder::new()
        .item(schema_ref("PendingReply"))
        .item(schema_ref("ServiceReply"));
    response
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(pending_or_reply)).build(),
        )
        .content(
            "*/*",
            ContentBuilder::new()
                .schema(Some(schema_ref("ServiceReply")))
                .build(),
        )
        .link("GetReply", get_reply_link())
}

/// The `Prefer` request header (RFC 7240).
pub(super) fn prefer_parameter(description: String) -> Parameter {
    ParameterBuilder::new()
        .name("Prefer")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(string_matching(VISIBLE_ASCII_PATTERN)))
        .extensions(fields([(
            "examples",
            examples(&[("async", "respond-async"), ("wait", "wait=3")]),
        )]))
        .build()
}
