//! What operators see: the admin port's metrics and readiness of gateway and
//! collector, and the gateway's request log.

use std::time::Duration;

use serde_json::Value;

use replyway_tests::{Stack, StackOptions, eventually, produce};

type TestResult = anyhow::Result<()>;

async fn scrape(stack: &Stack, admin: &str) -> anyhow::Result<String> {
    let response = stack
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "/metrics answered {}",
        response.status()
    );
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    Ok(response.text().await?)
}

/// The value of the sample `name{labels}` (exact line prefix), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_and_collector_metrics_count_what_happened() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let gateway = stack.gateway_admin[0].clone();
    let collector = stack.collector_admin[0].clone();
    // What the warm-up did is counted too: start from a snapshot.
    let before = scrape(&stack, &gateway).await?;
    let echo_ok = r#"replyway_gateway_requests_total{route="POST /echo",status="200"}"#;
    let base = sample(&before, echo_ok).unwrap_or(0.0);

    for n in 0..3 {
        let r = stack
            .http
            .post(stack.url(0, "/echo"))
            .body(format!("m{n}"))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    // A timeout whose reply comes later: a 504, then a late reply.
    let r = stack
        .http
        .post(stack.url(0, "/slow"))
        .body(r#"{"sleep_ms":1500}"#)
        .send()
        .await?;
    assert_eq!(r.status(), 504);
    let late_id = r.headers()["correlation-id"].to_str()?.to_owned();
    // Unmatched paths all count under one label.
    for n in 0..5 {
        let r = stack
            .http
            .get(stack.url(0, &format!("/nothing/{n}")))
            .send()
            .await?;
        assert_eq!(r.status(), 404);
    }
    // A malformed reply, counted by reason.
    let producer = stack.broker.producer()?;
    produce(
        &producer,
        &stack.reply_topic,
        None,
        &[("status", "200")],
        b"no id",
    )
    .await?;

    let late = eventually(Duration::from_secs(10), || async {
        let text = scrape(&stack, &gateway).await.unwrap_or_default();
        sample(&text, "replyway_gateway_late_replies_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(late, "the reply after the 504 was not counted as late");
    let r = stack
        .http
        .get(stack.url(0, &format!("/v1/replies/{late_id}")))
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    let text = scrape(&stack, &gateway).await?;
    assert_eq!(sample(&text, echo_ok), Some(base + 3.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"replyway_gateway_requests_total{route="POST /slow",status="504"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"replyway_gateway_timeouts_total{route="POST /slow"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"replyway_gateway_requests_total{route="-",status="404"}"#
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"replyway_gateway_requests_total{route="replies",status="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"replyway_gateway_request_duration_seconds_count{route="POST /echo"}"#
        ),
        Some(base + 3.0)
    );
    assert!(
        !text.contains("/nothing/"),
        "a request path became a label value"
    );
    assert_eq!(
        sample(&text, "replyway_gateway_waiting_requests"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "replyway_gateway_redis_subscription_up"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "replyway_gateway_redis_errors_total"),
        Some(0.0)
    );

    // The collector: stored replies, the malformed one, lag per partition, ready.
    let ready = eventually(Duration::from_secs(20), || async {
        let text = scrape(&stack, &collector).await.unwrap_or_default();
        sample(
            &text,
            r#"replyway_collector_replies_malformed_total{reason="missing_correlation_id"}"#,
        ) == Some(1.0)
            // Lag of the assigned partitions librdkafka knows a position of.
            && text.contains(&format!(r#"replyway_collector_consumer_lag{{topic="{}",partition=""#, stack.reply_topic))
            && sample(&text, "replyway_collector_kafka_brokers_up").unwrap_or(0.0) >= 1.0
    })
    .await;
    let text = scrape(&stack, &collector).await?;
    assert!(ready, "collector metrics incomplete:\n{text}");
    assert!(sample(&text, "replyway_collector_replies_stored_total").unwrap_or(0.0) >= 5.0);
    let readyz = stack
        .http
        .get(format!("http://{collector}/readyz"))
        .send()
        .await?;
    assert_eq!(readyz.status(), 200);

    // Redis gone: the gateway answers 503 and counts the failure; both report not ready.
    let mut stack = stack;
    stack.redis.stop();
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("x")
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    let text = scrape(&stack, &gateway).await?;
    assert!(sample(&text, "replyway_gateway_redis_errors_total").unwrap_or(0.0) >= 1.0);
    for admin in [&gateway, &collector] {
        let readyz = stack
            .http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await?;
        assert_eq!(readyz.status(), 503, "{admin} claims ready without Redis");
    }
    stack.redis.restart()?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_logs_one_json_line_per_request_without_bodies() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        processes: true,
        gateway: |g| g.log.json = true,
        ..StackOptions::default()
    })
    .await?;
    let secret = "card-number-4111111111111111";
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .body(secret)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["correlation-id"].to_str()?.to_owned();
    let r = stack.http.get(stack.url(0, "/missing")).send().await?;
    assert_eq!(r.status(), 404);

    let log = stack.gateways[0].process().log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not JSON: {l}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let requests: Vec<&Value> = lines.iter().filter(|v| v["message"] == "request").collect();
    let ours = requests
        .iter()
        .find(|v| v["correlation_id"] == id.as_str())
        .expect("a request line with the correlation id");
    assert_eq!(ours["level"], "INFO");
    assert_eq!(ours["route"], "POST /echo");
    assert_eq!(ours["status"], 200);
    assert!(ours["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(
        requests
            .iter()
            .any(|v| v["route"] == "-" && v["status"] == 404 && v["correlation_id"] == "-")
    );
    assert_eq!(
        requests
            .iter()
            .filter(|v| v["correlation_id"] == id.as_str())
            .count(),
        1,
        "one line per request"
    );
    assert!(!log.contains(secret), "a request body reached the log");
    stack.shutdown().await
}

fn trace_of(
    message: &rdkafka::message::OwnedMessage,
) -> Option<replyway_shared::trace::TraceContext> {
    use rdkafka::message::{Headers, Message};
    replyway_shared::trace::TraceContext::from_headers(
        message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value)),
    )
}

/// The command and the reply record of correlation id `id`.
async fn records_of<'a>(
    stack: &'a Stack,
    id: &'a str,
) -> anyhow::Result<(
    rdkafka::message::OwnedMessage,
    rdkafka::message::OwnedMessage,
)> {
    use rdkafka::message::Message;
    let find = |topic: &'a str| async move {
        let records = stack
            .read_topic(topic, Duration::from_secs(20), |r| {
                r.iter().any(|m| m.key() == Some(id.as_bytes()))
            })
            .await?;
        records
            .into_iter()
            .find(|m| m.key() == Some(id.as_bytes()))
            .ok_or_else(|| anyhow::anyhow!("no record of {id} on {topic}"))
    };
    Ok((
        find(&stack.echo_topic).await?,
        find(&stack.reply_topic).await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reply_record_carries_the_request_trace_id() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("traceparent", client)
        .header("tracestate", "vendor=abc")
        .body("traced")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["correlation-id"].to_str()?.to_owned();
    let (command, reply) = records_of(&stack, &id).await?;
    let command = trace_of(&command).expect("the command carries a traceparent");
    let reply = trace_of(&reply).expect("the reply carries a traceparent");
    assert_eq!(command.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(reply.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        command.traceparent(),
        client,
        "the gateway is a hop of its own"
    );
    assert_ne!(
        reply.span_id, command.span_id,
        "the service is a hop of its own"
    );
    assert_eq!(command.state.as_deref(), Some("vendor=abc"));
    assert_eq!(reply.state.as_deref(), Some("vendor=abc"));

    // No (or a malformed) traceparent: a new trace, still carried end to end.
    for sent in [None, Some("00-nonsense-01")] {
        let mut request = stack.http.post(stack.url(0, "/echo")).body("untraced");
        if let Some(t) = sent {
            request = request.header("traceparent", t);
        }
        let r = request.send().await?;
        assert_eq!(r.status(), 200);
        let id = r.headers()["correlation-id"].to_str()?.to_owned();
        let (command, reply) = records_of(&stack, &id).await?;
        let command = trace_of(&command).expect("a new trace on the command");
        let reply = trace_of(&reply).expect("the reply carries it");
        assert_eq!(reply.trace_id, command.trace_id);
        assert_ne!(command.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_configured() -> TestResult {
    use std::sync::{Arc, Mutex};
    // A stand-in OTLP/HTTP receiver that keeps every export request's body.
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let app = {
        let received = Arc::clone(&received);
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = Arc::clone(&received);
                async move {
                    received.lock().expect("not poisoned").push(body.to_vec());
                    axum::http::StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stack = Stack::start(StackOptions::default()).await?;
    let mut settings = stack.gateway_settings.clone();
    settings.listen = "127.0.0.1:0".into();
    settings.admin_listen = String::new();
    settings.log.otlp_endpoint = Some(format!("http://{otlp}/v1/traces"));
    let mut gateway = replyway_tests::Proc::spawn("replyway-gateway", &settings, None)?;
    let addr = gateway
        .reported_addr("listen", Duration::from_secs(60))
        .await?;
    let url = format!("http://{addr}/echo");
    let id = std::sync::Mutex::new(String::new());
    let answered = eventually(Duration::from_secs(20), || async {
        let Ok(response) = stack
            .http
            .post(&url)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body("exported")
            .send()
            .await
        else {
            return false;
        };
        if let Some(cid) = response.headers().get("correlation-id") {
            *id.lock().expect("not poisoned") = cid.to_str().unwrap_or_default().to_owned();
        }
        response.status() == 200
    })
    .await;
    assert!(
        answered,
        "the exporting gateway did not answer:\n{}",
        gateway.log()
    );
    let id = id.into_inner().expect("not poisoned");
    // A pick-up gets its span too.
    let picked = stack
        .http
        .get(format!("http://{addr}/v1/replies/{id}"))
        .send()
        .await?;
    assert_eq!(picked.status(), 200);
    gateway.signal("TERM")?;
    assert!(gateway.wait_exit(Duration::from_secs(20)).await.is_some());

    let trace_id = [
        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31,
        0x9c,
    ];
    let bodies = received.lock().expect("not poisoned").clone();
    let all: Vec<u8> = bodies.concat();
    assert!(
        !bodies.is_empty(),
        "nothing was exported:\n{}",
        gateway.log()
    );
    assert!(
        all.windows(16).any(|w| w == trace_id),
        "no exported span carries the request's trace id"
    );
    assert!(
        all.windows(b"gateway.request".len())
            .any(|w| w == b"gateway.request"),
        "the gateway's span is not among the exported ones"
    );
    assert!(
        all.windows(b"replyway-gateway".len())
            .any(|w| w == b"replyway-gateway"),
        "service.name is not the binary's name"
    );
    // The request spans carry route, correlation id and status as attributes.
    let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    for attribute in ["route", "correlation_id", "status"] {
        assert!(has(attribute.as_bytes()), "no span attribute {attribute}");
    }
    assert!(has(b"POST /echo"), "no span names the route");
    assert!(has(b"replies"), "the pick-up has no span of its own");
    assert!(
        has(id.as_bytes()),
        "no span carries the correlation id {id}"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stack_runs_on_redis_over_tls_with_a_password() -> TestResult {
    let stack = Stack::start(StackOptions {
        processes: true,
        redis_password: Some("s3cret-pass".into()),
        ..StackOptions::default()
    })
    .await?;
    let url = stack.gateway_settings.redis.url.expose();
    assert!(url.starts_with("rediss://"));
    for n in 0..20 {
        let r = stack
            .http
            .post(stack.url(0, "/echo"))
            .body(format!("over tls {n}"))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await?, format!("over tls {n}"));
    }
    // The same server refuses a wrong password and a plain connection: the
    // settings above really were used.
    let mut conn = stack.redis.connection().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    let wrong = stack.redis.url().replace("s3cret-pass", "wrong");
    let refused = async {
        let mut c = redis::Client::open(wrong)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .map_or(true, |r| r.is_err())
    );
    let plain = format!("redis://127.0.0.1:{}", stack.redis.port);
    let refused = async {
        let mut c = redis::Client::open(plain)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .map_or(true, |r| r.is_err())
    );
    stack.shutdown().await
}

#[test]
fn every_binary_lists_its_settings_in_help_and_names_a_bad_one() -> TestResult {
    let run = |binary: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(replyway_tests::bin_path(binary));
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output()
    };
    for (binary, settings) in [
        (
            "replyway-gateway",
            &["listen", "admin_listen", "routes", "client_id_header"][..],
        ),
        (
            "replyway-collector",
            &["topics", "group_id", "admin_listen", "dead_letter_topic"],
        ),
        ("replyway-echo", &["topics", "max_in_flight"]),
        ("replyway-ledger", &["accounts"]),
    ] {
        let help = run(binary, &["--help"], &[])?;
        assert!(help.status.success());
        let text = String::from_utf8(help.stdout)?;
        for setting in settings
            .iter()
            .chain(&[
                "redis.url",
                "kafka.brokers",
                "kafka.consumer",
                "log.json",
                "log.otlp_endpoint",
            ])
            .filter(|s| binary != "replyway-echo" || !s.starts_with("redis"))
        {
            assert!(
                text.contains(&format!("\n  {setting} = ")),
                "{binary} --help does not list {setting}:\n{text}"
            );
        }
        assert!(text.contains("REPLYWAY_KAFKA__BROKERS"), "{text}");
    }
    // A bad setting from the environment stops the binary at start, naming it.
    let bad = run(
        "replyway-gateway",
        &[],
        &[("REPLYWAY_REDIS__TIMEOUT", "soon")],
    )?;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8(bad.stderr)?;
    assert!(
        stderr.to_ascii_lowercase().contains("redis.timeout"),
        "{stderr}"
    );
    let bad = run("replyway-collector", &[], &[("REPLYWAY_BATCH_MAX", "0")])?;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8(bad.stderr)?;
    assert!(stderr.contains("batch_max"), "{stderr}");
    Ok(())
}

/// A start that cannot succeed exits with status 2 and names the setting:
/// a TLS certificate that cannot be read (checked once, at start, not when
/// the first connection comes), and two routes axum's router could not tell
/// apart (both named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_exits_2_naming_the_setting() -> TestResult {
    let missing = replyway_gateway::Settings {
        listen: "127.0.0.1:0".into(),
        admin_listen: String::new(),
        tls: Some(replyway_gateway::tls::TlsConfig {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
        }),
        ..replyway_gateway::Settings::default()
    };
    let route = |method: &str, path: &str| replyway_gateway::routes::RouteConfig {
        method: method.into(),
        path: path.into(),
        ..replyway_gateway::routes::RouteConfig::default()
    };
    let conflicting = replyway_gateway::Settings {
        listen: "127.0.0.1:0".into(),
        admin_listen: String::new(),
        routes: vec![route("POST", "/orders/{id}"), route("GET", "/orders/{key}")],
        ..replyway_gateway::Settings::default()
    };
    for (settings, named) in [
        (missing, vec!["tls"]),
        (
            conflicting,
            vec!["routes[1].path", "POST /orders/{id}", "GET /orders/{key}"],
        ),
    ] {
        let mut gateway = replyway_tests::Proc::spawn("replyway-gateway", &settings, None)?;
        let status = gateway.wait_exit(Duration::from_secs(20)).await;
        let log = gateway.log();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
        for name in named {
            assert!(log.contains(name), "the log does not name {name}:\n{log}");
        }
    }
    Ok(())
}
