//! The Responder's priority lanes and cancellation, against the shared Apache
//! Kafka broker: a high-lane command overtakes a low lane's backlog, a lower
//! lane keeps its share while both are backlogged and then drains, a cancel
//! record skips a queued command and stops a running one, and the echo service
//! exports the counters on its admin port.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use replyway_shared::record::cancel_headers;
use replyway_shared::responder::{Cancelled, HandlerError, Responder, ResponderStats};
use replyway_shared::{Reply, Request};
use replyway_tests::{Broker, Stack, StackOptions, eventually};

type TestResult = anyhow::Result<()>;

/// A log of what a handler did, in order.
type Log = Arc<Mutex<Vec<String>>>;

fn entries(log: &Log) -> Vec<String> {
    log.lock().expect("the log's lock").clone()
}

fn logged(log: &Log) -> usize {
    log.lock().expect("the log's lock").len()
}

/// Produces command `body` (a minute to live) to `topic`, keyed by its
/// correlation id; returns the id.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    reply_to: &str,
    body: String,
) -> anyhow::Result<String> {
    let mut request = Request::new(reply_to, body);
    request.set_timeout(Duration::from_secs(120));
    producer
        .send(
            FutureRecord::to(topic)
                .key(&request.correlation_id)
                .payload(&request.body[..])
                .headers(request.record_headers()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(request.correlation_id)
}

/// Produces the cancel record of command `id` to its topic, with its key.
async fn cancel(producer: &FutureProducer, topic: &str, id: &str) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::<str, [u8]>::to(topic)
                .key(id)
                .headers(cancel_headers(id)),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// Produces `bodies` as commands, many at a time; returns their ids.
async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    reply_to: &str,
    bodies: impl Iterator<Item = String>,
) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(bodies)
        .map(|body| send(producer, topic, reply_to, body))
        .buffered(200)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Reads the replies of `topic` (from its start) by correlation id until
/// `enough` holds; fails after `within`.
async fn replies_until(
    broker: &Broker,
    topic: &str,
    within: Duration,
    enough: impl Fn(&HashMap<String, Reply>) -> bool,
) -> anyhow::Result<HashMap<String, Reply>> {
    let consumer: StreamConsumer = broker
        .kafka_settings()
        .consumer_config(&format!("lanes-reader-{}", replyway_tests::free_port()))
        .create()?;
    consumer.subscribe(&[topic])?;
    let (deadline, mut replies) = (Instant::now() + within, HashMap::new());
    while !enough(&replies) {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "{} replies on {topic} after {within:?}, not enough",
            replies.len()
        );
        if let Ok(message) = tokio::time::timeout(left, consumer.recv()).await {
            let (id, reply) = replyway_shared::record::reply_from_message(&message?, 1 << 20)?;
            replies.insert(id, reply);
        }
    }
    Ok(replies)
}

/// Waits until `group` has committed the end of every partition of `topic`:
/// every record of it, cancel records and cancelled commands included.
async fn until_committed_to_the_end(broker: &Broker, group: &str, topic: &str) -> TestResult {
    let ends = broker.end_offsets(topic)?;
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let offsets = broker.group_offsets(group)?;
    let wanted: BTreeMap<i32, Option<i64>> = ends.iter().map(|(p, e)| (*p, Some(*e))).collect();
    let mut committed = BTreeMap::new();
    let reached = eventually(Duration::from_secs(20), || {
        committed = tokio::task::block_in_place(|| offsets.committed(topic, &partitions))
            .unwrap_or_default();
        let done = committed == wanted;
        async move { done }
    })
    .await;
    anyhow::ensure!(
        reached,
        "{group} committed {committed:?} of {topic}, not its end {wanted:?}"
    );
    Ok(())
}

async fn until_stat(stats: &ResponderStats, stat: fn(&ResponderStats) -> u64, n: u64) -> bool {
    eventually(Duration::from_secs(20), || async { stat(stats) >= n }).await
}

/// A service whose handler takes `delay` milliseconds, then waits while
/// `gate` is closed; logs each command's body when it starts and when it
/// finishes.
struct Slow {
    delay: Arc<AtomicU64>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    starts: Log,
    finishes: Log,
}

impl Slow {
    fn new(delay_ms: u64) -> Self {
        Self {
            delay: Arc::new(AtomicU64::new(delay_ms)),
            gate: Arc::new(tokio::sync::watch::Sender::new(true)),
            starts: Log::default(),
            finishes: Log::default(),
        }
    }

    fn handler(
        &self,
    ) -> impl Fn(
        Request,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply, HandlerError>> + Send>>
    + use<> {
        let (delay, gate) = (Arc::clone(&self.delay), Arc::clone(&self.gate));
        let (starts, finishes) = (Arc::clone(&self.starts), Arc::clone(&self.finishes));
        move |request: Request| {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            starts.lock().expect("the log's lock").push(body.clone());
            let (delay, mut open) = (delay.load(Ordering::SeqCst), gate.subscribe());
            let finishes = Arc::clone(&finishes);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = open.wait_for(|open| *open).await;
                finishes.lock().expect("the log's lock").push(body.clone());
                Ok(Reply::with_body(200, "text/plain", body))
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_high_lane_command_overtakes_a_low_lane_backlog() -> TestResult {
    replyway_tests::init_logs();
    let broker = Broker::shared();
    let (high, low, replies) = ("overtake.high", "overtake.low", "overtake.replies");
    broker.create_topics(&[high, low, replies], 1).await?;
    let producer = broker.producer()?;
    let low_ids = send_all(
        &producer,
        low,
        replies,
        (0..2000).map(|n| format!("low-{n}")),
    )
    .await?;

    // 20 ms a command, two at a time: 2000 commands are a backlog of 20 s.
    let service = Slow::new(20);
    let responder =
        Responder::with_lanes(&broker.kafka_settings(), "overtake", &[&[high], &[low]], 2)?;
    let stats = responder.stats();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(responder.run(service.handler(), stop.clone()));

    // The low lane is served and reads ahead to its bound.
    let backlogged = eventually(Duration::from_secs(30), || async {
        logged(&service.finishes) >= 5 && stats.queued()[1] >= 200
    })
    .await;
    anyhow::ensure!(
        backlogged,
        "the low lane was not served: {:?}",
        stats.queued()
    );
    // The urgent command is read while the running commands hold at the
    // gate, so that what is measured is the order of starts, not how long
    // the broker took to deliver it (on a loaded machine, hundreds of ms).
    service.gate.send_replace(false);
    let urgent = send(&producer, high, replies, "high-0".into()).await?;
    let read = eventually(Duration::from_secs(20), || async {
        // Queued behind the held slots, or (a slot was free as it came) started.
        stats.queued()[0] >= 1 || entries(&service.starts).iter().any(|b| b == "high-0")
    })
    .await;
    anyhow::ensure!(read, "the high-lane command was not read ahead");
    let before = logged(&service.finishes);
    service.gate.send_replace(true);
    let overtook = eventually(Duration::from_secs(20), || async {
        entries(&service.finishes).iter().any(|b| b == "high-0")
    })
    .await;
    anyhow::ensure!(overtook, "the high-lane command was not handled");
    let finishes = entries(&service.finishes);
    let at = finishes
        .iter()
        .position(|b| b == "high-0")
        .expect("handled");
    let lows_meanwhile = at - before;
    assert!(
        lows_meanwhile <= 10,
        "{lows_meanwhile} low-lane commands finished before the high-lane one"
    );

    // Both lanes backlogged: the running commands hold at the gate while the
    // high lane reads ahead to its bound, then every start is counted.
    service.gate.send_replace(false);
    let high_ids = send_all(
        &producer,
        high,
        replies,
        (1..=300).map(|n| format!("high-{n}")),
    )
    .await?;
    let high_full = eventually(Duration::from_secs(20), || async {
        stats.queued()[0] >= 256
    })
    .await;
    anyhow::ensure!(
        high_full,
        "the high lane did not fill: {:?}",
        stats.queued()
    );
    let from = logged(&service.starts);
    service.gate.send_replace(true);
    let high_done = eventually(Duration::from_secs(30), || async {
        let starts = entries(&service.starts);
        starts.iter().filter(|b| b.starts_with("high-")).count() == 301
    })
    .await;
    anyhow::ensure!(high_done, "the high lane's backlog was not served");
    let starts = entries(&service.starts);
    let last_high = starts
        .iter()
        .rposition(|b| b.starts_with("high-"))
        .expect("started");
    let window = &starts[from..=last_high];
    let lows = window.iter().filter(|b| b.starts_with("low-")).count();
    // A tenth of the starts: 300 high-lane ones and about 33 low-lane ones.
    assert!(
        (28..=40).contains(&lows),
        "{lows} low-lane starts beside 300 high-lane ones (share 0.1)"
    );

    // Then the low lane drains completely, faster.
    service.delay.store(0, Ordering::SeqCst);
    let commands = low_ids.len() + high_ids.len() + 1;
    let all = replies_until(broker, replies, Duration::from_secs(60), |got| {
        got.len() >= commands
    })
    .await?;
    for id in low_ids.iter().chain(&high_ids).chain([&urgent]) {
        assert_eq!(all.get(id).map(|r| r.status), Some(200), "no reply to {id}");
    }
    assert_eq!(stats.replied.load(Ordering::Relaxed), commands as u64);
    assert_eq!(stats.queued(), [0, 0]);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    until_committed_to_the_end(broker, "overtake", low).await?;
    until_committed_to_the_end(broker, "overtake", high).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_queued_command_is_skipped() -> TestResult {
    replyway_tests::init_logs();
    let broker = Broker::shared();
    let (topic, replies) = ("skip.requests", "skip.replies");
    broker.create_topics(&[topic, replies], 1).await?;
    let responder = Responder::new(&broker.kafka_settings(), "skip", &[topic], 1)?;
    let stats = responder.stats();
    let service = Slow::new(0);
    service.gate.send_replace(false);
    let stop = CancellationToken::new();
    let serving = tokio::spawn(responder.run(service.handler(), stop.clone()));
    let producer = broker.producer()?;

    // The slow command takes the one place; the next one waits in the queue.
    let slow = send(&producer, topic, replies, "slow".into()).await?;
    let started = eventually(Duration::from_secs(30), || async {
        logged(&service.starts) == 1
    })
    .await;
    anyhow::ensure!(started, "the slow command did not start");
    let queued = send(&producer, topic, replies, "queued".into()).await?;
    let waits = eventually(Duration::from_secs(20), || async { stats.queued() == [1] }).await;
    anyhow::ensure!(
        waits,
        "the second command is not queued: {:?}",
        stats.queued()
    );
    cancel(&producer, topic, &queued).await?;
    assert!(
        until_stat(&stats, |s| s.cancelled.load(Ordering::Relaxed), 1).await,
        "the queued command was not cancelled"
    );
    assert_eq!(stats.queued(), [0]);
    service.gate.send_replace(true);
    let after = send(&producer, topic, replies, "after".into()).await?;

    // Replies come in order on one partition: once the last is in, the
    // cancelled command's would have been too.
    let got = replies_until(broker, replies, Duration::from_secs(20), |got| {
        got.contains_key(&after)
    })
    .await?;
    assert!(got.contains_key(&slow), "the slow command was not answered");
    assert!(
        !got.contains_key(&queued),
        "the cancelled command was answered"
    );
    assert_eq!(entries(&service.starts), ["slow", "after"]);
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.malformed.load(Ordering::Relaxed),
        0,
        "a cancel record is no command"
    );
    assert_eq!(stats.replied.load(Ordering::Relaxed), 2);
    // Committed past the cancelled command and its cancel record.
    until_committed_to_the_end(broker, "skip", topic).await?;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_handler_sees_its_cancellation() -> TestResult {
    replyway_tests::init_logs();
    let broker = Broker::shared();
    let (topic, replies) = ("interrupt.requests", "interrupt.replies");
    broker.create_topics(&[topic, replies], 1).await?;
    let responder = Responder::new(&broker.kafka_settings(), "interrupt", &[topic], 4)?;
    let stats = responder.stats();
    let started = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let started = Arc::clone(&started);
        move |request: Request| {
            let started = Arc::clone(&started);
            async move {
                if request.body == "after" {
                    return Ok(Reply::with_body(200, "text/plain", request.body));
                }
                started.notify_one();
                // Long work that watches its token.
                tokio::select! {
                    () = request.cancelled.cancelled() => Err::<Reply, HandlerError>(Cancelled.into()),
                    () = tokio::time::sleep(Duration::from_secs(60)) => {
                        Ok(Reply::with_body(200, "text/plain", "not cancelled"))
                    }
                }
            }
        }
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(responder.run(handler, stop.clone()));
    let producer = broker.producer()?;

    let long = send(&producer, topic, replies, "long".into()).await?;
    tokio::time::timeout(Duration::from_secs(30), started.notified()).await?;
    cancel(&producer, topic, &long).await?;
    assert!(
        until_stat(&stats, |s| s.interrupted.load(Ordering::Relaxed), 1).await,
        "the handler did not stop on its cancellation"
    );
    assert_eq!(stats.running(), 0);
    let after = send(&producer, topic, replies, "after".into()).await?;
    let got = replies_until(broker, replies, Duration::from_secs(20), |got| {
        got.contains_key(&after)
    })
    .await?;
    assert!(
        !got.contains_key(&long),
        "the interrupted command was answered"
    );
    assert_eq!(stats.replied.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0, "not answered 500");
    assert_eq!(
        stats.cancelled.load(Ordering::Relaxed),
        0,
        "it was not queued"
    );
    until_committed_to_the_end(broker, "interrupt", topic).await?;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_exports_the_responder_counters_on_its_admin_port() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let admin = format!("http://{}", stack.echo_admin);
    let health = stack.http.get(format!("{admin}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    // The warm-up request of the stack's start was answered.
    let replied = stack
        .metric_sum(
            &stack.echo_admin.to_string(),
            "replyway_responder_replied_total",
            &[],
        )
        .await;
    assert!(replied.is_some_and(|n| n >= 1.0), "{replied:?}");
    let page = stack
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for line in [
        "replyway_responder_cancelled_total 0",
        "replyway_responder_interrupted_total 0",
        "replyway_responder_expired_total 0",
        "replyway_responder_running 0",
        "replyway_responder_queued{lane=\"0\"} 0",
    ] {
        assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
    }
    stack.shutdown().await
}
