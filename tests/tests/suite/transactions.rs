//! Exactly-once replies: the `TransactionalResponder` on Apache Kafka. An
//! echo instance SIGKILLed inside its open transactions, under load, and
//! restarted with the same instance id answers every command with exactly
//! one committed reply and exactly its events; a fenced zombie instance
//! cannot commit, and nothing of it reaches a `read_committed` reader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use replyway_shared::responder::TransactionalResponder;
use replyway_shared::responder::transactional::{
    Answer, Event, TransactionError, transactional_id,
};
use replyway_shared::settings::KafkaSettings;
use replyway_shared::{Reply, Request};
use replyway_tests::probe::metric;
use replyway_tests::{Broker, Proc, eventually, free_port};

type TestResult = anyhow::Result<()>;

/// A reader's `isolation.level`.
#[derive(Debug, Clone, Copy)]
enum Isolation {
    Committed,
    Uncommitted,
}

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Self::Committed => "read_committed",
            Self::Uncommitted => "read_uncommitted",
        }
    }
}

/// A consumer outside any group (partitions assigned by hand) that reads
/// with `isolation`.
fn reader(kafka: &KafkaSettings, isolation: Isolation) -> anyhow::Result<BaseConsumer> {
    Ok(kafka
        .consumer_config(&format!("replyway-tests-tx-reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation.name())
        .create()?)
}

/// The partitions of `topic`.
fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    Ok(metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Every record of `topic` that a reader with `isolation` is given, each
/// partition read from its start to the end that reader sees (the last
/// stable offset for `read_committed`, the high watermark otherwise). The
/// reader's position, not the last record's offset, tells when the end is
/// reached: a partition ends with a transaction's marker, which takes an
/// offset and is no record.
fn read_all(
    kafka: &KafkaSettings,
    topic: &str,
    isolation: Isolation,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = reader(kafka, isolation)?;
    let timeout = Duration::from_secs(5);
    let mut records = Vec::new();
    for partition in partitions(&consumer, topic)? {
        let (low, end) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let position = consumer
                .position()?
                .find_partition(topic, partition)
                .and_then(|p| p.offset().to_raw())
                .unwrap_or(low);
            if position >= end {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {topic}/{partition} stuck at {position} of {end}",
                isolation.name()
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                records.push(message?.detach());
            }
        }
    }
    Ok(records)
}

/// Whether a transaction is open on `topic` with records in the log: some
/// partition's high watermark (what `uncommitted` sees) is past its last
/// stable offset (what `committed` sees).
fn open_transaction(
    committed: &BaseConsumer,
    uncommitted: &BaseConsumer,
    topic: &str,
) -> anyhow::Result<bool> {
    let timeout = Duration::from_secs(5);
    for partition in partitions(committed, topic)? {
        let (_, stable) = committed.fetch_watermarks(topic, partition, timeout)?;
        let (_, high) = uncommitted.fetch_watermarks(topic, partition, timeout)?;
        if high > stable {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The text value of header `name` of `record`.
fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    let headers = record.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// How many records of `records` carry each correlation id.
fn per_id(records: &[OwnedMessage]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        let id = header(record, "correlation-id").unwrap_or_default();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Produces command `id` with `body` to `topic`, its reply to `reply_to`.
async fn command(
    producer: &FutureProducer,
    topic: &str,
    reply_to: &str,
    id: &str,
    body: &str,
) -> anyhow::Result<()> {
    let request = Request {
        correlation_id: id.into(),
        reply_to: reply_to.into(),
        content_type: Some("application/json".into()),
        ..Request::default()
    };
    let record = FutureRecord::to(topic)
        .key(id)
        .payload(body)
        .headers(request.record_headers());
    producer
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// Topics of one test: commands, replies, events.
struct Topics {
    requests: String,
    replies: String,
    events: String,
}

impl Topics {
    async fn create(broker: &Broker, prefix: &str, partitions: i32) -> anyhow::Result<Self> {
        let topics = Self {
            requests: format!("{prefix}.requests"),
            replies: format!("{prefix}.replies"),
            events: format!("{prefix}.events"),
        };
        broker
            .create_topics(
                &[&topics.requests, &topics.replies, &topics.events],
                partitions,
            )
            .await?;
        Ok(topics)
    }
}

/// Client settings for a test's services: the shared broker, and a dead
/// member's session ending after 6 s (the broker's minimum), so that a
/// restarted instance gets the partitions soon.
fn kafka(broker: &Broker) -> KafkaSettings {
    let mut kafka = broker.kafka_settings();
    kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    kafka
}

/// Starts the echo binary; returns it and its admin address once it has
/// initialised its transactions (its start line).
async fn start_echo(settings: &replyway_echo::Settings) -> anyhow::Result<(Proc, String)> {
    let mut echo = Proc::spawn("replyway-echo", settings, None)?;
    let admin = echo.reported_addr("admin", Duration::from_secs(30)).await?;
    let started = eventually(Duration::from_secs(30), || {
        let log = echo.log();
        async move { log.contains("echo service started") }
    })
    .await;
    if !started {
        let status = echo.wait_exit(Duration::ZERO).await;
        anyhow::bail!("echo did not start ({status:?}):\n{}", echo.log());
    }
    Ok((echo, admin.to_string()))
}

/// The transactions the echo instance at `admin` committed so far.
async fn committed_transactions(http: &reqwest::Client, admin: &str) -> f64 {
    metric(
        http,
        admin,
        "replyway_responder_transactions_committed_total",
    )
    .await
    .ok()
    .flatten()
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_echo_killed_inside_its_transactions_answers_every_command_exactly_once() -> TestResult {
    let broker = Broker::shared();
    let prefix = format!(
        "tx-kill-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let topics = Topics::create(broker, &prefix, 3).await?;
    let kafka = kafka(broker);
    let settings = replyway_echo::Settings {
        topics: vec![topics.requests.clone()],
        group_id: format!("{prefix}-echo"),
        transactional_id_prefix: Some(prefix.clone()),
        instance: Some("echo-0".into()),
        events_topic: Some(topics.events.clone()),
        admin_listen: "127.0.0.1:0".into(),
        kafka: kafka.clone(),
        ..replyway_echo::Settings::default()
    };
    let (producer, http) = (broker.producer()?, reqwest::Client::new());
    let (committed, uncommitted) = (
        reader(&kafka, Isolation::Committed)?,
        reader(&kafka, Isolation::Uncommitted)?,
    );
    // Waves of commands whose handlers take 0 to 450 ms: a batch's fast
    // replies are in the log while its slow ones keep the transaction open.
    // After each wave but the last, once the instance has committed a
    // transaction (so that work done again would show), it is SIGKILLed as
    // soon as a transaction of it is open with records in the log, and
    // restarted with the same instance id.
    let (waves, per_wave, kills) = (4, 200, 3);
    let (mut echo, mut admin) = start_echo(&settings).await?;
    let mut ids = Vec::new();
    for wave in 0..waves {
        for i in 0..per_wave {
            let id = format!("{prefix}-{wave}-{i}");
            let body = format!(r#"{{"n":{i},"sleep_ms":{}}}"#, (i % 10) * 50);
            command(&producer, &topics.requests, &topics.replies, &id, &body).await?;
            ids.push(id);
        }
        if wave >= kills {
            continue;
        }
        let progressed = eventually(Duration::from_secs(60), || {
            let (http, admin) = (&http, &admin);
            async move { committed_transactions(http, admin).await >= 1.0 }
        })
        .await;
        anyhow::ensure!(
            progressed,
            "wave {wave}: nothing committed in 60 s:\n{}",
            echo.log()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !open_transaction(&committed, &uncommitted, &topics.replies)? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "wave {wave}: no open transaction with records seen in 60 s:\n{}",
                echo.log()
            );
        }
        echo.signal("KILL")?;
        echo.wait_exit(Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow::anyhow!("the killed echo did not exit"))?;
        (echo, admin) = start_echo(&settings).await?;
    }

    // Every command is answered in the end: then the instance stops cleanly,
    // with no transaction left open.
    let (kafka_c, replies) = (kafka.clone(), topics.replies.clone());
    let all = ids.len();
    let answered = eventually(Duration::from_secs(120), || {
        let (kafka, replies) = (kafka_c.clone(), replies.clone());
        async move {
            tokio::task::spawn_blocking(move || read_all(&kafka, &replies, Isolation::Committed))
                .await
                .is_ok_and(|r| r.is_ok_and(|r| per_id(&r).len() >= all))
        }
    })
    .await;
    anyhow::ensure!(answered, "not every command was answered:\n{}", echo.log());
    echo.signal("TERM")?;
    let status = echo.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "echo did not stop cleanly ({status:?}):\n{}",
        echo.log()
    );

    let (kafka_c, topics_c) = (
        kafka.clone(),
        (topics.replies.clone(), topics.events.clone()),
    );
    let (replies, events, all_replies, all_events) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            read_all(&kafka_c, &topics_c.0, Isolation::Committed)?,
            read_all(&kafka_c, &topics_c.1, Isolation::Committed)?,
            read_all(&kafka_c, &topics_c.0, Isolation::Uncommitted)?,
            read_all(&kafka_c, &topics_c.1, Isolation::Uncommitted)?,
        ))
    })
    .await??;
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
    let (reply_counts, event_counts) = (per_id(&replies), per_id(&events));
    let twice: Vec<_> = reply_counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "committed more than once: {twice:?}");
    assert_eq!(
        reply_counts, expected,
        "every command has exactly one committed reply"
    );
    assert_eq!(
        event_counts, expected,
        "every command has exactly its one committed event"
    );
    for reply in &replies {
        let id = header(reply, "correlation-id").unwrap_or_default();
        assert_eq!(
            reply.key(),
            Some(id.as_bytes()),
            "a reply is keyed by its id"
        );
    }
    eprintln!(
        "{kills} kills: {} replies and {} events in the log, {} and {} committed",
        all_replies.len(),
        all_events.len(),
        replies.len(),
        events.len()
    );
    // The kills landed inside open transactions: their records reached the
    // log and were aborted, seen by a read_uncommitted reader only.
    assert!(
        all_replies.len() > replies.len() && all_events.len() > events.len(),
        "no aborted record: the kills missed the open transactions ({} replies and {} events in the log, {} and {} committed)",
        all_replies.len(),
        all_events.len(),
        replies.len(),
        events.len()
    );
    Ok(())
}

/// A test handler: answers with `body` and one event carrying the command's
/// id. A command whose body is `hold` first streams a part (a record in the
/// open transaction), reports it on `entered`, and waits for `release`.
async fn answer(
    request: Request,
    body: &'static str,
    events: Arc<str>,
    hold: Option<(mpsc::Sender<()>, Arc<Notify>)>,
) -> Result<Answer, replyway_shared::responder::HandlerError> {
    let id = request.correlation_id.clone();
    if &request.body[..] == b"hold"
        && let Some((entered, release)) = hold
    {
        let part = Reply::with_body(200, "text/plain", format!("{body}: part"));
        request.parts.send(part).await?;
        let _ = entered.send(()).await;
        release.notified().await;
    }
    let event = Event::new(events.as_ref(), body)
        .key(id.clone())
        .header("correlation-id", id);
    Ok(Answer::new(
        Reply::with_body(200, "text/plain", body),
        vec![event],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_zombie_cannot_commit_and_nothing_of_it_is_read() -> TestResult {
    let broker = Broker::shared();
    let prefix = format!(
        "tx-zombie-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let topics = Topics::create(broker, &prefix, 1).await?;
    let kafka = kafka(broker);
    let (group, id) = (format!("{prefix}-svc"), transactional_id(&prefix, "pod-0"));
    let events: Arc<str> = Arc::from(topics.events.as_str());
    let producer = broker.producer()?;
    let within = Duration::from_secs(30);

    // The older instance serves a first command, committed.
    let older = TransactionalResponder::start(&kafka, &group, &[&topics.requests], &id).await?;
    let older_stats = older.stats();
    let (entered_tx, mut entered) = mpsc::channel(1);
    let release = Arc::new(Notify::new());
    let hold = (entered_tx, Arc::clone(&release));
    let stop_older = CancellationToken::new();
    let older = tokio::spawn({
        let (events, stop) = (Arc::clone(&events), stop_older.clone());
        older.run(
            move |r| answer(r, "older", Arc::clone(&events), Some(hold.clone())),
            stop,
        )
    });
    command(&producer, &topics.requests, &topics.replies, "first", "{}").await?;
    assert!(
        eventually(within, || async {
            older_stats
                .committed
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        })
        .await,
        "the older instance never committed its first command"
    );
    let committed_before = older_stats
        .committed
        .load(std::sync::atomic::Ordering::Relaxed);

    // Then it holds a transaction open, a part of its reply in the log.
    command(&producer, &topics.requests, &topics.replies, "held", "hold").await?;
    tokio::time::timeout(within, entered.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the handler went away"))?;

    // A newer instance with the same transactional id starts: the older one
    // is fenced. Released, it cannot commit.
    let newer = TransactionalResponder::start(&kafka, &group, &[&topics.requests], &id).await?;
    release.notify_one();
    let ended = tokio::time::timeout(within, older).await??;
    let error = ended.expect_err("a fenced instance stops with an error");
    assert!(
        matches!(&error, TransactionError::Fenced { transactional_id, .. } if *transactional_id == id),
        "not fenced: {error}"
    );
    assert_eq!(
        older_stats
            .committed
            .load(std::sync::atomic::Ordering::Relaxed),
        committed_before,
        "the fenced instance committed again"
    );

    // The newer one answers the held command, once.
    let stop_newer = CancellationToken::new();
    let newer = tokio::spawn({
        let (events, stop) = (Arc::clone(&events), stop_newer.clone());
        newer.run(move |r| answer(r, "newer", Arc::clone(&events), None), stop)
    });
    let (kafka_c, replies_topic) = (kafka.clone(), topics.replies.clone());
    let answered = eventually(within, || {
        let (kafka, topic) = (kafka_c.clone(), replies_topic.clone());
        async move {
            tokio::task::spawn_blocking(move || read_all(&kafka, &topic, Isolation::Committed))
                .await
                .is_ok_and(|r| r.is_ok_and(|r| per_id(&r).contains_key("held")))
        }
    })
    .await;
    assert!(
        answered,
        "the newer instance never answered the held command"
    );
    stop_newer.cancel();
    tokio::time::timeout(within, newer).await???;
    drop(stop_older);

    let (kafka_c, topics_c) = (
        kafka.clone(),
        (topics.replies.clone(), topics.events.clone()),
    );
    let (replies, events, all_replies) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            read_all(&kafka_c, &topics_c.0, Isolation::Committed)?,
            read_all(&kafka_c, &topics_c.1, Isolation::Committed)?,
            read_all(&kafka_c, &topics_c.0, Isolation::Uncommitted)?,
        ))
    })
    .await??;
    let bodies = |records: &[OwnedMessage]| -> Vec<(String, String)> {
        records
            .iter()
            .map(|r| {
                (
                    header(r, "correlation-id").unwrap_or_default(),
                    String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    };
    let pair = |id: &str, body: &str| (id.to_owned(), body.to_owned());
    assert_eq!(
        bodies(&replies),
        [pair("first", "older"), pair("held", "newer")],
        "read_committed: the older instance's first reply, then the newer's; nothing of the fenced transaction"
    );
    assert_eq!(
        bodies(&events),
        [pair("first", "older"), pair("held", "newer")]
    );
    assert!(
        bodies(&all_replies).contains(&pair("held", "older: part")),
        "the zombie's part never reached the log (read_uncommitted): {:?}",
        bodies(&all_replies)
    );
    Ok(())
}
