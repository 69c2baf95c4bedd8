//! The router alone, driven with `oneshot`: everything the gateway decides
//! before it needs Redis or Kafka, and its answer when Redis is unreachable.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use replyway_gateway::routes::RouteConfig;
use replyway_gateway::{AppState, Settings};

mod common;

use common::closed_port;

fn app() -> axum::Router {
    common::app(RouteConfig {
        name: None,
        method: "POST".into(),
        path: "/orders/{id}".into(),
        topic: "orders".into(),
        key: "{param.id}".into(),
        timeout: Duration::from_secs(1),
        body_limit: 8,
        forward_headers: vec![],
        ..RouteConfig::default()
    })
}

async fn call(request: Request<Body>) -> (StatusCode, String, serde_json::Value) {
    let response = app().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

#[tokio::test]
async fn unknown_route_is_a_404_problem() {
    let (status, ct, body) = call(Request::post("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["status"], 404);
    assert_eq!(
        body["type"],
        replyway_gateway::problem::ProblemKind::NoRoute.uri()
    );
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_with_allow() {
    let response = app()
        .oneshot(Request::get("/orders/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["type"], "urn:replyway:problem:method-not-allowed");
}

/// `max_waiting` is taken before the body is read: a request still sending
/// its body holds the node's only place, and the next one is refused at
/// once, without reading anything.
#[tokio::test]
async fn the_admission_bound_is_taken_before_the_body_is_read() {
    let mut settings = common::unreachable_settings(RouteConfig {
        path: "/orders/{id}".into(),
        ..RouteConfig::default()
    });
    settings.max_waiting = 1;
    let app = replyway_gateway::router(AppState::new(
        settings.build().unwrap(),
        CancellationToken::new(),
    ));
    // A body that never ends: the first request waits for it holding its place.
    let reading = std::sync::Arc::new(tokio::sync::Notify::new());
    let body = Body::from_stream(futures::stream::poll_fn({
        let reading = std::sync::Arc::clone(&reading);
        move |_| {
            reading.notify_one();
            std::task::Poll::<Option<Result<bytes::Bytes, std::io::Error>>>::Pending
        }
    }));
    let first = tokio::spawn(
        app.clone()
            .oneshot(Request::post("/orders/1").body(body).unwrap()),
    );
    tokio::time::timeout(Duration::from_secs(10), reading.notified())
        .await
        .expect("the first request reads its body");
    let refused = app
        .clone()
        .oneshot(Request::post("/orders/2").body(Body::from("x")).unwrap())
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let bytes = refused.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["type"], "urn:replyway:problem:overloaded");
    assert!(
        !first.is_finished(),
        "the first request still reads its body"
    );
    first.abort();
}

#[tokio::test]
async fn body_over_the_limit_is_a_413() {
    let (status, ct, _) = call(
        Request::post("/orders/1")
            .body(Body::from("123456789"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(ct, "application/problem+json");
}

#[tokio::test]
async fn malformed_reply_id_is_a_400() {
    let (status, _, _) = call(
        Request::get("/v1/replies/a%7Bb%7D")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Not even UTF-8 once decoded: the same problem answer.
    let (status, ct, body) =
        call(Request::get("/v1/replies/%FF").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(
        body["type"],
        replyway_gateway::problem::ProblemKind::BadRequest.uri()
    );
}

#[tokio::test]
async fn credentials_mean_nothing_where_no_authentication_is_configured() {
    // No [auth]: an Authorization header meant for someone else is ignored
    // (the lookup then meets the unreachable Redis: 503, not 401).
    for value in ["Basic Zm9v", "Bearer some-token"] {
        let (status, _, _) = call(
            Request::get("/v1/replies/0b0e7a4c-5f0e-4d59-9d4e-2f4f1d3c9a10")
                .header("authorization", value)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    }
}

#[tokio::test]
async fn unreachable_redis_is_a_503_with_retry_after() {
    let response = app()
        .oneshot(Request::post("/orders/1").body(Body::from("ok")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[tokio::test]
async fn healthz_answers() {
    let response = app()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn invalid_settings_name_the_setting() {
    let settings = Settings {
        routes: vec![RouteConfig {
            name: None,
            method: "POST".into(),
            path: "/x".into(),
            topic: "t".into(),
            key: "{correlation_id}".into(),
            timeout: Duration::from_secs(3600),
            body_limit: 8,
            forward_headers: vec![],
            ..RouteConfig::default()
        }],
        ..Settings::default()
    };
    assert_eq!(
        settings.route_table().unwrap_err().setting,
        "routes[0].timeout"
    );
}

/// What a waiting request keeps allocated is its answer's future (the
/// submission before the wait is boxed apart and freed), so both must stay
/// small: with thousands of requests at once, every byte counts thousands of
/// times. The sizes are in bench/results/future-sizes.txt (1 024 and 2 448
/// bytes; an axum handler's future was 1 800 bytes, the submission 3 568).
#[tokio::test]
async fn a_requests_futures_stay_small() {
    let mut settings = Settings::default();
    settings.redis.url = format!("redis://127.0.0.1:{}", closed_port()).into();
    settings.routes = vec![RouteConfig {
        path: "/orders/{id}".into(),
        ..RouteConfig::default()
    }];
    let state = AppState::new(settings.build().unwrap(), CancellationToken::new());
    let route = std::sync::Arc::new(state.routes.routes()[0].clone());
    let service = replyway_gateway::serving::RouteService::new(state, route);
    let (submission, answer) =
        service.allocation_sizes(Request::post("/orders/1").body(Body::empty()).unwrap());
    eprintln!("a request's submission: {submission} bytes; its answer: {answer} bytes");
    assert!(
        answer <= ANSWER_BOUND,
        "the answer future is {answer} bytes"
    );
    assert!(
        submission <= SUBMISSION_BOUND,
        "the submission future is {submission} bytes"
    );
}

/// Most bytes a request's answer may take.
const ANSWER_BOUND: usize = 1280;
/// Most bytes a request's submission may take.
const SUBMISSION_BOUND: usize = 2560;

/// A route with a schema checks the body after reading it and before Redis
/// (unreachable here): a matching body reaches Redis (`503`), a mismatch is
/// `422` with every violation, a body not declared JSON `415`.
#[tokio::test]
async fn a_schema_is_checked_before_anything_is_written() {
    let app = common::app(RouteConfig {
        path: "/ledger/transfers".into(),
        topic: "ledger".into(),
        schema: Some(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/schemas/ledger-transfer.json"
            )
            .into(),
        ),
        ..RouteConfig::default()
    });
    let send = |content_type: &'static str, body: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(
                    Request::post("/ledger/transfers")
                        .header("content-type", content_type)
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };

    let (status, body) = send("application/json", r#"{"from":"a","to":"b","amount":5}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let (status, body) = send("application/json", r#"{"from":"","amount":"5","extra":1}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["type"], "urn:replyway:problem:invalid-body");
    let found: Vec<(String, String)> = body["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["pointer"].as_str().unwrap().to_owned(),
                v["keyword"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (pointer, keyword) in [
        ("", "required"),
        ("", "additionalProperties"),
        ("/from", "pattern"),
        ("/amount", "type"),
    ] {
        assert!(
            found.contains(&(pointer.to_owned(), keyword.to_owned())),
            "{pointer} {keyword} not in {found:?}"
        );
    }
    assert_eq!(body["violation_count"], found.len());

    let (status, body) = send("text/plain", r#"{"from":"a","to":"b","amount":5}"#).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["type"], "urn:replyway:problem:unsupported-media-type");

    let (status, body) = send(
        "Application/JSON; charset=utf-8",
        r#"{"from":"a","to":"b","amount":5}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let (status, _) = send("application/merge-patch+json", "not json").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A schema that cannot be read or compiled stops the start, naming the route
/// and the file.
#[test]
fn a_broken_schema_names_route_and_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"type": "no-such-type"}"#).unwrap();
    let settings = Settings {
        routes: vec![RouteConfig {
            path: "/x".into(),
            schema: Some(file.path().into()),
            ..RouteConfig::default()
        }],
        ..Settings::default()
    };
    let error = settings.route_table().unwrap_err();
    assert_eq!(error.setting, "routes[0].schema");
    let message = error.to_string();
    assert!(message.contains("POST /x"), "{message}");
    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
}
