//! `Idempotency-Key`: a retry gets the first request's reply and produces nothing.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;

use replyway_tests::{Stack, StackOptions, records_with_value};

type TestResult = anyhow::Result<()>;

async fn post(
    stack: &Stack,
    gateway: usize,
    key: &str,
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    let response = stack
        .http
        .post(stack.url(gateway, "/echo"))
        .header("idempotency-key", format!("\"{key}\""))
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, id, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_gets_the_same_reply_and_produces_nothing() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        ..StackOptions::default()
    })
    .await?;
    let kafka = stack.broker.kafka_settings();
    let commands = |body: &str| records_with_value(&kafka, &stack.echo_topic, body.as_bytes());
    let (status, id, body) = post(&stack, 0, "order-1", r#"{"n":1}"#).await?;
    assert_eq!((status, body.as_str()), (200, r#"{"n":1}"#));
    // The retry, on the other replica.
    let (status, retry_id, body) = post(&stack, 1, "order-1", r#"{"n":1}"#).await?;
    assert_eq!((status, body.as_str()), (200, r#"{"n":1}"#));
    assert_eq!(retry_id, id);
    assert_eq!(commands(r#"{"n":1}"#)?, 1, "the retry was produced again");

    // Same key, other body: 422, nothing produced.
    let (status, _, problem) = post(&stack, 1, "order-1", r#"{"n":2}"#).await?;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.contains("idempotency-key-reused"));
    assert_eq!(commands(r#"{"n":2}"#)?, 0, "a refused request was produced");
    // Another key is another request.
    let (status, other_id, _) = post(&stack, 0, "order-2", r#"{"n":1}"#).await?;
    assert_eq!(status, 200);
    assert_ne!(other_id, id);
    assert_eq!(commands(r#"{"n":1}"#)?, 2, "one command for each key");

    // Malformed keys.
    for bad in ["\"unterminated", "\"\"", &"k".repeat(300)] {
        let r = stack
            .http
            .post(stack.url(0, "/echo"))
            .header("idempotency-key", bad)
            .body("x")
            .send()
            .await?;
        assert_eq!(r.status(), 400, "key {bad:?}");
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_on_two_replicas_produce_one_command() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        ..StackOptions::default()
    })
    .await?;
    let body = r#"{"sleep_ms":700,"transfer":"a->b"}"#;
    let results = join_all((0..10).map(|i| post(&stack, i % 2, "transfer-77", body))).await;
    let mut ids = HashSet::new();
    for result in results {
        let (status, id, answer) = result?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, body);
        ids.insert(id);
    }
    assert_eq!(
        ids.len(),
        1,
        "concurrent retries got different correlations: {ids:?}"
    );
    // Every answer came after its command was acknowledged by the broker, so
    // a second command would be in the log by now.
    assert_eq!(
        records_with_value(
            &stack.broker.kafka_settings(),
            &stack.echo_topic,
            body.as_bytes()
        )?,
        1,
        "more than one command produced"
    );

    // A retry while the first is still in flight waits for the same reply.
    let slow = r#"{"sleep_ms":1500}"#;
    let (first, retry) = tokio::join!(post(&stack, 0, "slow-1", slow), async {
        // Sent once the first waits for its reply on the other replica.
        let waiting = stack.until_waiting(0, 1, Duration::from_secs(10)).await;
        anyhow::ensure!(waiting, "the first request never waited");
        post(&stack, 1, "slow-1", slow).await
    });
    let (first, retry) = (first?, retry?);
    assert_eq!(first.0, 200);
    assert_eq!(retry, first);
    assert_eq!(
        records_with_value(
            &stack.broker.kafka_settings(),
            &stack.echo_topic,
            slow.as_bytes()
        )?,
        1,
        "the retry in flight was produced again"
    );
    // Async retry of a finished request answers with the reply at once.
    let response = stack
        .http
        .post(stack.url(1, "/echo"))
        .header("idempotency-key", "slow-1")
        .header("prefer", "respond-async")
        .body(slow)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, slow);
    stack.shutdown().await
}
