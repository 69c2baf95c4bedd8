//! End to end: HTTP → gateway → Kafka → echo service → Kafka → collector →
//! Redis → gateway → HTTP, with a real broker and a real Redis per test.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};

use replyway_tests::{BrokerChoice, Stack, StackOptions, eventually, produce, records_with_value};

type TestResult = anyhow::Result<()>;

async fn json_of(response: reqwest::Response) -> anyhow::Result<Value> {
    Ok(response.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_over_two_replicas_each_get_their_own_reply() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        ..StackOptions::default()
    })
    .await?;
    let requests = (0..500).map(|n| {
        let url = stack.url(n % 2, "/echo");
        let body = json!({ "n": n, "pad": "x".repeat(n % 50) }).to_string();
        let http = stack.http.clone();
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?;
            let status = response.status();
            let id = response
                .headers()
                .get("correlation-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer = response.text().await?;
            anyhow::Ok((n, status, id, body, answer))
        }
    });
    let results = join_all(requests).await;
    let mut ids = HashSet::new();
    for result in results {
        let (n, status, id, sent, answer) = result?;
        assert_eq!(status, 200, "request {n}: {answer}");
        assert_eq!(answer, sent, "request {n} got another request's reply");
        assert!(
            ids.insert(id.expect("correlation-id header")),
            "request {n}: correlation id reused"
        );
    }
    assert_eq!(ids.len(), 500);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_request_then_poll_and_long_poll() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        ..StackOptions::default()
    })
    .await?;
    let body = r#"{"sleep_ms":1500,"hello":"async"}"#;
    let accepted = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "respond-async")
        .body(body)
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    assert_eq!(accepted.headers()["preference-applied"], "respond-async");
    let location = accepted.headers()["location"].to_str()?.to_owned();
    let id = json_of(accepted).await?["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(location, format!("/v1/replies/{id}"));

    // Pending, on either replica.
    let pending = stack.http.get(stack.url(1, &location)).send().await?;
    assert_eq!(pending.status(), 202);
    assert!(pending.headers().contains_key("retry-after"));

    // Long-poll on the other replica: answered as soon as the reply is stored.
    let started = Instant::now();
    let reply = stack
        .http
        .get(stack.url(1, &location))
        .header("prefer", "wait=20")
        .send()
        .await?;
    assert_eq!(reply.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "long-poll waited {:?}",
        started.elapsed()
    );
    assert_eq!(reply.headers()["correlation-id"], id.as_str());
    assert_eq!(reply.text().await?, body);

    // Still collectable afterwards, from any replica.
    let again = stack.http.get(stack.url(0, &location)).send().await?;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await?, body);

    // Unknown and malformed ids.
    let unknown = stack
        .http
        .get(stack.url(0, "/v1/replies/8d0c1a4e-2f7b-4c7e-9a43-2b6d2d4f0a11"))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    let malformed = stack
        .http
        .get(stack.url(0, "/v1/replies/not%20an%20id"))
        .send()
        .await?;
    assert_eq!(malformed.status(), 400);
    // A long-poll on an unknown id answers 404 at once.
    let started = Instant::now();
    let unknown = stack
        .http
        .get(stack.url(0, "/v1/replies/no-such-id"))
        .header("prefer", "wait=10")
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    assert!(started.elapsed() < Duration::from_secs(5));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeout_answers_504_and_the_late_reply_is_collectable() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let body = r#"{"sleep_ms":5000,"late":true}"#;
    let started = Instant::now();
    let timed_out = stack
        .http
        .post(stack.url(0, "/slow"))
        .body(body)
        .send()
        .await?;
    assert_eq!(timed_out.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2400),
        "the 1 s route timeout was not applied"
    );
    assert_eq!(
        timed_out.headers()["content-type"],
        "application/problem+json"
    );
    let location = timed_out.headers()["location"].to_str()?.to_owned();
    let problem = json_of(timed_out).await?;
    assert_eq!(problem["status"], 504);
    let id = problem["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(location, format!("/v1/replies/{id}"));

    // While the service still works on that command, other commands are answered.
    let started = Instant::now();
    let fast = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("fast")
        .send()
        .await?;
    assert_eq!(fast.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a slow command held up another one for {:?}",
        started.elapsed()
    );

    let late = stack
        .http
        .get(stack.url(0, &location))
        .header("prefer", "wait=10")
        .send()
        .await?;
    assert_eq!(late.status(), 200);
    assert_eq!(late.text().await?, body);

    // Prefer: wait shortens a route's timeout.
    let started = Instant::now();
    let short = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "wait=1")
        .body(r#"{"sleep_ms":3000}"#)
        .send()
        .await?;
    assert_eq!(short.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(2900));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_status_headers_and_the_record_contract() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| g.client_id_header = Some("x-client-id".into()),
        ..StackOptions::default()
    })
    .await?;
    let body = r#"{"status":409,"reason":"insufficient funds"}"#;
    let response = stack
        .http
        .post(stack.url(0, "/orders/a%2Fb-42"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-7")
        .header("x-not-forwarded", "secret")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=abc")
        .header("x-client-id", "client-9")
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-echo-path"], "/orders/a%2Fb-42");
    let id = response.headers()["correlation-id"].to_str()?.to_owned();
    assert_eq!(response.text().await?, body);

    // The command as a service saw it.
    let mut config = stack.broker.kafka_settings().consumer_config("inspector");
    config.set("enable.auto.offset.store", "true");
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[&stack.echo_topic])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        anyhow::ensure!(Instant::now() < deadline, "request record not found");
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await??;
        let request = replyway_shared::Request::from_message(&message)?;
        if request.correlation_id == id {
            break (request, message.key().map(<[u8]>::to_vec));
        }
    };
    let (request, key) = record;
    assert_eq!(key.as_deref(), Some(&b"order-a/b-42"[..]));
    assert_eq!(request.reply_to, stack.reply_topic);
    assert_eq!(request.method.as_deref(), Some("POST"));
    assert_eq!(request.path.as_deref(), Some("/orders/a%2Fb-42"));
    assert_eq!(request.params["id"], "a/b-42");
    assert_eq!(
        request.headers.get("x-request-id").map(String::as_str),
        Some("req-7")
    );
    assert!(!request.headers.contains_key("x-not-forwarded"));
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    // The gateway is a hop of the client's trace: same trace id, its own span.
    let trace = request.traceparent.as_deref().expect("traceparent");
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && !trace.contains("00f067aa0ba902b7"),
        "{trace}"
    );
    assert_eq!(request.tracestate.as_deref(), Some("vendor=abc"));
    assert_eq!(request.client_id.as_deref(), Some("client-9"));
    assert!(!request.headers.contains_key("x-client-id"));
    let deadline = request.deadline.expect("deadline header");
    let now = replyway_shared::record::unix_millis(std::time::SystemTime::now());
    // The reply can be picked up after a 504 until Redis drops it (redis.ttl,
    // 120 s in tests): that is when nobody will collect it.
    assert!(
        deadline > now + 100_000 && deadline <= now + 120_000,
        "deadline {deadline} is not redis.ttl after now {now}"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_route_wrong_method_oversized_body_and_bad_prefer() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;

    let none = stack
        .http
        .post(stack.url(0, "/nowhere"))
        .body("x")
        .send()
        .await?;
    assert_eq!(none.status(), 404);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    assert_eq!(json_of(none).await?["status"], 404);

    let method = stack.http.get(stack.url(0, "/echo")).send().await?;
    assert_eq!(method.status(), 405);
    assert_eq!(method.headers()["allow"], "POST");

    let big = stack
        .http
        .post(stack.url(0, "/orders/1"))
        .body(vec![b'x'; 1025])
        .send()
        .await?;
    assert_eq!(big.status(), 413);
    assert_eq!(big.headers()["content-type"], "application/problem+json");
    // Streamed without a length: the limit holds while reading.
    let chunks = futures::stream::iter((0..4).map(|_| anyhow::Ok(vec![b'y'; 400])));
    let streamed = stack
        .http
        .post(stack.url(0, "/orders/1"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await?;
    assert_eq!(streamed.status(), 413);
    let at_limit = stack
        .http
        .post(stack.url(0, "/orders/1"))
        .body(vec![b'x'; 1024])
        .send()
        .await?;
    assert_eq!(at_limit.status(), 200);

    let prefer = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "wait=soon")
        .body("x")
        .send()
        .await?;
    assert_eq!(prefer.status(), 400);

    // Only the request at the limit was produced, read from the log.
    let records =
        replyway_tests::read_topic_to_end(&stack.broker.kafka_settings(), &stack.echo_topic)?;
    let values: Vec<&[u8]> = records
        .iter()
        .filter_map(rdkafka::Message::payload)
        .collect();
    let limit_body = vec![b'x'; 1024];
    assert_eq!(
        values
            .iter()
            .filter(|v| **v == limit_body.as_slice())
            .count(),
        1,
        "the request at the limit, once"
    );
    let refused = values
        .iter()
        .filter(|v| **v == b"x" || v.len() == 1025 || v.starts_with(b"y"))
        .count();
    assert_eq!(refused, 0, "a refused request was produced");
    // Nothing else but the stack's warm-up.
    assert!(
        values
            .iter()
            .all(|v| *v == limit_body.as_slice() || *v == b"warm-up"),
        "{} records",
        values.len()
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_replies_are_skipped_and_the_next_reply_is_delivered() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let producer = stack.broker.producer()?;
    produce(
        &producer,
        &stack.reply_topic,
        None,
        &[("status", "200")],
        b"no correlation id",
    )
    .await?;
    produce(
        &producer,
        &stack.reply_topic,
        Some("k"),
        &[("correlation-id", "bad-status"), ("status", "abc")],
        b"bad",
    )
    .await?;
    produce(
        &producer,
        &stack.reply_topic,
        None,
        &[("correlation-id", "a{b}c")],
        b"bad id",
    )
    .await?;
    // A reply nobody asked for is stored for its TTL anyway.
    produce(
        &producer,
        &stack.reply_topic,
        Some("foreign-1"),
        &[("status", "201"), ("content-type", "text/plain")],
        b"foreign",
    )
    .await?;

    let stats = stack.collector_stats.clone();
    assert!(
        eventually(Duration::from_secs(20), || async {
            stats.malformed.load(std::sync::atomic::Ordering::Relaxed) >= 3
        })
        .await,
        "the collector did not count the malformed replies"
    );
    let response = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("after the bad ones")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "after the bad ones");

    let foreign = stack
        .http
        .get(stack.url(0, "/v1/replies/foreign-1"))
        .send()
        .await?;
    assert_eq!(foreign.status(), 201);
    assert_eq!(foreign.text().await?, "foreign");
    assert_eq!(
        stats.malformed.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert!(stack.redis_keys("{bad-status}:*").await?.is_empty());
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unavailable_answers_503_and_produces_nothing() -> TestResult {
    let mut stack = Stack::start(StackOptions::default()).await?;
    stack.redis.stop();

    let started = Instant::now();
    let response = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("while redis is down")
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        records_with_value(
            &stack.broker.kafka_settings(),
            &stack.echo_topic,
            b"while redis is down"
        )?,
        0,
        "a command was produced that nobody could collect"
    );
    let ready = stack.http.get(stack.url(0, "/readyz")).send().await?;
    assert_eq!(ready.status(), 503);

    // Redis comes back (empty): the gateway reconnects and re-subscribes by itself.
    stack.redis.restart()?;
    let recovered = stack.answers_within(0, Duration::from_secs(20), 2).await;
    assert!(
        recovered,
        "the gateway did not recover after Redis came back"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_unavailable_answers_503_and_leaves_nothing_pending() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        broker: BrokerChoice::Own,
        ..StackOptions::default()
    })
    .await?;
    // Warm-up requests that timed out while the consumer groups joined are
    // still pending (their replies may be collected, or their keys expire,
    // meanwhile): only new keys count.
    let pending_before = stack.redis_keys("*:pending").await?;
    let waiters_before = stack.redis_keys("*:waiters").await?;
    stack.broker.stop();
    let started = Instant::now();
    let response = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("while kafka is down")
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    // Bounded by the producer's message.timeout.ms (the default, 5 s).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "503 took {:?}",
        started.elapsed()
    );
    assert_eq!(json_of(response).await?["status"], 503);
    assert_eq!(
        stack.new_redis_keys("*:pending", &pending_before).await?,
        Vec::<String>::new(),
        "an unproduced request was left pending"
    );
    assert_eq!(
        stack.new_redis_keys("*:waiters", &waiters_before).await?,
        Vec::<String>::new(),
        "a waiter of an unproduced request was left"
    );
    // Back: the consumers leave their groups cleanly at shutdown.
    stack.broker.restart()?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_requests_past_the_bound_are_shed_with_503() -> TestResult {
    let stack = Stack::start(StackOptions {
        max_waiting: 2,
        ..StackOptions::default()
    })
    .await?;
    let slow = |n: u32| {
        let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .body(format!(r#"{{"sleep_ms":3000,"n":{n}}}"#))
                .send()
                .await?;
            anyhow::Ok(r.status())
        })
    };
    let (a, b) = (slow(1), slow(2));
    let stats = stack.collector_stats.clone();
    // Both slow requests wait for their replies.
    assert!(
        stack.until_waiting(0, 2, Duration::from_secs(10)).await,
        "the two slow requests never waited at once"
    );
    let started = Instant::now();
    let shed = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("one too many")
        .send()
        .await?;
    assert_eq!(shed.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shedding must not wait"
    );
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(
        json_of(shed).await?["type"],
        replyway_gateway::problem::ProblemKind::Overloaded.uri()
    );
    // Async requests hold no waiter and are still accepted.
    let accepted = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "respond-async")
        .body("async")
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    // The admitted requests complete.
    assert_eq!(a.await??, 200);
    assert_eq!(b.await??, 200);
    let after = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("room again")
        .send()
        .await?;
    assert_eq!(after.status(), 200);
    assert!(stats.stored.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_clients_share_one_connection() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()?;
    let requests = (0..50).map(|i| {
        let (h2, url) = (h2.clone(), stack.url(0, "/echo"));
        async move {
            let body = format!(r#"{{"sleep_ms":300,"i":{i}}}"#);
            let r = h2.post(url).body(body.clone()).send().await?;
            anyhow::ensure!(
                r.version() == reqwest::Version::HTTP_2,
                "not HTTP/2: {:?}",
                r.version()
            );
            anyhow::ensure!(r.status() == 200, "status {}", r.status());
            anyhow::ensure!(r.text().await? == body, "request {i} got another reply");
            anyhow::Ok(())
        }
    });
    for result in join_all(requests).await {
        result?;
    }
    stack.shutdown().await
}
