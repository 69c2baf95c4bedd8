//! `GET /openapi.json` through the router, driven with `oneshot` (no Redis or
//! Kafka needed: the document comes from the settings alone).
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use replyway_gateway::problem::ProblemKind;
use replyway_gateway::routes::RouteConfig;

mod common;

fn app() -> axum::Router {
    common::app(RouteConfig {
        method: "POST".into(),
        path: "/orders/{id}".into(),
        topic: "orders".into(),
        key: "{param.id}".into(),
        forward_headers: vec!["x-request-id".into()],
        ..RouteConfig::default()
    })
}

#[tokio::test]
async fn openapi_json_describes_the_gateway_and_its_routes() {
    let response = app()
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let post = &doc["paths"]["/orders/{id}"]["post"];
    assert_eq!(post["parameters"][0]["name"], "id");
    assert_eq!(post["parameters"][0]["in"], "path");
    assert!(
        post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "x-request-id" && p["in"] == "header")
    );
    for path in ["/v1/replies/{id}", "/healthz", "/readyz", "/openapi.json"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    // Every problem type the gateway answers with, and no other.
    let types = &doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"];
    let all: Vec<&str> = ProblemKind::ALL.iter().map(|k| k.uri()).collect();
    assert_eq!(*types, serde_json::json!(all));
    let unavailable = &post["responses"]["503"]["content"]["application/problem+json"]["schema"];
    assert!(
        unavailable["then"]["allOf"][1]["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .contains(&ProblemKind::NoResponders.uri().into())
    );
}

#[tokio::test]
async fn openapi_json_answers_only_get() {
    let response = app()
        .oneshot(Request::post("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}
