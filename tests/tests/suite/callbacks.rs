//! Callbacks (webhooks): a reply POSTed to the client's `Callback-URL`,
//! signed the Standard Webhooks way, retried along the schedule, taken over
//! from a gateway that died mid-delivery, and URLs refused at request time.
//!
//! The receiver is an axum server of the test on 127.0.0.1, scripted attempt
//! by attempt; its signature check is written from the Standard Webhooks
//! specification alone (HMAC from RFC 2104 over SHA-256, base64), not from
//! the gateway's code.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use replyway_gateway::callbacks::RouteCallbacksConfig;
use replyway_tests::probe::{metric, spawn_gateway};
use replyway_tests::{Stack, StackOptions, eventually, read_topic_to_end};

type TestResult = anyhow::Result<()>;

/// The receivers' shared secret (the Standard Webhooks example secret).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The stack's settings: `/echo` calls back loopback URLs; `/strict` is a
/// copy that allows plain http to the same hosts but no private address;
/// short schedule, timeout and take-over for the test.
fn with_callbacks(settings: &mut replyway_gateway::Settings) {
    let open = RouteCallbacksConfig {
        url: None,
        allow_hosts: vec!["127.0.0.1".into(), "localhost".into()],
        allow_http: true,
        allow_private: true,
    };
    let mut strict = settings.routes[0].clone();
    strict.path = "/strict".into();
    strict.callbacks = Some(RouteCallbacksConfig {
        allow_private: false,
        ..open.clone()
    });
    settings.routes[0].callbacks = Some(open);
    settings.routes.push(strict);
    settings.callbacks.secret = Some(SECRET.into());
    settings.callbacks.schedule = vec![
        Duration::from_millis(100),
        Duration::from_millis(200),
        Duration::from_millis(300),
    ];
    settings.callbacks.jitter = 0.0;
    settings.callbacks.timeout = Duration::from_secs(1);
    settings.callbacks.claim_after = Duration::from_secs(2);
    settings.callbacks.poll_interval = Duration::from_millis(50);
}

/// What the receiver does with one attempt.
#[derive(Clone, Copy)]
enum Answer {
    /// Answers with this status at once.
    Status(u16),
    /// Holds the attempt this long, then answers 200.
    Hold(Duration),
    /// Answers `307` to `/elsewhere` (which records and answers 200).
    Redirect,
}

/// One attempt as the receiver saw it.
struct Attempt {
    /// `/hook` or `/elsewhere`.
    path: &'static str,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// A scripted receiver: attempt `n` gets `script[n]`, any later one 200.
struct Receiver {
    url: String,
    attempts: mpsc::UnboundedReceiver<Attempt>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> anyhow::Result<Self> {
        let (tx, attempts) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let hook = {
            let tx = tx.clone();
            move |headers: HeaderMap, body: Bytes| {
                let (tx, count, script) = (tx.clone(), Arc::clone(&count), Arc::clone(&script));
                async move {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(Attempt {
                        path: "/hook",
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    match script.get(n).copied().unwrap_or(Answer::Status(200)) {
                        Answer::Status(s) => StatusCode::from_u16(s)
                            .unwrap_or(StatusCode::OK)
                            .into_response(),
                        Answer::Hold(d) => {
                            tokio::time::sleep(d).await;
                            StatusCode::OK.into_response()
                        }
                        Answer::Redirect => (
                            StatusCode::TEMPORARY_REDIRECT,
                            [(axum::http::header::LOCATION, "/elsewhere")],
                        )
                            .into_response(),
                    }
                }
            }
        };
        let elsewhere = move |headers: HeaderMap, body: Bytes| {
            let _ = tx.send(Attempt {
                path: "/elsewhere",
                headers,
                body,
                at: Instant::now(),
            });
            async { StatusCode::OK }
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .route("/elsewhere", axum::routing::post(elsewhere));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url: format!("http://{addr}/hook"),
            attempts,
        })
    }

    /// The next attempt, within 20 s.
    async fn next(&mut self) -> anyhow::Result<Attempt> {
        tokio::time::timeout(Duration::from_secs(20), self.attempts.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no callback attempt within 20 s"))?
            .ok_or_else(|| anyhow::anyhow!("the receiver stopped"))
    }
}

/// HMAC-SHA256 (RFC 2104): H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ m)), 64-byte blocks.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Verifies an attempt as the Standard Webhooks specification says a
/// receiver does: the key is the base64 after `whsec_`; the signed content
/// is `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` is a
/// space-separated list of `v1,<base64>`, one of which must match; the
/// timestamp must be within five minutes of now. Returns the webhook-id.
fn verify(secret: &str, attempt: &Attempt) -> anyhow::Result<String> {
    let text = |name: &str| -> anyhow::Result<String> {
        Ok(attempt
            .headers
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no {name} header"))?
            .to_str()?
            .to_owned())
    };
    let (id, timestamp, signatures) = (
        text("webhook-id")?,
        text("webhook-timestamp")?,
        text("webhook-signature")?,
    );
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret))?;
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(&attempt.body);
    let expected = format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &content)));
    anyhow::ensure!(
        signatures.split(' ').any(|s| s == expected),
        "signature {signatures} does not verify (expected {expected})"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let sent: u64 = timestamp.parse()?;
    anyhow::ensure!(
        now.abs_diff(sent) <= 300,
        "timestamp {sent} is not now ({now})"
    );
    Ok(id)
}

/// The verifier itself against the specification's published vector.
#[test]
fn the_test_verifier_accepts_the_specification_vector() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "webhook-id",
        "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap(),
    );
    headers.insert("webhook-timestamp", "1614265330".parse().unwrap());
    let body = Bytes::from_static(br#"{"test": 2432232314}"#);
    let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let mut content = b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.".to_vec();
    content.extend_from_slice(&body);
    assert_eq!(
        STANDARD.encode(hmac_sha256(&key, &content)),
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

/// POSTs `body` to `path` with `Prefer: respond-async` and `Callback-URL`;
/// returns the answer's status and JSON body.
async fn post(
    stack: &Stack,
    base: &str,
    path: &str,
    callback: &str,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let answer = stack
        .http
        .post(format!("{base}{path}"))
        .header("prefer", "respond-async")
        .header("callback-url", callback)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = answer.status().as_u16();
    Ok((status, answer.json().await.unwrap_or_default()))
}

/// The `callback-state` and `callback-attempts` of `GET /v1/replies/{id}`.
async fn callback_headers(stack: &Stack, base: &str, id: &str) -> Option<(String, u32)> {
    let answer = stack
        .http
        .get(format!("{base}/v1/replies/{id}"))
        .send()
        .await
        .ok()?;
    let header = |name: &str| answer.headers().get(name)?.to_str().ok().map(str::to_owned);
    Some((
        header("callback-state")?,
        header("callback-attempts")?.parse().ok()?,
    ))
}

/// Waits until the pick-up shows the delivery `state` after `attempts`.
async fn until_state(stack: &Stack, base: &str, id: &str, state: &str, attempts: u32) -> bool {
    eventually(Duration::from_secs(10), || async {
        callback_headers(stack, base, id).await == Some((state.to_owned(), attempts))
    })
    .await
}

fn base(stack: &Stack) -> String {
    stack.url(0, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_is_posted_signed_to_the_callback_url() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: with_callbacks,
        ..StackOptions::default()
    })
    .await?;
    let mut receiver = Receiver::start(vec![]).await?;
    let base = base(&stack);
    let (status, accepted) = post(
        &stack,
        &base,
        "/echo",
        &receiver.url,
        r#"{"hello":"callback"}"#,
    )
    .await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let attempt = receiver.next().await?;
    assert_eq!(
        verify(SECRET, &attempt)?,
        id,
        "webhook-id is the correlation id"
    );
    assert_eq!(
        attempt
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let posted: serde_json::Value = serde_json::from_slice(&attempt.body)?;
    assert_eq!(posted["type"], "reply");
    assert_eq!(posted["data"]["correlation_id"], id.as_str());
    assert_eq!(posted["data"]["status"], 200);
    assert_eq!(posted["data"]["body_encoding"], "json");
    assert_eq!(posted["data"]["body"]["hello"], "callback");

    assert!(
        until_state(&stack, &base, &id, "delivered", 1).await,
        "the pick-up shows the delivery: {:?}",
        callback_headers(&stack, &base, &id).await
    );
    let delivered = metric(
        &stack.http,
        &stack.gateway_admin[0],
        "replyway_gateway_callback_deliveries_total{outcome=\"delivered\"}",
    )
    .await?;
    assert_eq!(delivered, Some(1.0));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), receiver.attempts.recv())
            .await
            .is_err(),
        "a delivered callback is not sent again"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_is_retried_after_500s_and_a_timeout_until_delivered() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: with_callbacks,
        ..StackOptions::default()
    })
    .await?;
    // 500, 503, then held past the 1 s timeout, then 200.
    let mut receiver = Receiver::start(vec![
        Answer::Status(500),
        Answer::Status(503),
        Answer::Hold(Duration::from_secs(3)),
    ])
    .await?;
    let base = base(&stack);
    let (status, accepted) = post(&stack, &base, "/echo", &receiver.url, r#"{"n":1}"#).await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let mut attempts = Vec::new();
    for _ in 0..4 {
        attempts.push(receiver.next().await?);
    }
    for attempt in &attempts {
        assert_eq!(
            verify(SECRET, attempt)?,
            id,
            "the same webhook-id on every attempt"
        );
    }
    // Each retry waits for its pause of the schedule (100, 200, 300 ms) after
    // the attempt before it ended (the third ended by the 1 s timeout).
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(1300), "{gaps:?}");
    assert!(until_state(&stack, &base, &id, "delivered", 4).await);
    let admin = &stack.gateway_admin[0];
    let series = |outcome: &str| {
        format!("replyway_gateway_callback_deliveries_total{{outcome=\"{outcome}\"}}")
    };
    assert_eq!(
        metric(&stack.http, admin, &series("retried")).await?,
        Some(3.0)
    );
    assert_eq!(
        metric(&stack.http, admin, &series("delivered")).await?,
        Some(1.0)
    );
    let timeouts = metric(
        &stack.http,
        admin,
        "replyway_gateway_callback_attempts_total{outcome=\"timeout\"}",
    )
    .await?;
    assert_eq!(timeouts, Some(1.0));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_fails_once_the_schedule_ran_out() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: with_callbacks,
        ..StackOptions::default()
    })
    .await?;
    let mut receiver = Receiver::start(vec![Answer::Status(500); 10]).await?;
    let base = base(&stack);
    let (status, accepted) = post(&stack, &base, "/echo", &receiver.url, "{}").await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The first attempt and one per pause of the schedule (three).
    for _ in 0..4 {
        receiver.next().await?;
    }
    assert!(until_state(&stack, &base, &id, "failed", 4).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(700), receiver.attempts.recv())
            .await
            .is_err(),
        "no attempt after the schedule ran out"
    );
    stack.shutdown().await
}

/// The gateway that holds a delivery is SIGKILLed while the receiver holds
/// its attempt open; another gateway takes the delivery over after
/// `claim_after` and delivers it again, with the same webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_of_a_killed_gateway_is_taken_over_by_another() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        processes: true,
        gateway: with_callbacks,
        ..StackOptions::default()
    })
    .await?;
    let mut receiver = Receiver::start(vec![Answer::Hold(Duration::from_secs(60))]).await?;
    let base = base(&stack);
    let (status, accepted) = post(&stack, &base, "/echo", &receiver.url, r#"{"k":"v"}"#).await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // The only gateway took the delivery; kill it mid-attempt.
    let first = receiver.next().await?;
    stack.gateways[0].process().signal("KILL")?;
    let killed_at = Instant::now();
    // A gateway started now sees the delivery only as left unfinished.
    let (other, stop) = spawn_gateway(stack.gateway_settings.clone()).await?;

    let second = receiver.next().await?;
    assert_eq!(verify(SECRET, &first)?, id);
    assert_eq!(
        verify(SECRET, &second)?,
        id,
        "delivered again with the same webhook-id"
    );
    assert!(
        second.at - killed_at >= Duration::from_secs(1),
        "taken over after claim_after, not at once"
    );
    assert!(
        until_state(&stack, &other, &id, "delivered", 1).await,
        "{:?}",
        callback_headers(&stack, &other, &id).await
    );
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_callback_urls_are_answered_400_and_nothing_is_produced() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: with_callbacks,
        ..StackOptions::default()
    })
    .await?;
    let base = base(&stack);
    let kafka = &stack.gateway_settings.kafka;
    let before = read_topic_to_end(kafka, &stack.echo_topic)?.len();
    let refused = [
        // Loopback on a route without allow_private: as written, and resolved.
        ("/strict", "http://127.0.0.1:9/hook", "not a public address"),
        ("/strict", "http://localhost:9/hook", "not a public address"),
        // A host not on the allowlist.
        ("/echo", "http://hooks.example.com/hook", "allow_hosts"),
        ("/echo", "ftp://127.0.0.1/hook", "scheme"),
        ("/echo", "not a url", "not an absolute URL"),
    ];
    for (path, url, reason) in refused {
        let (status, problem) = post(&stack, &base, path, url, "{}").await?;
        assert_eq!(status, 400, "{path} {url}: {problem}");
        assert_eq!(problem["type"], "urn:replyway:problem:bad-request");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(reason), "{url}: {detail}");
    }
    // A callback without respond-async, and on a route without callbacks.
    let sync = stack
        .http
        .post(format!("{base}/echo"))
        .header("callback-url", "http://127.0.0.1:9/hook")
        .body("{}")
        .send()
        .await?;
    assert_eq!(sync.status(), 400);
    let other_route = stack
        .http
        .post(format!("{base}/slow"))
        .header("prefer", "respond-async")
        .header("callback-url", "http://127.0.0.1:9/hook")
        .body("{}")
        .send()
        .await?;
    assert_eq!(other_route.status(), 400);

    assert_eq!(
        read_topic_to_end(kafka, &stack.echo_topic)?.len(),
        before,
        "nothing produced"
    );
    assert!(
        stack.redis_keys("*:callback").await?.is_empty(),
        "nothing recorded"
    );
    stack.shutdown().await
}

/// A route with a fixed `url` calls it back for every `respond-async`
/// request (a client's `Callback-URL` is refused there); a redirect is a
/// failed attempt, not followed. Its delivery needs nothing of the route: the
/// stack's gateway, which does not have the route, may make it as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fixed_url_is_called_back_and_redirects_are_not_followed() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: with_callbacks,
        ..StackOptions::default()
    })
    .await?;
    let mut receiver = Receiver::start(vec![Answer::Redirect]).await?;
    let mut settings = stack.gateway_settings.clone();
    let mut fixed = settings.routes[0].clone();
    fixed.path = "/fixed".into();
    fixed.callbacks = Some(RouteCallbacksConfig {
        url: Some(receiver.url.clone()),
        allow_hosts: Vec::new(),
        allow_http: true,
        allow_private: true,
    });
    settings.routes.push(fixed);
    let (other, stop) = spawn_gateway(settings).await?;

    let refused = stack
        .http
        .post(format!("{other}/fixed"))
        .header("prefer", "respond-async")
        .header("callback-url", receiver.url.as_str())
        .body("{}")
        .send()
        .await?;
    assert_eq!(refused.status(), 400, "a fixed url takes no Callback-URL");

    let accepted = stack
        .http
        .post(format!("{other}/fixed"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body(r#"{"fixed":true}"#)
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await?;
    let id = accepted["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let first = receiver.next().await?;
    let second = receiver.next().await?;
    assert_eq!(
        (first.path, second.path),
        ("/hook", "/hook"),
        "the 307 is not followed"
    );
    assert_eq!(verify(SECRET, &first)?, id);
    assert_eq!(verify(SECRET, &second)?, id);
    let posted: serde_json::Value = serde_json::from_slice(&second.body)?;
    assert_eq!(posted["data"]["body"]["fixed"], true);
    assert!(until_state(&stack, &other, &id, "delivered", 2).await);
    stop.cancel();
    stack.shutdown().await
}
