//! Guarantees of the HTTP side that each need a test of their own: how long a
//! reply is served, what happens to an idempotency key that could not be used,
//! how far `Prefer: wait` reaches, which reply headers reach the client, what
//! `/readyz` says without a broker, and a request still in flight when
//! `shutdown_grace` runs out.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use replyway_gateway::routes::RouteConfig;
use replyway_tests::probe::{self, header};
use replyway_tests::{BrokerChoice, Stack, StackOptions, eventually, produce, read_topic_to_end};

type TestResult = anyhow::Result<()>;

/// `redis.ttl` of the stack that watches a reply expire.
const SHORT_TTL: Duration = Duration::from_secs(3);

/// What a request was answered: status, `correlation-id`, body.
struct Answer {
    status: u16,
    id: String,
    body: String,
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(Answer {
        status,
        id,
        body: response.text().await?,
    })
}

/// `POST {path}` on the stack's first gateway with an `Idempotency-Key`.
async fn post_keyed(stack: &Stack, path: &str, key: &str, body: &str) -> anyhow::Result<Answer> {
    let response = stack
        .http
        .post(stack.url(0, path))
        .header("idempotency-key", format!("\"{key}\""))
        .body(body.to_owned())
        .send()
        .await?;
    answer(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_is_served_for_redis_ttl_then_404() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| {
            g.redis.ttl = SHORT_TTL;
            g.max_poll_wait = Duration::from_secs(2);
            g.idempotency_ttl = None;
            for route in &mut g.routes {
                route.timeout = Duration::from_secs(2);
            }
        },
        collector: |c| c.redis.ttl = SHORT_TTL,
        ..StackOptions::default()
    })
    .await?;
    let sent = Instant::now();
    let accepted = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "respond-async")
        .body("kept for redis.ttl")
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    let id = answer(accepted).await?.id;
    let location = format!("/v1/replies/{id}");
    let stored = stack
        .http
        .get(stack.url(0, &location))
        .header("prefer", "wait=2")
        .send()
        .await?;
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.text().await?, "kept for redis.ttl");

    // The collector stored it with redis.ttl: what is left is the TTL less
    // the time since the request was sent, at most.
    let mut conn = stack.redis.connection().await?;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:{{{id}}}:reply", stack.prefix))
        .query_async(&mut conn)
        .await?;
    let since = i64::try_from(sent.elapsed().as_millis())?;
    let ttl = i64::try_from(SHORT_TTL.as_millis())?;
    assert!(
        pttl > 0 && pttl <= ttl && pttl + since >= ttl - 5,
        "the reply key's TTL is {pttl} ms, {since} ms after the request; redis.ttl is {ttl} ms"
    );

    // Served, every time, until the TTL runs out; then 404.
    let gone = loop {
        let r = stack.http.get(stack.url(0, &location)).send().await?;
        if r.status() == 404 {
            break r;
        }
        assert_eq!(r.status(), 200, "before it expired");
        assert_eq!(r.text().await?, "kept for redis.ttl");
        assert!(
            sent.elapsed() < SHORT_TTL + Duration::from_secs(5),
            "the reply is still served {:?} after the request",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sent.elapsed() >= SHORT_TTL - Duration::from_millis(10),
        "the reply was gone {:?} after the request, before redis.ttl",
        sent.elapsed()
    );
    assert_eq!(gone.headers()["content-type"], "application/problem+json");
    let problem: Value = gone.json().await?;
    assert_eq!(problem["type"], "urn:replyway:problem:unknown-reply");
    assert_eq!(problem["correlation_id"], id.as_str());
    assert!(
        stack.redis_keys(&format!("{{{id}}}:*")).await?.is_empty(),
        "keys of the request outlived redis.ttl"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_claim_is_released_when_its_command_cannot_be_produced() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        broker: BrokerChoice::Own,
        ..StackOptions::default()
    })
    .await?;
    assert!(stack.redis_keys("idem:*").await?.is_empty());
    let body = r#"{"order":"released"}"#;
    stack.broker.stop();
    let refused = post_keyed(&stack, "/echo", "order-released", body).await?;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let problem: Value = serde_json::from_str(&refused.body)?;
    assert_eq!(problem["type"], "urn:replyway:problem:broker-unavailable");
    let first = problem["correlation_id"].as_str().map(str::to_owned);
    assert_eq!(
        stack.redis_keys("idem:*").await?,
        Vec::<String>::new(),
        "the claim of a command that was not produced was kept"
    );

    // The broker is back: the retry with the same key and body is a new
    // request, and its command is produced.
    stack.broker.restart()?;
    assert!(stack.answers_within(0, Duration::from_secs(60), 2).await);
    let retry = post_keyed(&stack, "/echo", "order-released", body).await?;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.body, body);
    assert_ne!(
        Some(retry.id.as_str()),
        first.as_deref(),
        "the retry took over the refused request's claim instead of claiming the key anew"
    );
    assert_eq!(stack.redis_keys("idem:*").await?.len(), 1);
    let again = post_keyed(&stack, "/echo", "order-released", body).await?;
    assert_eq!((again.status, again.id.as_str()), (200, retry.id.as_str()));
    let kafka = stack.broker.kafka_settings();
    assert_eq!(probe::commands_of(&kafka, &stack.echo_topic, &retry.id)?, 1);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_are_per_route_and_forgotten_after_idempotency_ttl() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| g.idempotency_ttl = Some(Duration::from_secs(2)),
        ..StackOptions::default()
    })
    .await?;
    let body = r#"{"n":1}"#;
    // One key on two routes: two requests, two commands.
    let echo = post_keyed(&stack, "/echo", "shared-key", body).await?;
    let order = post_keyed(&stack, "/orders/7", "shared-key", body).await?;
    assert_eq!((echo.status, order.status), (200, 200), "{}", order.body);
    assert_eq!((echo.body.as_str(), order.body.as_str()), (body, body));
    assert_ne!(
        echo.id, order.id,
        "a key of one route answered another route"
    );
    // Retries on each route are answered from that route's first request.
    assert_eq!(
        post_keyed(&stack, "/echo", "shared-key", body).await?.id,
        echo.id
    );
    assert_eq!(
        post_keyed(&stack, "/orders/7", "shared-key", body)
            .await?
            .id,
        order.id
    );
    let keys = stack.redis_keys("idem:*").await?;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let mut conn = stack.redis.connection().await?;
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await?;
        assert!(
            pttl > 0 && pttl <= 2000,
            "{key} is kept {pttl} ms, idempotency_ttl is 2 s"
        );
    }

    // After idempotency_ttl the key is forgotten: the same key is a new
    // request, also with another body (no 422).
    let forgotten = eventually(Duration::from_secs(10), || async {
        stack.redis_keys("idem:*").await.is_ok_and(|k| k.is_empty())
    })
    .await;
    assert!(forgotten, "the keys outlived idempotency_ttl");
    let later = post_keyed(&stack, "/echo", "shared-key", r#"{"n":2}"#).await?;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(later.body, r#"{"n":2}"#);
    let later_order = post_keyed(&stack, "/orders/7", "shared-key", body).await?;
    assert_eq!(later_order.status, 200);
    let ids = [&echo.id, &order.id, &later.id, &later_order.id];
    for (i, id) in ids.iter().enumerate() {
        assert!(!ids[..i].contains(id), "{id} answered two requests");
    }
    let records = read_topic_to_end(&stack.broker.kafka_settings(), &stack.echo_topic)?;
    for id in ids {
        let commands = records
            .iter()
            .filter(|m| header(m, "correlation-id").as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(commands, 1, "commands of {id}");
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefer_wait_is_capped_by_max_poll_wait_and_by_the_route() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| g.max_poll_wait = Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await?;
    // `/slow` has a 1 s timeout: asking for 5 s waits 1 s, although the
    // reply comes after 3 s.
    let capped = stack
        .http
        .post(stack.url(0, "/slow"))
        .header("prefer", "wait=5")
        .body(r#"{"sleep_ms":3000,"capped":"by the route"}"#)
        .send()
        .await?;
    assert_eq!(capped.status(), 504);
    let problem: Value = capped.json().await?;
    assert_eq!(problem["type"], "urn:replyway:problem:reply-timeout");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("no reply within 1000 ms"), "{detail}");
    // Below the route's timeout, the preference is what is waited.
    let shorter = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "wait=1")
        .body(r#"{"sleep_ms":3000,"capped":"by the client"}"#)
        .send()
        .await?;
    assert_eq!(shorter.status(), 504);
    let problem: Value = shorter.json().await?;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("no reply within 1000 ms"), "{detail}");

    // A long-poll asking for 20 s on a reply 4 s away returns `202` after
    // max_poll_wait (1 s), not the reply.
    let body = r#"{"sleep_ms":4000,"capped":"by max_poll_wait"}"#;
    let accepted = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "respond-async")
        .body(body)
        .send()
        .await?;
    let location = accepted.headers()["location"].to_str()?.to_owned();
    let started = Instant::now();
    let polled = stack
        .http
        .get(stack.url(0, &location))
        .header("prefer", "wait=20")
        .send()
        .await?;
    let waited = started.elapsed();
    assert_eq!(polled.status(), 202, "the long-poll outlived max_poll_wait");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(3500),
        "the long-poll waited {waited:?}; max_poll_wait is 1 s"
    );
    let arrived = eventually(Duration::from_secs(15), || async {
        match stack.http.get(stack.url(0, &location)).send().await {
            Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == body),
            _ => false,
        }
    })
    .await;
    assert!(arrived, "the reply never arrived");
    stack.shutdown().await
}

/// Reply headers the gateway never passes on, whatever the route says.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "location",
];

/// Checks an answer to the hand-made reply of
/// `reply_headers_drop_hop_by_hop_and_framing_and_follow_the_route_list`.
async fn check_filtered(response: reqwest::Response, narrow: bool, id: &str) -> TestResult {
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    for name in DROPPED {
        assert!(
            !headers.contains_key(*name),
            "reply header {name} reached the client: {headers:?}"
        );
    }
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    assert_eq!(all("content-type"), ["text/plain"]);
    assert_eq!(all("content-length"), ["11"]);
    assert_eq!(all("correlation-id"), [id]);
    assert_eq!(all("x-kept"), ["kept"]);
    assert_eq!(all("etag"), ["\"7\""]);
    let other = if narrow {
        vec![]
    } else {
        vec!["other".to_owned()]
    };
    assert_eq!(all("x-other"), other, "narrow: {narrow}");
    assert_eq!(response.text().await?, "framed body");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_headers_drop_hop_by_hop_and_framing_and_follow_the_route_list() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    // A topic nobody serves: the test plays the service.
    let quiet = format!("{}.quiet.requests", stack.prefix);
    stack.broker.create_topics(&[&quiet], 1).await?;
    let route = |path: &str, reply_headers: Option<Vec<String>>| RouteConfig {
        path: path.into(),
        topic: quiet.clone(),
        timeout: Duration::from_secs(20),
        reply_headers,
        ..RouteConfig::default()
    };
    let mut settings = stack.gateway_settings.clone();
    settings.routes = vec![
        route("/all", None),
        route("/narrow", Some(vec!["x-kept".into(), "etag".into()])),
    ];
    let (base, stop) = probe::spawn_gateway(settings).await?;
    // HTTP/1.1, where hop-by-hop headers mean something to the connection.
    let http1 = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?;
    let producer = stack.broker.producer()?;
    for (n, path) in ["/all", "/narrow"].into_iter().enumerate() {
        let request = http1.post(format!("{base}{path}")).body("ask").send();
        let in_flight = tokio::spawn(request);
        let records = stack
            .read_topic(&quiet, Duration::from_secs(20), |r| r.len() > n)
            .await?;
        let id = replyway_shared::Request::from_message(&records[n])?.correlation_id;
        produce(
            &producer,
            &stack.reply_topic,
            Some(&id),
            &[
                ("correlation-id", &id),
                ("status", "201"),
                ("content-type", "text/plain"),
                ("header-connection", "close"),
                ("header-keep-alive", "timeout=1"),
                ("header-proxy-authenticate", "Basic"),
                ("header-proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("header-proxy-connection", "close"),
                ("header-te", "trailers"),
                ("header-trailer", "x-checksum"),
                ("header-transfer-encoding", "chunked"),
                ("header-upgrade", "h2c"),
                ("header-content-length", "999"),
                ("header-content-type", "text/evil"),
                ("header-correlation-id", "forged"),
                ("header-location", "/elsewhere"),
                ("header-x-kept", "kept"),
                ("header-x-other", "other"),
                ("header-etag", "\"7\""),
            ],
            b"framed body",
        )
        .await?;
        let narrow = path == "/narrow";
        check_filtered(in_flight.await??, narrow, &id).await?;
        // Fetched by id, the same reply is filtered the same way.
        let fetched = http1.get(format!("{base}/v1/replies/{id}")).send().await?;
        check_filtered(fetched, narrow, &id).await?;
    }
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_503_naming_kafka_when_the_broker_does_not_answer() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        broker: BrokerChoice::Own,
        ..StackOptions::default()
    })
    .await?;
    let urls = [
        stack.url(0, "/readyz"),
        format!("http://{}/readyz", stack.gateway_admin[0]),
    ];
    for url in &urls {
        let r = stack.http.get(url).send().await?;
        assert_eq!(r.status(), 200, "{url}");
        let body: Value = r.json().await?;
        assert_eq!(
            body,
            json!({"ready": true, "redis": true, "subscription": true, "kafka": true})
        );
    }
    stack.broker.stop();
    for url in &urls {
        let r = stack.http.get(url).send().await?;
        assert_eq!(r.status(), 503, "{url} claims ready without a broker");
        let body: Value = r.json().await?;
        assert_eq!(
            body,
            json!({"ready": false, "redis": true, "subscription": true, "kafka": false}),
            "{url}"
        );
    }
    stack.broker.restart()?;
    let ready = eventually(Duration::from_secs(60), || async {
        stack
            .http
            .get(&urls[0])
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "not ready again after the broker came back");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_in_flight_when_shutdown_grace_runs_out_is_answered() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        gateways: 2,
        processes: true,
        gateway: |g| g.shutdown_grace = Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await?;
    // The reply comes after 5 s, within the route's 10 s timeout but long
    // after the grace period.
    let body = r#"{"sleep_ms":5000,"grace":"runs out"}"#;
    let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
    let in_flight = tokio::spawn(async move {
        let r = http.post(url).body(body).send().await?;
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answered = answer(r).await?;
        anyhow::Ok((answered, location))
    });
    let (http, admin) = (&stack.http, stack.gateway_admin[0].clone());
    let waiting = eventually(Duration::from_secs(10), || async {
        probe::metric(http, &admin, "replyway_gateway_waiting_requests")
            .await
            .is_ok_and(|v| v == Some(1.0))
    })
    .await;
    assert!(waiting, "the request never waited on the gateway");
    let started = Instant::now();
    stack.gateways[0].process().signal("TERM")?;
    let answered = in_flight.await?;
    let elapsed = started.elapsed();
    let log = stack.gateways[0].process().log();
    let (answer, location) = match answered {
        Ok(a) => a,
        Err(e) => panic!(
            "the request in flight when shutdown_grace ran out got no answer ({e:#}) after {elapsed:?}; gateway log:\n{log}"
        ),
    };
    assert_eq!(answer.status, 504, "{}", answer.body);
    let problem: Value = serde_json::from_str(&answer.body)?;
    assert_eq!(problem["type"], "urn:replyway:problem:reply-timeout");
    assert_eq!(problem["correlation_id"], answer.id.as_str());
    assert_eq!(location, Some(format!("/v1/replies/{}", answer.id)));
    assert!(
        elapsed < Duration::from_secs(4),
        "answered {elapsed:?} after SIGTERM; shutdown_grace is 1 s"
    );
    let exit = stack.gateways[0]
        .process()
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the gateway exited");
    assert!(exit.success(), "gateway exit: {exit:?}");
    // The reply is still collected, and served by the other replica.
    let late = stack
        .http
        .get(stack.url(1, &format!("/v1/replies/{}", answer.id)))
        .header("prefer", "wait=10")
        .send()
        .await?;
    assert_eq!(late.status(), 200);
    assert_eq!(late.text().await?, body);
    stack.shutdown().await
}
