//! No responders, fail fast: a route that names its service's consumer group
//! (`responder_group`) is answered `503 no-responders` at once while Kafka
//! reports the group has no active member, and served again once it has.

use std::time::{Duration, Instant};

use replyway_tests::{Stack, StackOptions, eventually, records_with_value};

type TestResult = anyhow::Result<()>;

/// The `replyway_gateway_responder_members` value for `group`, if exported.
async fn members(stack: &Stack, group: &str) -> Option<i64> {
    let text = stack
        .http
        .get(format!("http://{}/metrics", stack.gateway_admin[0]))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("replyway_gateway_responder_members{{group=\"{group}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_without_responders_fails_fast_and_recovers() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        gateway: |g| {
            // The echo service's group, as Stack names it.
            let group = format!("{}-echo", g.redis.prefix);
            for route in &mut g.routes {
                route.responder_group = Some(group.clone());
            }
        },
        ..StackOptions::default()
    })
    .await?;
    let group = stack.echo_settings.group_id.clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            members(&stack, &group).await == Some(1)
        })
        .await,
        "the gateway never saw the echo service's member: {:?}",
        members(&stack, &group).await
    );

    // The service stops (it leaves its group): within a second a request is
    // answered 503 no-responders at once, with nothing produced for it.
    stack.echo.stop().await?;
    let stopped = Instant::now();
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        let sent = Instant::now();
        let r = stack
            .http
            .post(stack.url(0, "/echo"))
            .header("prefer", "respond-async")
            .body(format!("nobody listens {attempt}"))
            .send()
            .await?;
        if r.status() == 503 {
            let took = sent.elapsed();
            let retry_after = r.headers().get("retry-after").cloned();
            let body: serde_json::Value = r.json().await?;
            break (took, retry_after, body);
        }
        assert_eq!(r.status(), 202, "{}", r.text().await?);
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "still accepted {:?} after the service stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (took, retry_after, body) = refused;
    assert_eq!(
        body["type"],
        replyway_gateway::problem::ProblemKind::NoResponders.uri(),
        "{body}"
    );
    assert_eq!(body["status"], 503);
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains(&group)),
        "{body}"
    );
    assert!(retry_after.is_some(), "no Retry-After");
    assert!(took < Duration::from_millis(500), "the 503 took {took:?}");
    // A synchronous request is refused at once too, not after the route's 10 s.
    let sent = Instant::now();
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("sync")
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert!(sent.elapsed() < Duration::from_millis(500));
    assert_eq!(members(&stack, &group).await, Some(0));
    // Refused requests produced nothing: neither is in the log.
    let kafka = stack.broker.kafka_settings();
    let refused_body = format!("nobody listens {attempt}");
    for body in [refused_body.as_str(), "sync"] {
        assert_eq!(
            records_with_value(&kafka, &stack.echo_topic, body.as_bytes())?,
            0,
            "the refused request {body:?} was produced"
        );
    }
    // (The reader sees the accepted ones: each once.)
    for n in 1..attempt {
        let accepted = format!("nobody listens {n}");
        assert_eq!(
            records_with_value(&kafka, &stack.echo_topic, accepted.as_bytes())?,
            1
        );
    }
    // Back: requests are served again.
    stack.restart_echo();
    let served = eventually(Duration::from_secs(30), || async {
        let r = stack
            .http
            .post(stack.url(0, "/echo"))
            .header("prefer", "wait=2")
            .body("served again")
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "served again"),
            _ => false,
        }
    })
    .await;
    assert!(
        served,
        "requests did not succeed after the service came back"
    );
    assert_eq!(members(&stack, &group).await, Some(1));
    stack.shutdown().await
}
