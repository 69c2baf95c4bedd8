//! The transactional outbox on PostgreSQL, end to end: the ledger demo in its
//! PostgreSQL mode (`replyway-ledger` with `postgres.url`) and
//! `replyway-outbox-relay`, as OS processes that the tests SIGKILL, on the
//! suite's Apache Kafka and a PostgreSQL server of each test's own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use replyway_shared::Request;
use replyway_shared::outbox::{PostgresSettings, RelaySettings};
use replyway_shared::settings::Secret;
use replyway_tests::{Broker, Postgres, Proc, Stack, StackOptions, free_port, until_records};

use super::ledger::{events_topic, ledger_gateway, requests_topic};

pub(super) type TestResult = anyhow::Result<()>;

/// Longest wait for any one thing a test waits for.
pub(super) const WAIT: Duration = Duration::from_secs(60);

/// A PostgreSQL server, and the settings of a ledger and a relay on it.
pub(super) struct Rig {
    pub(super) pg: Postgres,
    pub(super) db: tokio_postgres::Client,
    pub(super) ledger: replyway_ledger::Settings,
    pub(super) relay: RelaySettings,
    reply_topic: String,
}

impl Rig {
    /// A database, topics under `prefix` (created), and the settings of the
    /// ledger (`accounts`) and the relay on them, with `kafka`.
    pub(super) async fn start(
        broker: &Broker,
        prefix: &str,
        reply_topic: &str,
        accounts: &[(&str, u64)],
    ) -> anyhow::Result<Self> {
        Self::start_on(Postgres::start()?, broker, prefix, reply_topic, accounts).await
    }

    /// As [`Rig::start`], on `pg`.
    pub(super) async fn start_on(
        pg: Postgres,
        broker: &Broker,
        prefix: &str,
        reply_topic: &str,
        accounts: &[(&str, u64)],
    ) -> anyhow::Result<Self> {
        let db = pg.client().await?;
        let (requests, events) = (requests_topic(prefix), events_topic(prefix));
        broker
            .ensure_topics(&[&requests, &events, reply_topic], 3)
            .await?;
        let postgres = PostgresSettings {
            url: Some(Secret::from(pg.url())),
            ..PostgresSettings::default()
        };
        let ledger = replyway_ledger::Settings {
            group_id: format!("{prefix}-ledger"),
            topics: vec![requests],
            events_topic: events,
            accounts: accounts
                .iter()
                .map(|(a, b)| ((*a).to_owned(), *b))
                .collect(),
            postgres: postgres.clone(),
            kafka: broker.kafka_settings(),
            ..replyway_ledger::Settings::default()
        };
        let relay = RelaySettings {
            postgres,
            kafka: broker.kafka_settings(),
            ..RelaySettings::default()
        };
        Ok(Self {
            pg,
            db,
            ledger,
            relay,
            reply_topic: reply_topic.to_owned(),
        })
    }

    /// A ledger process, once it serves.
    pub(super) async fn ledger(&self) -> anyhow::Result<Proc> {
        let mut proc = Proc::spawn("replyway-ledger", &self.ledger, None)?;
        until_logged(&mut proc, "ledger service started on the postgres outbox").await?;
        Ok(proc)
    }

    /// A relay process publishing at most `max_batch` rows at once, once it
    /// streams.
    pub(super) async fn relay(&self, max_batch: usize) -> anyhow::Result<Proc> {
        let settings = RelaySettings {
            max_batch,
            // Often, so that a kill can land after an acknowledgement.
            ack_interval: Duration::from_millis(50),
            ..self.relay.clone()
        };
        let mut proc = Proc::spawn("replyway-outbox-relay", &settings, None)?;
        until_logged(&mut proc, "outbox relay started").await?;
        Ok(proc)
    }

    pub(super) async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(self.db.query_one(sql, &[]).await?.try_get(0)?)
    }

    /// Rows waiting in the outbox.
    pub(super) async fn outbox_rows(&self) -> anyhow::Result<i64> {
        self.count("SELECT count(*) FROM replyway_outbox").await
    }

    /// Waits until `sql` counts `n`.
    pub(super) async fn until_count(&self, sql: &str, n: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.count(sql).await?;
            if found == n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "`{sql}` counts {found}, not {n}, after {WAIT:?}\n{}",
                self.pg.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the relay's slot is: the position it last acknowledged.
    async fn confirmed_position(&self) -> anyhow::Result<Option<String>> {
        let row = self
            .db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.relay.postgres.slot],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Balances in the database.
    async fn balances(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let rows = self
            .db
            .query("SELECT account, balance FROM ledger_accounts", &[])
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// A transfer command as the gateway produces it, answered to the rig's
    /// reply topic.
    pub(super) fn transfer(&self, from: &str, to: &str, amount: u64) -> Request {
        let body = json!({ "from": from, "to": to, "amount": amount }).to_string();
        let mut request = Request::new(&self.reply_topic, body);
        request.method = Some("POST".into());
        request.path = Some("/ledger/transfers".into());
        request.content_type = Some("application/json".into());
        request
    }

    /// Produces `command` to the ledger's request topic.
    pub(super) async fn send(&self, producer: &FutureProducer, command: &Request) -> TestResult {
        let record = FutureRecord::to(&self.ledger.topics[0])
            .key(&command.correlation_id)
            .payload(&command.body[..])
            .headers(command.record_headers());
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }
}

/// Waits until `proc` logged `line` (or exited).
pub(super) async fn until_logged(proc: &mut Proc, line: &str) -> TestResult {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = proc.log();
        if log.contains(line) {
            return Ok(());
        }
        if let Some(status) = proc.wait_exit(Duration::ZERO).await {
            anyhow::bail!("exited ({status}) before logging {line:?}:\n{log}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "did not log {line:?} within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills `proc` with SIGKILL and waits until it is gone.
pub(super) async fn kill(proc: &mut Proc) -> TestResult {
    proc.signal("KILL")?;
    anyhow::ensure!(
        proc.wait_exit(Duration::from_secs(10)).await.is_some(),
        "still running 10 s after SIGKILL"
    );
    Ok(())
}

pub(super) fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub(super) fn body(message: &OwnedMessage) -> Value {
    serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or(Value::Null)
}

/// Waits until `topic` holds a record of each of `ids` (by `correlation-id`),
/// and returns every record of theirs read by then.
pub(super) async fn until_each(
    broker: &Broker,
    topic: &str,
    ids: &BTreeSet<String>,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let deadline = Instant::now() + WAIT;
    let mut seen: Vec<OwnedMessage> = Vec::new();
    let mut from = BTreeMap::new();
    loop {
        let found =
            until_records(&broker.kafka_settings(), topic, &from, 0, WAIT, |_| true).await?;
        for message in found {
            from.insert(message.partition(), message.offset() + 1);
            seen.push(message);
        }
        let answered: BTreeSet<String> = seen
            .iter()
            .filter_map(|m| header(m, "correlation-id"))
            .collect();
        if ids.is_subset(&answered) {
            return Ok(seen);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic} holds records of {} of the {} commands after {WAIT:?}",
            ids.intersection(&answered).count(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_committed_before_the_service_was_killed_is_published_by_the_relay() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: ledger_gateway,
        ..StackOptions::default()
    })
    .await?;
    let rig = Rig::start(
        &stack.broker,
        &stack.prefix,
        &stack.reply_topic,
        &[("alice", 10_000), ("bob", 500)],
    )
    .await?;
    let mut ledger = rig.ledger().await?;

    // Through the gateway, as a client would: answered later (no relay yet).
    let response = stack
        .http
        .post(stack.url(0, "/ledger/transfers"))
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(r#"{"from":"alice","to":"bob","amount":1000}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let id = response
        .headers()
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no correlation-id"))?;

    // Committed: the reply and both events wait in the outbox, the command
    // in the dedup table. Killed now, the service has published nothing.
    rig.until_count(
        &format!("SELECT count(*) FROM replyway_outbox WHERE correlation_id = '{id}'"),
        3,
    )
    .await?;
    kill(&mut ledger).await?;
    assert_eq!(
        rig.count(&format!(
            "SELECT count(*) FROM replyway_outbox_dedup WHERE correlation_id = '{id}'"
        ))
        .await?,
        1
    );
    assert_eq!(
        rig.balances().await?,
        BTreeMap::from([("alice".into(), 9000), ("bob".into(), 1500)])
    );
    let replies =
        replyway_tests::read_topic_to_end(&stack.broker.kafka_settings(), &stack.reply_topic)?;
    assert!(
        replies
            .iter()
            .all(|m| header(m, "correlation-id").as_deref() != Some(&id)),
        "the service published the reply itself"
    );

    // The relay publishes it: the client gets the transfer's reply.
    let _relay = rig.relay(500).await?;
    let response = stack
        .http
        .get(stack.url(0, &format!("/v1/replies/{id}")))
        .header("prefer", "wait=30")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await?;
    assert_eq!(reply["balances"], json!({"alice": 9000, "bob": 1500}));
    assert_eq!(reply["transfer_id"], id.as_str());
    let ids = BTreeSet::from([id.clone()]);
    until_each(&stack.broker, &rig.ledger.events_topic, &ids).await?;
    // Deleted only once the broker acknowledged them: all are in the topic.
    rig.until_count("SELECT count(*) FROM replyway_outbox", 0)
        .await?;
    let events = replyway_tests::read_topic_to_end(
        &stack.broker.kafka_settings(),
        &rig.ledger.events_topic,
    )?;
    let deltas: BTreeMap<String, i64> = events
        .iter()
        .map(|e| {
            let v = body(e);
            (
                v["account"].as_str().unwrap_or_default().to_owned(),
                v["delta"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        deltas,
        BTreeMap::from([("alice".into(), -1000), ("bob".into(), 1000)])
    );
    assert!(
        events
            .iter()
            .all(|e| header(e, "event-type").as_deref() == Some("balance-changed"))
    );

    // The service again (its command may come again: answered from the
    // dedup record), and its HTTP API on PostgreSQL.
    let _ledger = rig.ledger().await?;
    let response = stack
        .http
        .get(stack.url(0, "/ledger/accounts/alice"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let balance: Value = response.json().await?;
    assert_eq!(balance["balance"], 9000, "{balance}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_killed_mid_batch_loses_no_row_and_repeats_only_whole_records() -> TestResult {
    let broker = Broker::shared();
    let prefix = format!("outbox-relay-{}", free_port());
    let reply_topic = format!("{prefix}.replies");
    let rig = Rig::start(
        broker,
        &prefix,
        &reply_topic,
        &[("alice", 1_000_000), ("bob", 0)],
    )
    .await?;
    let _ledger = rig.ledger().await?;
    let producer = broker.producer()?;

    // 300 transfers committed into the outbox while no relay runs.
    const COMMANDS: i64 = 300;
    let commands: Vec<Request> = (0..COMMANDS)
        .map(|_| rig.transfer("alice", "bob", 1))
        .collect();
    for command in &commands {
        rig.send(&producer, command).await?;
    }
    rig.until_count("SELECT count(*) FROM replyway_outbox", 3 * COMMANDS)
        .await?;

    // A relay publishing 10 rows at a time, killed the moment the slot
    // took an acknowledgement from it while rows are left: a position
    // acknowledged before its rows were published would lose them.
    let initial = rig.confirmed_position().await?;
    let mut relay = rig.relay(10).await?;
    let started = Instant::now();
    loop {
        let acknowledged = rig.confirmed_position().await? != initial;
        if acknowledged && rig.outbox_rows().await? > 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < WAIT,
            "the relay acknowledged nothing while rows were left"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    kill(&mut relay).await?;
    let ran = started.elapsed();
    let left = rig.outbox_rows().await?;
    assert!(
        left > 0,
        "the relay finished before it was killed: nothing tested"
    );

    // Another relay publishes the rest; nothing is lost.
    let _relay = rig.relay(500).await?;
    let ids: BTreeSet<String> = commands.iter().map(|c| c.correlation_id.clone()).collect();
    until_each(broker, &reply_topic, &ids).await?;
    // Deleted only once the broker acknowledged them: all are in the topics.
    rig.until_count("SELECT count(*) FROM replyway_outbox", 0)
        .await?;
    let replies = replyway_tests::read_topic_to_end(&broker.kafka_settings(), &reply_topic)?;
    let events =
        replyway_tests::read_topic_to_end(&broker.kafka_settings(), &rig.ledger.events_topic)?;

    // Every command answered; a duplicate is the same record again, under
    // the same correlation id.
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for reply in &replies {
        let id = header(reply, "correlation-id").unwrap_or_default();
        assert!(ids.contains(&id), "a reply to no command: {id}");
        assert_eq!(reply.key(), Some(id.as_bytes()));
        by_id.entry(id).or_default().push(body(reply));
    }
    assert_eq!(by_id.len(), ids.len());
    for (id, bodies) in &by_id {
        assert!(bodies.iter().all(|b| b == &bodies[0]), "{id}: {bodies:?}");
        assert_eq!(bodies[0]["transfer_id"], id.as_str());
    }
    let mut events_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    for event in &events {
        let id = header(event, "correlation-id").unwrap_or_default();
        assert!(ids.contains(&id), "an event of no command: {id}");
        events_of
            .entry(id)
            .or_default()
            .insert(body(event).to_string());
    }
    assert!(
        ids.iter()
            .all(|id| events_of.get(id).is_some_and(|e| e.len() == 2)),
        "every transfer has its two events, duplicates being equal"
    );
    let repeated = replies.len() + events.len() - 3 * ids.len();
    println!("{left} rows left at the kill after {ran:?}; {repeated} records published twice");
    assert_eq!(
        rig.balances().await?,
        BTreeMap::from([
            ("alice".into(), 1_000_000 - COMMANDS),
            ("bob".into(), COMMANDS)
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_never_overdraw_and_conserve_the_sum() -> TestResult {
    let broker = Broker::shared();
    let prefix = format!("outbox-race-{}", free_port());
    let reply_topic = format!("{prefix}.replies");
    let accounts = [("a", 100), ("b", 100), ("c", 100)];
    let rig = Rig::start(broker, &prefix, &reply_topic, &accounts).await?;
    // Two replicas of the service, each handling up to 8 commands at once.
    let _first = rig.ledger().await?;
    let _second = rig.ledger().await?;
    let _relay = rig.relay(500).await?;
    let producer = broker.producer()?;

    // 300 transfers between three accounts, amounts 1..=60, all at once:
    // many would overdraw if two of them read the same balance.
    let names = ["a", "b", "c"];
    let commands: Vec<Request> = (0..300_u64)
        .map(|i| {
            // i % 3 pays (i + 1) % 3 or (i + 2) % 3: never itself.
            let from = usize::try_from(i % 3).unwrap_or(0);
            let to = (from + 1 + usize::try_from((i / 3) % 2).unwrap_or(0)) % 3;
            rig.transfer(names[from], names[to], 1 + (i * 37) % 60)
        })
        .collect();
    futures::future::try_join_all(commands.iter().map(|c| rig.send(&producer, c))).await?;
    let ids: BTreeSet<String> = commands.iter().map(|c| c.correlation_id.clone()).collect();
    let replies = until_each(broker, &reply_topic, &ids).await?;

    // Each answered once in effect: replay the done transfers' amounts.
    let mut expected: BTreeMap<String, i64> = accounts
        .iter()
        .map(|(a, b)| ((*a).to_owned(), i64::try_from(*b).unwrap_or(i64::MAX)))
        .collect();
    let mut outcome: HashMap<String, u16> = HashMap::new();
    for reply in &replies {
        let id = header(reply, "correlation-id").unwrap_or_default();
        let status: u16 = header(reply, "status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        if outcome.insert(id.clone(), status).is_some() {
            continue;
        }
        let command = commands.iter().find(|c| c.correlation_id == id);
        let command = command.ok_or_else(|| anyhow::anyhow!("reply to no command: {id}"))?;
        let asked: Value = serde_json::from_slice(&command.body)?;
        match status {
            200 => {
                let amount = asked["amount"].as_i64().unwrap_or(0);
                *expected
                    .entry(asked["from"].as_str().unwrap_or_default().into())
                    .or_default() -= amount;
                *expected
                    .entry(asked["to"].as_str().unwrap_or_default().into())
                    .or_default() += amount;
            }
            409 => assert_eq!(
                body(reply)["type"],
                "urn:replyway:ledger:insufficient-funds"
            ),
            other => anyhow::bail!("{id}: status {other}: {}", body(reply)),
        }
    }
    let done = outcome.values().filter(|s| **s == 200).count();
    let refused = outcome.values().filter(|s| **s == 409).count();
    println!("{done} transfers done, {refused} refused for insufficient funds");
    assert!(
        done > 0 && refused > 0,
        "{done} done, {refused} refused: no race tested"
    );
    let balances = rig.balances().await?;
    assert!(balances.values().all(|b| *b >= 0), "{balances:?}");
    assert_eq!(balances.values().sum::<i64>(), 300, "{balances:?}");
    assert_eq!(balances, expected, "balances are not the replies' sum");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_command_is_answered_from_its_dedup_record_not_executed_again() -> TestResult
{
    let broker = Broker::shared();
    let prefix = format!("outbox-again-{}", free_port());
    let reply_topic = format!("{prefix}.replies");
    let rig = Rig::start(
        broker,
        &prefix,
        &reply_topic,
        &[("alice", 1000), ("bob", 0)],
    )
    .await?;
    let mut ledger = rig.ledger().await?;
    let _relay = rig.relay(500).await?;
    let producer = broker.producer()?;

    let command = rig.transfer("alice", "bob", 300);
    let ids = BTreeSet::from([command.correlation_id.clone()]);
    rig.send(&producer, &command).await?;
    let first = until_each(broker, &reply_topic, &ids).await?;
    // The same record again, as a redelivery after a crash brings it.
    rig.send(&producer, &command).await?;
    until_logged(&mut ledger, "answered from its dedup record, not executed").await?;
    let replies = until_records(
        &broker.kafka_settings(),
        &reply_topic,
        &BTreeMap::new(),
        2,
        WAIT,
        |m| header(m, "correlation-id").as_ref() == Some(&command.correlation_id),
    )
    .await?;
    rig.until_count("SELECT count(*) FROM replyway_outbox", 0)
        .await?;

    assert_eq!(body(&replies[1]), body(&first[0]), "the first reply again");
    assert_eq!(
        body(&replies[1])["balances"],
        json!({"alice": 700, "bob": 300})
    );
    assert_eq!(
        rig.balances().await?,
        BTreeMap::from([("alice".into(), 700), ("bob".into(), 300)]),
        "executed once"
    );
    let events =
        replyway_tests::read_topic_to_end(&broker.kafka_settings(), &rig.ledger.events_topic)?;
    assert_eq!(events.len(), 2, "the events of one execution");
    assert_eq!(
        rig.count("SELECT count(*) FROM replyway_outbox_dedup")
            .await?,
        1
    );
    Ok(())
}
