//! The ledger demo end to end: HTTP → gateway → Kafka → ledger (state in Redis)
//! → Kafka → collector → gateway → HTTP, with its `balance-changed` events on
//! their own topic, a real broker and a real Redis per test.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use replyway_gateway::routes::RouteConfig;
use replyway_shared::Request;
use replyway_shared::record::new_correlation_id;
use replyway_shared::settings::RedisSettings;
use replyway_tests::{RedisServer, Stack, StackOptions, eventually, free_port};

type TestResult = anyhow::Result<()>;

/// The ledger's request topic of the stack with key prefix `prefix`.
pub(crate) fn requests_topic(prefix: &str) -> String {
    format!("{prefix}.ledger.requests")
}

/// The ledger's event topic of the stack with key prefix `prefix`.
pub(crate) fn events_topic(prefix: &str) -> String {
    format!("{prefix}.ledger.events")
}
const CLIENT_HEADER: &str = "x-client-id";

/// The gateway settings of `config/local/gateway.toml` for the ledger.
pub(crate) fn ledger_gateway(g: &mut replyway_gateway::Settings) {
    g.client_id_header = Some(CLIENT_HEADER.into());
    let topic = requests_topic(&g.redis.prefix);
    let route = |method: &str, path: &str, key: &str| RouteConfig {
        method: method.into(),
        path: path.into(),
        topic: topic.clone(),
        key: key.into(),
        timeout: Duration::from_secs(10),
        body_limit: 4096,
        ..RouteConfig::default()
    };
    g.routes
        .push(route("POST", "/ledger/transfers", "{correlation_id}"));
    g.routes.push(route(
        "GET",
        "/ledger/accounts/{account}",
        "{param.account}",
    ));
}

/// A stack whose gateway routes to the ledger, and the ledger running in this
/// process against `redis` (the stack's own when `None`).
struct LedgerStack {
    stack: Stack,
    token: CancellationToken,
    ledger: JoinHandle<anyhow::Result<()>>,
    prefix: String,
}

impl LedgerStack {
    async fn start(redis: Option<&RedisServer>) -> anyhow::Result<Self> {
        let stack = Stack::start(StackOptions {
            gateway: ledger_gateway,
            ..StackOptions::default()
        })
        .await?;
        let (requests, events) = (requests_topic(&stack.prefix), events_topic(&stack.prefix));
        stack.broker.create_topics(&[&requests, &events], 3).await?;
        let prefix = format!("{}-ledger", stack.prefix);
        let settings = replyway_ledger::Settings {
            group_id: format!("{}-ledger", stack.prefix),
            topics: vec![requests],
            events_topic: events,
            accounts: BTreeMap::from([
                ("alice".into(), 10_000),
                ("bob".into(), 500),
                ("dave".into(), 1_000),
            ]),
            redis: RedisSettings {
                url: redis.unwrap_or(&stack.redis).url().into(),
                prefix: prefix.clone(),
                ttl: Duration::from_secs(120),
                timeout: Duration::from_secs(1),
                ..RedisSettings::default()
            },
            kafka: stack.broker.kafka_settings(),
            ..replyway_ledger::Settings::default()
        };
        let token = CancellationToken::new();
        let ledger = tokio::spawn({
            let token = token.clone();
            async move { replyway_ledger::run(&settings, token).await }
        });
        let this = Self {
            stack,
            token,
            ledger,
            prefix,
        };
        // The ledger answers once its consumer group has joined.
        let stack = &this;
        let ready = eventually(Duration::from_secs(60), || async move {
            stack
                .get("/ledger/accounts/alice", &[("prefer", "wait=2")])
                .await
                .is_ok_and(|(status, ..)| status == 200)
        })
        .await;
        anyhow::ensure!(ready, "the ledger did not answer within 60 s");
        Ok(this)
    }

    async fn answer(
        response: reqwest::Response,
    ) -> anyhow::Result<(u16, String, Option<String>, Value)> {
        let status = response.status().as_u16();
        let text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = text("content-type");
        let id = text("correlation-id").unwrap_or_default();
        let body = response.bytes().await?;
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, id, content_type, body))
    }

    /// `GET path`: status, correlation id, content type, body.
    async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String, Option<String>, Value)> {
        let mut request = self.stack.http.get(self.stack.url(0, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(request.send().await?).await
    }

    /// `POST /ledger/transfers` with `body`, as `client` when given.
    async fn transfer(
        &self,
        body: &str,
        client: Option<&str>,
    ) -> anyhow::Result<(u16, String, Option<String>, Value)> {
        let mut request = self
            .stack
            .http
            .post(self.stack.url(0, "/ledger/transfers"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(client) = client {
            request = request.header(CLIENT_HEADER, client);
        }
        Self::answer(request.send().await?).await
    }

    async fn balance(&self, account: &str) -> anyhow::Result<u64> {
        let (status, _, _, body) = self
            .get(&format!("/ledger/accounts/{account}"), &[])
            .await?;
        anyhow::ensure!(status == 200, "GET {account}: {status} {body}");
        assert_eq!(body["account"], account);
        body["balance"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no balance in {body}"))
    }

    async fn shutdown(self) -> TestResult {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.ledger).await???;
        self.stack.shutdown().await
    }
}

/// Every record of `topic`, read from the start by a fresh consumer group:
/// at least `least`, then until nothing more came for a second.
///
/// (The ledger may still be producing events when its reply arrives, so the
/// read goes on until the topic is quiet.)
async fn read_all(stack: &Stack, topic: &str, least: usize) -> anyhow::Result<Vec<OwnedMessage>> {
    let group = format!("{}-reader-{}", stack.prefix, free_port());
    let consumer: StreamConsumer = stack
        .broker
        .kafka_settings()
        .consumer_config(&group)
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(message) => records.push(message?.detach()),
            Err(_quiet) if records.len() >= least => return Ok(records),
            Err(_quiet) => anyhow::ensure!(
                Instant::now() < deadline,
                "read {} of at least {least} records of {topic} within 60 s",
                records.len()
            ),
        }
    }
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn value(message: &OwnedMessage) -> Value {
    serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or(Value::Null)
}

fn key(message: &OwnedMessage) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_answer_balances_problems_and_emit_events() -> TestResult {
    let ledger = LedgerStack::start(None).await?;

    // A transfer: both new balances, under the request's correlation id.
    let (status, paid, content_type, body) = ledger
        .transfer(
            r#"{"from":"alice","to":"bob","amount":1000}"#,
            Some("shop-7"),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(body["balances"], json!({"alice": 9000, "bob": 1500}));
    assert_eq!(body["transfer_id"], paid.as_str());
    assert_eq!(
        (ledger.balance("alice").await?, ledger.balance("bob").await?),
        (9000, 1500)
    );

    // An overdraft: 409 problem naming balance and amount; nothing moved.
    let (status, _, content_type, problem) = ledger
        .transfer(
            r#"{"from":"bob","to":"alice","amount":2000}"#,
            Some("shop-7"),
        )
        .await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(problem["type"], "urn:replyway:ledger:insufficient-funds");
    assert_eq!(problem["status"], 409);
    assert_eq!(
        (
            &problem["account"],
            &problem["balance"],
            &problem["requested"]
        ),
        (&json!("bob"), &json!(1500), &json!(2000))
    );
    assert_eq!(
        (ledger.balance("alice").await?, ledger.balance("bob").await?),
        (9000, 1500)
    );

    // Unknown accounts: 404.
    let (status, _, _, problem) = ledger
        .transfer(r#"{"from":"alice","to":"carol","amount":1}"#, None)
        .await?;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["type"], "urn:replyway:ledger:unknown-account");
    assert_eq!(problem["account"], "carol");
    let (status, _, content_type, problem) = ledger.get("/ledger/accounts/carol", &[]).await?;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));

    // Bad input: 400, nothing moved.
    for bad in [
        "not json",
        r#"{"from":"alice","to":"bob"}"#,
        r#"{"from":"alice","to":"bob","amount":0}"#,
        r#"{"from":"alice","to":"bob","amount":-5}"#,
        r#"{"from":"alice","to":"bob","amount":1.5}"#,
        r#"{"from":"alice","to":"bob","amount":"10"}"#,
        r#"{"from":"alice","to":"alice","amount":1}"#,
        r#"{"from":"al ice","to":"bob","amount":1}"#,
        r#"{"from":"alice","to":"bob","amount":1,"memo":"x"}"#,
    ] {
        let (status, _, _, problem) = ledger.transfer(bad, None).await?;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(
            problem["type"], "urn:replyway:ledger:invalid-request",
            "{bad}"
        );
    }
    let long = "a".repeat(65);
    for path in [
        "/ledger/accounts/a%20b".to_owned(),
        format!("/ledger/accounts/{long}"),
    ] {
        let (status, _, _, problem) = ledger.get(&path, &[]).await?;
        assert_eq!(status, 400, "{path}: {problem}");
    }
    assert_eq!(
        (ledger.balance("alice").await?, ledger.balance("bob").await?),
        (9000, 1500)
    );

    // A transfer without a client id.
    let (status, anonymous, _, body) = ledger
        .transfer(r#"{"from":"bob","to":"alice","amount":500}"#, None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balances"], json!({"alice": 9500, "bob": 1000}));

    // Events were produced before the replies: two per transfer that moved
    // money, none for the refused ones.
    let events = read_all(&ledger.stack, &events_topic(&ledger.stack.prefix), 4).await?;
    assert_eq!(events.len(), 4);
    let mut seen = BTreeMap::new();
    for event in &events {
        assert_eq!(
            header(event, "event-type").as_deref(),
            Some("balance-changed")
        );
        assert_eq!(
            header(event, "content-type").as_deref(),
            Some("application/json")
        );
        let v = value(event);
        assert_eq!(v["account"], key(event).as_str(), "keyed by account");
        assert_eq!(
            v["transfer_id"].as_str(),
            header(event, "correlation-id").as_deref()
        );
        assert!(
            v["at"].as_u64().is_some_and(|at| at > 1_600_000_000_000),
            "{v}"
        );
        seen.insert(
            (
                header(event, "correlation-id").unwrap_or_default(),
                key(event),
            ),
            (
                v["balance"].clone(),
                v["delta"].clone(),
                header(event, "client-id"),
            ),
        );
    }
    let shop = Some("shop-7".to_owned());
    assert_eq!(
        seen,
        BTreeMap::from([
            (
                (paid.clone(), "alice".into()),
                (json!(9000), json!(-1000), shop.clone())
            ),
            (
                (paid.clone(), "bob".into()),
                (json!(1500), json!(1000), shop)
            ),
            (
                (anonymous.clone(), "alice".into()),
                (json!(9500), json!(500), None)
            ),
            (
                (anonymous.clone(), "bob".into()),
                (json!(1000), json!(-500), None)
            ),
        ])
    );
    ledger.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_transfer_moves_money_once() -> TestResult {
    let ledger = LedgerStack::start(None).await?;
    let id = new_correlation_id();
    let command = |body: &str| {
        let mut request = Request::new(&ledger.stack.reply_topic, body.to_owned());
        request.correlation_id = id.clone();
        request.method = Some("POST".into());
        request.path = Some("/ledger/transfers".into());
        request.content_type = Some("application/json".into());
        request.client_id = Some("batch-1".into());
        request
    };
    let producer = ledger.stack.broker.producer()?;
    let requests = requests_topic(&ledger.stack.prefix);
    let send = |request: Request| {
        let (producer, requests) = (producer.clone(), requests.clone());
        async move {
            let record = FutureRecord::to(&requests)
                .key(&request.correlation_id)
                .payload(&request.body[..])
                .headers(request.record_headers());
            producer
                .send(record, Duration::from_secs(5))
                .await
                .map_err(|(e, _)| e)
        }
    };
    // The same command twice, as after a crash before its offset was committed.
    let transfer = command(r#"{"from":"alice","to":"bob","amount":700}"#);
    send(transfer.clone()).await?;
    send(transfer).await?;
    let replies_to = |records: &[OwnedMessage]| {
        records
            .iter()
            .filter(|r| header(r, "correlation-id").as_deref() == Some(id.as_str()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let replies = ledger
        .stack
        .read_topic(&ledger.stack.reply_topic, Duration::from_secs(60), |r| {
            replies_to(r).len() >= 2
        })
        .await?;
    let replies = replies_to(&replies);
    assert_eq!(replies.len(), 2);
    for reply in &replies {
        assert_eq!(header(reply, "status").as_deref(), Some("200"));
        assert_eq!(
            value(reply),
            value(&replies[0]),
            "the second delivery got the first outcome"
        );
    }
    assert_eq!(
        value(&replies[0])["balances"],
        json!({"alice": 9300, "bob": 1200})
    );
    assert_eq!(
        (ledger.balance("alice").await?, ledger.balance("bob").await?),
        (9300, 1200)
    );
    // The outcome is kept for a while, not forever.
    let mut redis = ledger.stack.redis.connection().await?;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(replyway_ledger::store::Keys::new(ledger.prefix.clone()).outcome(&id))
        .query_async(&mut redis)
        .await?;
    assert!(ttl > 0 && ttl <= 120_000, "outcome TTL {ttl} ms");

    // Every event of the transfer says the same: a consumer that dedupes by
    // transfer id sees one change per account.
    let events = read_all(&ledger.stack, &events_topic(&ledger.stack.prefix), 2).await?;
    assert!(
        events.len() == 2 || events.len() == 4,
        "{} events",
        events.len()
    );
    let distinct: HashSet<(String, String, Option<String>, String)> = events
        .iter()
        .map(|e| {
            (
                key(e),
                value(e).to_string(),
                header(e, "client-id"),
                header(e, "correlation-id").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(distinct.len(), 2, "{distinct:?}");
    for (account, v, client, correlation) in &distinct {
        let v: Value = serde_json::from_str(v)?;
        assert_eq!(v["transfer_id"], id.as_str());
        assert_eq!(
            (client.as_deref(), correlation.as_str()),
            (Some("batch-1"), id.as_str())
        );
        let expected = if account == "alice" {
            (9300, -700)
        } else {
            (1200, 700)
        };
        assert_eq!(
            (v["balance"].as_u64(), v["delta"].as_i64()),
            (Some(expected.0), Some(expected.1))
        );
    }

    // Another transfer under the used correlation id is refused; nothing moves.
    send(command(r#"{"from":"alice","to":"bob","amount":1}"#)).await?;
    let replies = ledger
        .stack
        .read_topic(&ledger.stack.reply_topic, Duration::from_secs(60), |r| {
            replies_to(r).len() >= 3
        })
        .await?;
    let third = replies_to(&replies)
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no third reply"))?;
    assert_eq!(header(&third, "status").as_deref(), Some("422"));
    assert_eq!(
        value(&third)["type"],
        "urn:replyway:ledger:transfer-id-reused"
    );
    assert_eq!(
        (ledger.balance("alice").await?, ledger.balance("bob").await?),
        (9300, 1200)
    );
    ledger.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_never_overdraw() -> TestResult {
    let ledger = LedgerStack::start(None).await?;
    // dave holds 1000: six transfers of 150 fit, fourteen do not.
    let answers = join_all(
        (0..20).map(|_| ledger.transfer(r#"{"from":"dave","to":"alice","amount":150}"#, None)),
    )
    .await;
    let mut paid = 0;
    let mut dave_after = HashSet::new();
    for answer in answers {
        let (status, _, _, body) = answer?;
        match status {
            200 => {
                paid += 150;
                let balance = body["balances"]["dave"]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("no balance in {body}"))?;
                assert!(
                    dave_after.insert(balance),
                    "two transfers saw balance {balance}"
                );
            }
            409 => assert_eq!(
                body["balance"], 100,
                "refused while funds were left: {body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(paid, 900);
    assert_eq!(dave_after, HashSet::from([850, 700, 550, 400, 250, 100]));
    assert_eq!(ledger.balance("dave").await?, 1000 - paid);
    assert_eq!(ledger.balance("alice").await?, 10_000 + paid);
    // Two events per transfer that moved money, each balance once.
    let events = read_all(&ledger.stack, &events_topic(&ledger.stack.prefix), 12).await?;
    assert_eq!(events.len(), 12);
    let mut dave_events: Vec<u64> = events
        .iter()
        .filter(|e| key(e) == "dave")
        .filter_map(|e| value(e)["balance"].as_u64())
        .collect();
    dave_events.sort_unstable();
    assert_eq!(dave_events, [100, 250, 400, 550, 700, 850]);
    ledger.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledgers_redis_down_answers_500() -> TestResult {
    // The ledger on a Redis of its own, so the gateway keeps working.
    let mut redis = RedisServer::start()?;
    let ledger = LedgerStack::start(Some(&redis)).await?;
    redis.stop();
    let (status, _, content_type, problem) = ledger
        .transfer(r#"{"from":"alice","to":"bob","amount":1}"#, None)
        .await?;
    assert_eq!(status, 500, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let (status, ..) = ledger.get("/ledger/accounts/alice", &[]).await?;
    assert_eq!(status, 500);
    ledger.shutdown().await
}
