#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::parts::human;
use super::*;
use crate::auth::{ApiKeyConfig, AuthConfig};
use crate::problem::ProblemKind;
use crate::routes::RouteConfig;

fn route(method: &str, path: &str) -> RouteConfig {
    RouteConfig {
        method: method.into(),
        path: path.into(),
        topic: "transfers".into(),
        ..RouteConfig::default()
    }
}

fn settings() -> Settings {
    // As the configuration file writes it.
    let admin: RouteConfig = serde_json::from_value(json!({
        "method": "DELETE",
        "path": "/admin/{thing}",
        "topic": "admin",
        "auth": "api_key",
        "scopes": ["admin"],
        "rate_limit": { "requests": 10, "per": "1s", "burst": 5 },
    }))
    .unwrap();
    Settings {
        client_id_header: Some("x-client-id".into()),
        routes: vec![
            RouteConfig {
                body_limit: 4096,
                forward_headers: vec!["X-Request-Id".into(), "Authorization".into()],
                ..route("POST", "/accounts/{account}/transfers")
            },
            route("get", "/accounts/{account}/transfers"),
            route("CONNECT", "/tunnel"),
            route("POST", "/a-b"),
            route("POST", "/a_b"),
            admin,
            RouteConfig {
                schema: Some(
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../config/schemas/ledger-transfer.json"
                    )
                    .into(),
                ),
                reply_schema: Some(
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../config/schemas/ledger-transfer-reply.json"
                    )
                    .into(),
                ),
                ..route("POST", "/ledger/transfers")
            },
        ],
        auth: AuthConfig {
            api_keys: vec![ApiKeyConfig {
                id: "ops".into(),
                sha256: "0".repeat(64),
                scopes: vec!["admin".into()],
            }],
            ..AuthConfig::default()
        },
        ..Settings::default()
    }
}

fn doc() -> Value {
    let settings = settings();
    let routes = settings.route_table().unwrap();
    serde_json::from_slice(&document(&routes, &settings)).unwrap()
}

/// Every schema in the document, depth first.
fn schemas(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if let Some(schema) = map.get("schema") {
                found.push(schema.clone());
            }
            map.values().for_each(|v| schemas(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| schemas(v, found)),
        _ => {}
    }
}

#[test]
fn routes_parameters_and_own_endpoints_appear() {
    let doc = doc();
    assert_eq!(doc["openapi"], OPENAPI_VERSION);
    assert_eq!(
        doc["paths"]["/openapi.json"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["properties"]["openapi"]["const"],
        OPENAPI_VERSION
    );
    for path in ["/v1/replies/{id}", "/healthz", "/readyz", "/openapi.json"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
        assert!(
            doc["paths"][path]["get"]["responses"]["431"].is_object(),
            "{path}"
        );
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
        post["description"]
            .as_str()
            .unwrap()
            .contains("Also forwarded as `header-<name>`: `authorization`")
    );
    assert!(
        post["requestBody"]["description"]
            .as_str()
            .unwrap()
            .contains("4096 bytes")
    );
    for status in [
        "default", "202", "400", "404", "408", "413", "422", "431", "503", "504",
    ] {
        assert!(post["responses"][status].is_object(), "{status}");
    }
    assert_eq!(
        post["responses"]["504"]["headers"]["location"]["schema"]["type"],
        "string"
    );
    assert_eq!(
        post["responses"]["504"]["links"]["GetReply"]["$ref"],
        "#/components/links/GetReply"
    );

    // Two methods on one path share its path item.
    let get = &item["get"];
    assert_eq!(get["parameters"][0]["name"], "account");
    assert!(
        get["parameters"][0]["description"]
            .as_str()
            .unwrap()
            .contains("param-account")
    );

    // A method OpenAPI 3.1 has no field for is named, not described.
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(description.contains("`CONNECT /tunnel` is served"));
    assert!(doc["paths"].get("/tunnel").is_none());
    assert_eq!(doc["paths"].as_object().unwrap().len(), 9);
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
    assert!(delete["responses"]["401"]["headers"]["www-authenticate"].is_object());
    assert!(delete["responses"]["429"]["headers"]["retry-after"].is_object());
    assert!(delete["responses"]["default"]["headers"]["ratelimit"].is_object());
    assert!(delete["responses"]["202"]["headers"]["ratelimit-policy"].is_object());
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
fn without_auth_there_are_no_security_schemes_or_401() {
    let settings = Settings {
        routes: vec![route("POST", "/orders")],
        ..Settings::default()
    };
    let routes = settings.route_table().unwrap();
    let doc: Value = serde_json::from_slice(&document(&routes, &settings)).unwrap();
    assert!(doc["components"].get("securitySchemes").is_none());
    assert!(
        doc["paths"]["/v1/replies/{id}"]["get"]["responses"]
            .get("401")
            .is_none()
    );
    // No path parameters: no 404 for a segment that does not decode.
    assert!(
        doc["paths"]["/orders"]["post"]["responses"]
            .get("404")
            .is_none()
    );
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
    assert!(ids.contains(&"post_a_b".to_owned()));
    assert!(ids.contains(&"post_a_b_2".to_owned()));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count);
}

/// Every problem type is in the `Problem` schema, with its status and title,
/// and is named by some response the gateway can give it on.
#[test]
fn every_problem_kind_is_documented() {
    let doc = doc();
    let problem = &doc["components"]["schemas"]["Problem"];
    let documented: Vec<&str> = problem["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let all: Vec<&str> = ProblemKind::ALL.iter().map(|k| k.uri()).collect();
    assert_eq!(documented, all);
    let rules = problem["allOf"].as_array().unwrap();
    for kind in ProblemKind::ALL {
        let rule = rules
            .iter()
            .find(|r| r["if"]["properties"]["type"]["const"] == kind.uri())
            .unwrap_or_else(|| panic!("no rule for {kind:?}"));
        assert_eq!(
            rule["then"]["properties"]["status"]["const"],
            kind.status().as_u16()
        );
        assert_eq!(rule["then"]["properties"]["title"]["const"], kind.title());
        assert!(
            problem["properties"]["type"]["description"]
                .as_str()
                .unwrap()
                .contains(kind.description())
        );
    }

    // The types the responses name, on operations and in components.
    let mut found = Vec::new();
    schemas(&doc["paths"], &mut found);
    schemas(&doc["components"]["responses"], &mut found);
    let mut named = BTreeSet::new();
    for schema in &found {
        for types in [
            &schema["then"]["allOf"][1]["properties"]["type"]["enum"],
            &json!([schema["properties"]["type"]["const"]]),
        ] {
            for t in types.as_array().into_iter().flatten() {
                if let Some(kind) = t.as_str().and_then(ProblemKind::from_uri) {
                    named.insert(kind.uri());
                }
            }
        }
    }
    for kind in ProblemKind::ALL {
        assert!(named.contains(kind.uri()), "no response names {kind:?}");
    }
}

/// What utoipa's model has no field for reaches the document where the
/// specification puts it (see `parts::fields`).
#[test]
fn fields_outside_utoipas_model_arrive() {
    let doc = doc();
    let healthz = &doc["paths"]["/healthz"]["get"]["responses"]["200"];
    assert_eq!(
        healthz["content"]["text/plain"]["schema"],
        json!({ "type": "string", "const": "ok" })
    );
    let post = &doc["paths"]["/accounts/{account}/transfers"]["post"];
    let bad = &post["responses"]["400"]["content"]["application/problem+json"]["schema"];
    assert_eq!(bad["if"]["required"], json!(["type"]));
    assert_eq!(
        bad["then"]["allOf"][0]["$ref"],
        "#/components/schemas/Problem"
    );
    assert_eq!(
        post["responses"]["default"]["headers"]["correlation-id"]["required"],
        true
    );
    assert_eq!(
        post["responses"]["400"]["headers"]["correlation-id"]["required"],
        false
    );
    let prefer = post["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Prefer")
        .unwrap();
    assert_eq!(prefer["examples"]["async"]["value"], "respond-async");
    let problem = &doc["components"]["schemas"]["Problem"];
    assert_eq!(problem["additionalProperties"], false);
    let last = problem["allOf"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["then"],
        json!({ "not": { "required": ["correlation_id"] } })
    );
    // No field went in as an `x-` extension by mistake.
    fn keys(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                found.extend(map.keys().cloned());
                map.values().for_each(|v| keys(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| keys(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    keys(&doc, &mut found);
    assert!(found.iter().all(|k| !k.starts_with("x-")));
}

#[test]
fn the_document_is_the_typed_one_serialized() {
    let settings = settings();
    let routes = settings.route_table().unwrap();
    let bytes = document(&routes, &settings);
    let parsed: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        parsed,
        serde_json::to_value(openapi(&routes, &settings)).unwrap()
    );
    assert_eq!(parsed["info"]["license"]["identifier"], "Apache-2.0");
    assert_eq!(
        parsed["components"]["links"]["GetReply"]["operationId"],
        "getReply"
    );
}

#[test]
fn durations_read_as_people_write_them() {
    assert_eq!(human(Duration::from_secs(5)), "5 s");
    assert_eq!(human(Duration::from_millis(1500)), "1500 ms");
    assert_eq!(human(Duration::from_secs(600)), "10 min");
    assert_eq!(human(Duration::from_secs(90)), "90 s");
    assert_eq!(human(Duration::from_secs(7200)), "2 h");
}

/// Every replica serves the same bytes: utoipa's extension maps are hashed,
/// and a map's order must not reach the document.
#[test]
fn the_document_is_the_same_bytes_every_time() {
    let settings = settings();
    let routes = settings.route_table().unwrap();
    let first = super::document(&routes, &settings);
    for _ in 0..20 {
        assert_eq!(super::document(&routes, &settings), first);
    }
}

/// A route with a schema takes JSON matching it: the schema is the request
/// body's, and `415` and `invalid-body` are among its answers.
#[test]
fn a_routes_schema_is_its_request_body() {
    let doc = doc();
    let post = &doc["paths"]["/ledger/transfers"]["post"];
    let body = &post["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["required"], json!(["from", "to", "amount"]));
    assert_eq!(body["properties"]["amount"]["type"], "integer");
    assert_eq!(post["requestBody"]["required"], true);
    assert!(post["responses"]["415"].is_object());
    let other = &doc["paths"]["/a-b"]["post"];
    assert!(other["requestBody"]["content"]["*/*"].is_object());
    assert!(other["responses"]["415"].is_null());
}

#[test]
fn cancellation_lanes_and_reply_schemas_are_described() {
    let mut settings = settings();
    settings.routes.push(RouteConfig {
        topic: String::new(),
        lanes: [
            ("high".to_owned(), "orders.high".to_owned()),
            ("low".to_owned(), "orders".to_owned()),
        ]
        .into(),
        default_lane: Some("low".into()),
        lane_rules: vec![crate::lanes::LaneRuleConfig {
            lane: "high".into(),
            priority: Some("0-2".into()),
            ..crate::lanes::LaneRuleConfig::default()
        }],
        on_disconnect: crate::routes::OnDisconnect::Keep,
        ..route("POST", "/orders")
    });
    settings.websocket.enabled = true;
    let routes = settings.route_table().unwrap();
    let doc: Value = serde_json::from_slice(&document(&routes, &settings)).unwrap();
    let ws = &doc["paths"]["/v1/ws"]["get"];
    assert!(ws["responses"]["101"].is_object(), "{ws}");
    assert!(
        ws["description"]
            .as_str()
            .unwrap()
            .contains("At most 64 commands")
    );
    assert!(self::doc()["paths"]["/v1/ws"].is_null(), "off by default");

    let delete = &doc["paths"]["/v1/replies/{id}"]["delete"];
    assert_eq!(delete["operationId"], "cancelRequest");
    for status in ["202", "400", "404", "409", "503", "401"] {
        assert!(delete["responses"][status].is_object(), "DELETE {status}");
    }
    assert_eq!(
        delete["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/PendingReply"
    );
    let statuses = &doc["components"]["schemas"]["PendingReply"]["properties"]["status"]["enum"];
    assert_eq!(statuses, &json!(["pending", "cancelled"]));

    let orders = &doc["paths"]["/orders"]["post"];
    let priority = orders["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "priority")
        .expect("a route whose lanes read Priority documents it");
    assert!(
        priority["description"]
            .as_str()
            .unwrap()
            .contains("RFC 9218")
    );
    let description = orders["description"].as_str().unwrap();
    assert!(
        description.contains("`high` (topic `orders.high`)"),
        "{description}"
    );
    assert!(
        description.contains("leaves the command to be served"),
        "{description}"
    );
    // Only routes with a reply schema answer 502 invalid-reply.
    assert!(orders["responses"]["502"].is_null());
    let ledger = &doc["paths"]["/ledger/transfers"]["post"];
    assert!(
        ledger["responses"]["502"]["description"]
            .as_str()
            .unwrap()
            .contains("invalid-reply")
    );
    // Streamed replies: on every route's answer, and resumed on GET.
    let content = &ledger["responses"]["default"]["content"];
    assert!(
        content["text/event-stream"].is_object() && content["application/x-ndjson"].is_object()
    );
    assert!(
        doc["paths"]["/v1/replies/{id}"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Last-Event-ID")
    );
    // A route without lanes takes no Priority parameter.
    assert!(
        !ledger["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "priority")
    );
}

#[test]
fn a_route_with_callbacks_documents_callback_url() {
    let mut settings = settings();
    settings.callbacks.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
    settings.routes.push(RouteConfig {
        callbacks: Some(crate::callbacks::RouteCallbacksConfig {
            allow_hosts: vec!["hooks.example.com".into(), "*.example.org".into()],
            ..crate::callbacks::RouteCallbacksConfig::default()
        }),
        ..route("POST", "/notify")
    });
    let routes = settings.route_table().unwrap();
    let doc: Value = serde_json::from_slice(&document(&routes, &settings)).unwrap();
    let parameter = |path: &str| {
        doc["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Callback-URL")
            .cloned()
    };
    let callback = parameter("/notify").expect("a route with callbacks documents Callback-URL");
    assert_eq!(callback["in"], "header");
    assert_eq!(callback["schema"]["format"], "uri");
    let text = callback["description"].as_str().unwrap();
    for part in [
        "`https` only",
        "`hooks.example.com`",
        "`*.example.org`",
        "webhook-signature",
        "public addresses",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(
        doc["paths"]["/notify"]["post"]["responses"]["400"]["description"]
            .as_str()
            .unwrap()
            .contains("Callback-URL")
    );
    assert!(
        parameter("/a-b").is_none(),
        "a route without callbacks has no Callback-URL"
    );
    let pickup = &doc["paths"]["/v1/replies/{id}"]["get"]["responses"];
    for status in ["default", "202"] {
        assert!(
            pickup[status]["headers"]["callback-state"].is_object(),
            "GET {status}: {}",
            pickup[status]
        );
        assert!(pickup[status]["headers"]["callback-attempts"].is_object());
    }
    assert!(
        self::doc()["paths"]["/v1/replies/{id}"]["get"]["responses"]["202"]["headers"]
            ["callback-state"]
            .is_null(),
        "no callback headers without callback routes"
    );
}
