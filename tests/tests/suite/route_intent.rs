//! Routes that carry intent, end to end: a request's lane picked by its
//! `Priority` header reaches the lane's topic and is answered by a service
//! serving both lanes; a reply that breaks the route's reply schema is
//! answered `502` `invalid-reply`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};

use replyway_gateway::lanes::LaneRuleConfig;
use replyway_gateway::routes::RouteConfig;
use replyway_tests::probe::{spawn_gateway, spawn_gateway_with_admin};
use replyway_tests::{Stack, StackOptions, eventually, read_topic_to_end};

type TestResult = anyhow::Result<()>;

/// Whether `topic` holds a record with correlation id `id` (read to its end:
/// the command was produced before its reply came).
fn on_topic(stack: &Stack, topic: &str, id: &str) -> anyhow::Result<bool> {
    let records = read_topic_to_end(&stack.broker.kafka_settings(), topic)?;
    Ok(records.iter().any(|r| {
        r.headers().is_some_and(|h| {
            h.iter()
                .any(|h| h.key == "correlation-id" && h.value == Some(id.as_bytes()))
        })
    }))
}

fn correlation_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .expect("correlation-id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_priority_header_picks_the_lane_and_both_lanes_are_served() -> TestResult {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let high = format!("{}.high", stack.echo_topic);
    stack.broker.create_topics(&[&high], 1).await?;
    // The echo service serves the high lane before the low one.
    stack.echo.stop().await?;
    stack.echo_settings.lanes = vec![vec![high.clone()], vec![stack.echo_topic.clone()]];
    stack.restart_echo();

    let mut settings = stack.gateway_settings.clone();
    settings.routes = vec![RouteConfig {
        path: "/orders".into(),
        topic: String::new(),
        lanes: BTreeMap::from([
            ("high".to_owned(), high.clone()),
            ("low".to_owned(), stack.echo_topic.clone()),
        ]),
        default_lane: Some("low".into()),
        lane_rules: vec![LaneRuleConfig {
            lane: "high".into(),
            priority: Some("0-2".into()),
            ..LaneRuleConfig::default()
        }],
        timeout: Duration::from_secs(10),
        ..RouteConfig::default()
    }];
    let (base, stop) = spawn_gateway(settings).await?;
    let send = |priority: Option<&'static str>| {
        let mut request = stack.http.post(format!("{base}/orders")).body("order");
        if let Some(p) = priority {
            request = request.header("priority", p);
        }
        request.send()
    };
    let ready = eventually(Duration::from_secs(60), || async {
        send(None).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "the route was not answered");

    for (priority, topic, other) in [
        (Some("u=0"), &high, &stack.echo_topic),
        (Some("u=2, i"), &high, &stack.echo_topic),
        (Some("u=5"), &stack.echo_topic, &high),
        (None, &stack.echo_topic, &high),
    ] {
        let answered = send(priority).await?;
        assert_eq!(answered.status(), 200, "Priority {priority:?}");
        let id = correlation_id(&answered);
        assert_eq!(answered.text().await?, "order");
        assert!(on_topic(&stack, topic, &id)?, "{priority:?} not on {topic}");
        assert!(
            !on_topic(&stack, other, &id)?,
            "{priority:?} also on {other}"
        );
    }
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_that_breaks_the_reply_schema_is_a_502_and_counted() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let schema = dir.path().join("reply.json");
    std::fs::write(
        &schema,
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["ok"],
            "properties": { "ok": { "type": "boolean" } }
        })
        .to_string(),
    )?;
    let mut settings = stack.gateway_settings.clone();
    settings.routes = vec![RouteConfig {
        path: "/checked".into(),
        topic: stack.echo_topic.clone(),
        reply_schema: Some(schema),
        timeout: Duration::from_secs(10),
        ..RouteConfig::default()
    }];
    let (base, admin, stop) = spawn_gateway_with_admin(settings).await?;
    let send = |body: &'static str| {
        stack
            .http
            .post(format!("{base}/checked"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ready = eventually(Duration::from_secs(20), || async {
        send(r#"{"ok":true}"#)
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "a reply that matches was not answered 200");

    // The service echoes the body: a body without `ok` is a reply without it.
    let broken = send(r#"{"ok":"yes","n":1}"#).await?;
    assert_eq!(broken.status(), 502);
    let id = correlation_id(&broken);
    let problem: Value = broken.json().await?;
    assert_eq!(problem["type"], "urn:replyway:problem:invalid-reply");
    assert_eq!(problem["correlation_id"], id.as_str());
    assert_eq!(problem["violation_count"], 1);
    assert_eq!(problem["violations"][0]["pointer"], "/ok");
    assert_eq!(problem["violations"][0]["keyword"], "type");

    // The same reply fetched later is checked as well.
    let fetched = stack
        .http
        .get(format!("{base}/v1/replies/{id}"))
        .send()
        .await?;
    assert_eq!(fetched.status(), 502);

    // Only 2xx replies are the service's contract: a 404 passes as it is.
    let missing = send(r#"{"status":404}"#).await?;
    assert_eq!(missing.status(), 404);
    let counted = stack
        .metric_sum(
            &admin,
            "replyway_gateway_invalid_replies_total",
            &[("route", "POST /checked")],
        )
        .await;
    assert_eq!(counted, Some(2.0), "the answer and the pick-up");
    stop.cancel();
    stack.shutdown().await
}
