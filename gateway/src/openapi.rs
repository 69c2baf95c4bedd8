//! The gateway's OpenAPI 3.1 description of itself, served at `GET /openapi.json`:
//! its own endpoints (`/v1/replies/{id}`, `/healthz`, `/readyz`, `/openapi.json`)
//! and every configured route. It is built once, from the settings and the
//! route table, with utoipa's typed model (no derive macros: the routes are
//! configuration, not code).
//!
//! A configured route answers with whatever its service replies — any status
//! 200–599, any content type — so every status the gateway answers itself on a
//! route (`202`, `400`, `401`, `403`, `404`, `408`, `413`, `422`, `429`, `503`,
//! `504`) may also be a service's reply. The document says so: such a response is
//! either the gateway's problem, recognisable by its `urn:replyway:problem:` type
//! and then described exactly by the `Problem` schema (made from
//! [`ProblemKind::ALL`](crate::problem::ProblemKind::ALL)), or the service's
//! reply, which can be anything.

mod components;
mod own;
mod parts;
mod route;
#[cfg(test)]
mod tests;

use axum::body::Bytes;
use axum::http::Method;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, OpenApiVersion, PathItem, PathsBuilder,
};

use crate::config::Settings;
use crate::routes::RouteTable;

/// The `openapi` field: the version of the specification the document follows
/// (utoipa can write 3.2 too; tools and clients read 3.1).
const OPENAPI_VERSION: &str = "3.1.0";

/// The OpenAPI 3.1 document of the gateway with these routes and settings, as
/// JSON: built once at start and served as it is.
///
/// Serialized through `serde_json::Value`, whose maps keep their keys sorted:
/// utoipa keeps schema extensions in a `HashMap`, whose order differs between
/// processes, and every replica must serve the same bytes.
pub fn document(routes: &RouteTable, settings: &Settings) -> Bytes {
    let value = serde_json::to_value(openapi(routes, settings))
        .expect("an OpenAPI document serializes: its maps have string keys");
    Bytes::from(value.to_string())
}

/// The document, typed.
pub fn openapi(routes: &RouteTable, settings: &Settings) -> OpenApi {
    let mut paths = PathsBuilder::new()
        .path("/v1/replies/{id}", {
            let mut item = PathItem::new(HttpMethod::Get, own::get_reply(settings));
            item.delete = Some(own::delete_reply(settings));
            item
        })
        .path("/healthz", PathItem::new(HttpMethod::Get, own::healthz()))
        .path("/readyz", PathItem::new(HttpMethod::Get, own::readyz()))
        .path(
            "/openapi.json",
            PathItem::new(HttpMethod::Get, own::openapi()),
        );
    if settings.websocket.enabled {
        paths = paths.path(
            "/v1/ws",
            PathItem::new(HttpMethod::Get, own::websocket(settings)),
        );
    }

    // Routes the document cannot describe as operations, said in prose.
    let mut notes = Vec::new();
    let mut operation_ids = Vec::new();
    for route in routes.routes() {
        let pattern = route.path_pattern();
        let Some(method) = documentable_method(&route.method) else {
            let mut label = format!("`{} {pattern}`", route.method);
            if route.name != format!("{} {pattern}", route.method) {
                label.push_str(&format!(" (route {:?})", route.name));
            }
            notes.push(format!(
                "{label} is served, but OpenAPI 3.1 has no field for the method {}.",
                route.method
            ));
            continue;
        };
        let operation_id = unique_operation_id(&route.method, &pattern, &mut operation_ids);
        let operation = route::operation(settings, route, &operation_id);
        // The route table holds no two routes of one method and path, and none
        // on the gateway's own paths: each operation has a place of its own.
        paths = paths.path(pattern, PathItem::new(method, operation));
    }

    let mut description = String::from(DESCRIPTION);
    if !notes.is_empty() {
        description.push_str("\n\nConfigured routes not described as operations:\n");
        for note in &notes {
            description.push_str("\n* ");
            description.push_str(note);
        }
    }

    OpenApiBuilder::new()
        .openapi(OpenApiVersion::Version31)
        .info(
            InfoBuilder::new()
                .title("Replyway gateway")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(description))
                .license(Some(
                    LicenseBuilder::new()
                        .name("Apache-2.0")
                        .identifier(Some("Apache-2.0"))
                        .build(),
                )),
        )
        .tags(Some([
            TagBuilder::new()
                .name("routes")
                .description(Some("The configured routes: each request becomes a Kafka command, answered with its service's reply."))
                .build(),
            TagBuilder::new()
                .name("gateway")
                .description(Some("The gateway's own endpoints."))
                .build(),
        ]))
        .paths(paths)
        .components(Some(components::components(settings, routes)))
        .build()
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
fn documentable_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::PUT => HttpMethod::Put,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        Method::OPTIONS => HttpMethod::Options,
        Method::HEAD => HttpMethod::Head,
        Method::PATCH => HttpMethod::Patch,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

/// `<method>_<path words>`, numbered when taken (by a route, or by one of the
/// gateway's own operations).
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
