//! Request schemas end to end, on Apache Kafka: only a body that matches the
//! route's schema becomes a command; a refused one leaves nothing on the
//! topic and nothing in Redis.

use std::collections::BTreeSet;
use std::time::Duration;

use replyway_gateway::routes::RouteConfig;
use replyway_tests::probe::header;
use replyway_tests::{Stack, StackOptions, read_topic_to_end};

type TestResult = anyhow::Result<()>;

/// The ledger's transfer schema, as `make run` uses it.
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../config/schemas/ledger-transfer.json"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_bodies_matching_the_schema_become_commands() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| {
            let topic = g.routes[0].topic.clone();
            g.routes.push(RouteConfig {
                path: "/transfers".into(),
                topic,
                timeout: Duration::from_secs(10),
                schema: Some(SCHEMA.into()),
                ..RouteConfig::default()
            });
        },
        ..StackOptions::default()
    })
    .await?;
    let url = stack.url(0, "/transfers");
    let send = |content_type: &'static str, body: &'static str| {
        stack
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    // The stack's readiness probes left records of their own.
    let before = ids_in_redis(&stack).await?;

    let valid = r#"{"from":"alice","to":"bob","amount":5}"#;
    let answer = send("application/json", valid).await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await?, valid, "the echo service's reply");

    let refused = [
        (
            "application/json",
            r#"{"from":"","amount":"5","extra":1}"#,
            422,
        ),
        ("application/json", "not json", 422),
        ("text/plain", valid, 415),
    ];
    for (content_type, body, status) in refused {
        let answer = send(content_type, body).await?;
        assert_eq!(answer.status(), status, "{content_type} {body}");
        assert!(answer.headers().get("correlation-id").is_none());
    }

    // One command for the route: the valid body's.
    let records = read_topic_to_end(&stack.broker.kafka_settings(), &stack.echo_topic)?;
    let commands: Vec<_> = records
        .iter()
        .filter(|m| header(m, "http-path").as_deref() == Some("/transfers"))
        .collect();
    assert_eq!(commands.len(), 1, "commands produced for /transfers");
    // And Redis gained the records of one request only: none of the refused.
    let after = ids_in_redis(&stack).await?;
    assert_eq!(after.difference(&before).count(), 1, "{before:?} {after:?}");
    stack.shutdown().await
}

/// The correlation ids that have records in the stack's Redis.
async fn ids_in_redis(stack: &Stack) -> anyhow::Result<BTreeSet<String>> {
    Ok(stack
        .redis_keys("{*}:*")
        .await?
        .iter()
        .filter_map(|k| Some(k.split('{').nth(1)?.split('}').next()?.to_owned()))
        .collect())
}
