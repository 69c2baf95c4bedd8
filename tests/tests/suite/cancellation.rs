//! Cancellation end to end: a client that goes away before its reply, and
//! `DELETE /v1/replies/{id}`, cancel the command; the echo service skips a
//! cancelled command it has not started and stops one it is running; a
//! principal can cancel only its own requests.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::Value;

use replyway_gateway::auth::{ApiKeyConfig, AuthConfig, RouteAuth};
use replyway_gateway::routes::{OnDisconnect, RouteConfig};
use replyway_tests::probe::spawn_gateway;
use replyway_tests::{Stack, StackOptions, eventually};

type TestResult = anyhow::Result<()>;

/// The value of header `name` of `record`, as text.
fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    record
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The cancel records of command `id` on the stack's echo topic.
async fn cancel_records(stack: &Stack, id: &str, at_least: usize) -> anyhow::Result<usize> {
    let is_cancel = |r: &OwnedMessage| {
        header(r, "cancel") == Some("true") && header(r, "correlation-id") == Some(id)
    };
    let records = stack
        .read_topic(&stack.echo_topic, Duration::from_secs(10), |records| {
            records.iter().filter(|r| is_cancel(r)).count() >= at_least
        })
        .await?;
    Ok(records.iter().filter(|r| is_cancel(r)).count())
}

/// A sample of the echo service's `/metrics`.
async fn echo_metric(stack: &Stack, name: &str) -> f64 {
    stack
        .metric_sum(&stack.echo_admin.to_string(), name, &[])
        .await
        .unwrap_or(-1.0)
}

/// Waits until the echo service's metric `name` reaches `n`.
async fn until_echo_metric(stack: &Stack, name: &str, n: f64, within: Duration) -> bool {
    eventually(within, || async { echo_metric(stack, name).await >= n }).await
}

/// A request sent by a client that gives up after `after`: over HTTP/1.1 its
/// connection is closed, over HTTP/2 (`h2`) its stream is reset
/// (`RST_STREAM`) and the connection kept; either way the gateway's answer
/// is dropped.
async fn give_up_over(stack: &Stack, body: &'static str, after: Duration, h2: bool) {
    let mut client = reqwest::Client::builder().timeout(after);
    if h2 {
        client = client.http2_prior_knowledge();
    }
    let client = client.build().expect("a client");
    let sent = client
        .post(stack.url(0, "/echo"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    assert!(
        sent.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client was to give up before the reply: {sent:?}"
    );
}

/// [`give_up_over`] HTTP/1.1.
async fn give_up(stack: &Stack, body: &'static str, after: Duration) {
    give_up_over(stack, body, after, false).await;
}

/// The ids of the stack's pending requests marked cancelled.
async fn cancelled_ids(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let mut conn = stack.redis.connection().await?;
    let mut ids = Vec::new();
    for key in stack.redis_keys("*:pending").await? {
        let cancelled: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("cancelled")
            .query_async(&mut conn)
            .await?;
        if cancelled.is_some()
            && let Some(id) = key.split('{').nth(1).and_then(|k| k.split('}').next())
        {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// The echo service with one command at a time, so that a second command
/// waits in its queue behind a slow one.
async fn one_at_a_time(stack: &mut Stack) -> anyhow::Result<()> {
    stack.echo.stop().await?;
    stack.echo_settings.max_in_flight = 1;
    stack.restart_echo();
    anyhow::ensure!(
        stack.answers_within(0, Duration::from_secs(60), 5).await,
        "the echo service did not come back"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_has_its_waiting_command_skipped() -> TestResult {
    let mut stack = Stack::start(StackOptions::default()).await?;
    one_at_a_time(&mut stack).await?;
    let running = "replyway_responder_running";
    let skipped = "replyway_responder_cancelled_total";
    let before = echo_metric(&stack, skipped).await;

    // A slow command takes the service's one place …
    let slow = {
        let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
        tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(r#"{"sleep_ms":3000}"#)
                .send()
                .await
        })
    };
    assert!(
        until_echo_metric(&stack, running, 1.0, Duration::from_secs(10)).await,
        "the slow command did not start"
    );
    // … so the next one waits behind it; its client goes away meanwhile.
    give_up(&stack, r#"{"queued":true}"#, Duration::from_millis(500)).await;

    assert!(
        until_echo_metric(&stack, skipped, before + 1.0, Duration::from_secs(10)).await,
        "the echo service did not skip the cancelled command"
    );
    let cancelled = stack
        .metric_sum(
            &stack.gateway_admin[0],
            "replyway_gateway_cancellations_total",
            &[("reason", "disconnect"), ("route", "POST /echo")],
        )
        .await;
    assert_eq!(cancelled, Some(1.0));
    let slow = slow.await??;
    assert_eq!(slow.status(), 200, "the slow command is answered as usual");
    // The skipped command is marked cancelled, and was never replied to,
    // though the command before it was.
    let ids = cancelled_ids(&stack).await?;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(cancel_records(&stack, &ids[0], 1).await?, 1);
    assert!(
        stack
            .redis_keys(&format!("{{{}}}:reply", ids[0]))
            .await?
            .is_empty()
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_handler_that_watches_its_token_stops_early() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let stopped = "replyway_responder_interrupted_total";
    let before = echo_metric(&stack, stopped).await;
    // Echo would sleep 20 s; the client leaves after 0.5 s: by closing its
    // connection, then by resetting its HTTP/2 stream.
    for (n, h2) in [(1.0, false), (2.0, true)] {
        give_up_over(
            &stack,
            r#"{"sleep_ms":20000}"#,
            Duration::from_millis(500),
            h2,
        )
        .await;
        assert!(
            until_echo_metric(&stack, stopped, before + n, Duration::from_secs(10)).await,
            "the echo handler did not stop when its command was cancelled (h2: {h2})"
        );
    }
    let cancelled = stack
        .metric_sum(
            &stack.gateway_admin[0],
            "replyway_gateway_cancellations_total",
            &[("reason", "disconnect")],
        )
        .await;
    assert_eq!(cancelled, Some(2.0));
    assert_eq!(echo_metric(&stack, "replyway_responder_running").await, 0.0);
    stack.shutdown().await
}

const OWNER_KEY: &str = "key-of-alice";
const OTHER_KEY: &str = "key-of-bob";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_cancels_only_the_callers_own_pending_request() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let mut settings = stack.gateway_settings.clone();
    settings.auth = AuthConfig {
        api_keys: [("alice", OWNER_KEY), ("bob", OTHER_KEY)]
            .into_iter()
            .map(|(id, key)| ApiKeyConfig {
                id: id.into(),
                sha256: sha256_hex(key),
                scopes: Vec::new(),
            })
            .collect(),
        ..AuthConfig::default()
    };
    settings.routes = vec![
        RouteConfig {
            path: "/jobs".into(),
            topic: stack.echo_topic.clone(),
            auth: RouteAuth::ApiKey,
            // Cancelled only on request.
            on_disconnect: OnDisconnect::Keep,
            ..RouteConfig::default()
        },
        RouteConfig {
            path: "/open".into(),
            topic: stack.echo_topic.clone(),
            ..RouteConfig::default()
        },
    ];
    let (base, stop) = spawn_gateway(settings).await?;
    let http = &stack.http;
    let bearer = |key: &str| format!("Bearer {key}");
    let start = |body: &'static str| {
        http.post(format!("{base}/jobs"))
            .header("authorization", bearer(OWNER_KEY))
            .header("prefer", "respond-async")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ready = eventually(Duration::from_secs(20), || async {
        start("{}").await.is_ok_and(|r| r.status() == 202)
    })
    .await;
    assert!(ready, "the gateway did not come up");

    let accepted = start(r#"{"sleep_ms":20000}"#).await?;
    assert_eq!(accepted.status(), 202);
    let id = accepted
        .headers()
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .expect("correlation-id")
        .to_owned();
    let url = format!("{base}/v1/replies/{id}");
    let delete = |key: Option<&str>| {
        let mut request = http.delete(&url);
        if let Some(key) = key {
            request = request.header("authorization", bearer(key));
        }
        request.send()
    };

    // Another principal, or none: the request is unknown to them.
    for key in [Some(OTHER_KEY), None] {
        let refused = delete(key).await?;
        assert_eq!(refused.status(), 404, "DELETE as {key:?}");
        let problem: Value = refused.json().await?;
        assert_eq!(problem["type"], "urn:replyway:problem:unknown-reply");
    }
    // The owner cancels it; a second DELETE changes nothing.
    for _ in 0..2 {
        let cancelled = delete(Some(OWNER_KEY)).await?;
        assert_eq!(cancelled.status(), 202);
        let body: Value = cancelled.json().await?;
        assert_eq!(body["status"], "cancelled");
        assert_eq!(body["correlation_id"], id.as_str());
    }
    let fetched: Value = http
        .get(&url)
        .header("authorization", bearer(OWNER_KEY))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fetched["status"], "cancelled");
    assert_eq!(
        cancel_records(&stack, &id, 1).await?,
        1,
        "one cancel record, on the command's topic"
    );
    // The running handler was told, and stopped.
    assert!(
        until_echo_metric(
            &stack,
            "replyway_responder_interrupted_total",
            1.0,
            Duration::from_secs(10)
        )
        .await
    );

    // An answered request cannot be cancelled: 409.
    let quick = http
        .post(format!("{base}/open"))
        .body("quick")
        .send()
        .await?;
    assert_eq!(quick.status(), 200);
    let quick_id = quick
        .headers()
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .expect("correlation-id")
        .to_owned();
    let late = http
        .delete(format!("{base}/v1/replies/{quick_id}"))
        .send()
        .await?;
    assert_eq!(late.status(), 409);
    let problem: Value = late.json().await?;
    assert_eq!(problem["type"], "urn:replyway:problem:already-answered");
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requester_cancels_a_request_it_gave_up_on() -> TestResult {
    use replyway_shared::exchange::Cancellation;
    use replyway_shared::requester::{Requester, RequesterError, RequesterOptions};

    let stack = Stack::start(StackOptions::default()).await?;
    let requester = Requester::start(
        &stack.broker.kafka_settings(),
        &stack.gateway_settings.redis,
        RequesterOptions::new(&stack.reply_topic),
    )?;
    assert!(eventually(Duration::from_secs(10), || async { requester.is_live() }).await);
    let stopped = "replyway_responder_interrupted_total";
    let before = echo_metric(&stack, stopped).await;
    let gave_up = requester
        .request(
            &stack.echo_topic,
            r#"{"sleep_ms":20000}"#,
            Duration::from_millis(500),
        )
        .await;
    let Err(RequesterError::Timeout { correlation_id, .. }) = gave_up else {
        panic!("expected a timeout, got {gave_up:?}");
    };
    assert_eq!(
        requester.cancel(&correlation_id).await?,
        Cancellation::Cancelled
    );
    assert_eq!(
        requester.cancel(&correlation_id).await?,
        Cancellation::Already,
        "a request is cancelled once"
    );
    assert!(
        until_echo_metric(&stack, stopped, before + 1.0, Duration::from_secs(10)).await,
        "the echo handler did not stop"
    );
    assert_eq!(cancel_records(&stack, &correlation_id, 1).await?, 1);
    requester.stop().await;
    stack.shutdown().await
}
