//! Test harness: real Apache Kafka ([`Broker`]: one node, a 3-node cluster, or
//! the test binary's shared broker) and a real Redis, started on free loopback
//! ports, plus gateways, collectors and the echo service talking to them over
//! the network, in this process or as OS processes.

mod kafka;
pub mod load;
mod offsets;
mod postgres;
pub mod probe;
mod process;
pub mod redis_cluster;
mod redis_server;
mod stack;
pub mod tls;

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use replyway_shared::settings::KafkaSettings;

pub use kafka::{Broker, kafka_libs, kafka_version};
pub use offsets::GroupOffsets;
pub use postgres::Postgres;
pub use process::{Proc, bin_path, reported_addr};
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use stack::{BrokerChoice, BrokerRef, Node, Running, Stack, StackOptions, test_routes};
/// A free TCP port on 127.0.0.1 for a server the test starts (Kafka, Redis,
/// PostgreSQL), handed out once per process.
///
/// The port comes from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), never from `bind(0)`: a port that
/// `bind(0)` gave and the test released is in that range, so between its
/// release and the server's bind (a JVM broker takes seconds) the kernel may
/// give it to any outgoing connection of the parallel tests. That happened:
/// a Kafka controller failed to bind its port, and a peer read a Redis reply
/// as a Kafka frame size and ran out of heap. Below the range only servers
/// that name their port bind, and this counter names each one once.
pub fn free_port() -> u16 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let (low, high) = ports_outside_ephemeral_range();
    let span = u32::from(high - low);
    // Each test binary starts at its own place, so two binaries run at once
    // (a developer's shell and `make test`) seldom meet.
    let next = NEXT.get_or_init(|| std::sync::atomic::AtomicU32::new(std::process::id() % span));
    for _ in 0..span {
        let offset = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % span;
        let port = low + u16::try_from(offset).expect("offset within a u16 span");
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}")
}

/// Ports the kernel never hands out on its own: below the ephemeral range,
/// or above it when it starts too low to leave room.
fn ports_outside_ephemeral_range() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let (first, last) = range
        .as_deref()
        .and_then(|r| {
            let mut it = r.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999));
    if first >= 12_000 {
        (first.saturating_sub(12_000).max(10_000), first)
    } else {
        (last.saturating_add(1), u16::MAX)
    }
}

pub(crate) fn wait_for_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < within {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after {within:?}")
}

/// Logs of the test process, once.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Produces a record with the given headers (a hand-made reply or command).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &[u8],
) -> anyhow::Result<()> {
    let mut owned = rdkafka::message::OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(rdkafka::message::Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::to(topic).payload(value).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// Every record of `topic`, read with assigned partitions (no consumer group)
/// from the start of each partition to its end. The end is the high watermark,
/// asked again when the read reaches it and whenever a poll comes back empty,
/// so a watermark that lagged when reading began does not cut the read short.
///
/// # Errors
/// When the broker cannot be asked, or a partition stops short of its end
/// for 60 s.
pub fn read_topic_to_end(
    kafka: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    Ok(read_range(kafka, topic, &BTreeMap::new(), true)?.0)
}

/// The records of `topic` from offset `from[partition]` of each partition (its
/// start where `from` names none) on, and the offset after the last one read
/// of each partition. With `chase`, to the end as [`read_topic_to_end`] reads
/// it; without, to the high watermark each partition had when its read began,
/// so that a read of a topic under load ends.
fn read_range(
    kafka: &KafkaSettings,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    chase: bool,
) -> anyhow::Result<(Vec<rdkafka::message::OwnedMessage>, BTreeMap<i32, i64>)> {
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka
        .consumer_config(&format!("replyway-tests-reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let (mut records, mut ends) = (Vec::new(), BTreeMap::new());
    for partition in partitions {
        let (low, mut high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let start = from.get(&partition).map_or(low, |f| (*f).max(low));
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let (mut next, deadline) = (start, Instant::now() + Duration::from_secs(60));
        let ask_end = |high: &mut i64| -> anyhow::Result<()> {
            if chase {
                *high = (*high).max(consumer.fetch_watermarks(topic, partition, timeout)?.1);
            }
            Ok(())
        };
        loop {
            if next >= high {
                ask_end(&mut high)?;
                if next >= high {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading {topic}/{partition} got stuck at offset {next} of {high}"
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                ask_end(&mut high)?;
                continue;
            };
            let message = message?;
            next = message.offset() + 1;
            records.push(message.detach());
        }
        ends.insert(partition, next);
    }
    Ok((records, ends))
}

/// How many records of `topic` have the value `value`, read from the start of
/// every partition to its end ([`read_topic_to_end`]): the commands one
/// request body produced, counted in the log rather than by the broker's
/// offsets.
///
/// # Errors
/// As [`read_topic_to_end`].
pub fn records_with_value(
    kafka: &KafkaSettings,
    topic: &str,
    value: &[u8],
) -> anyhow::Result<usize> {
    use rdkafka::message::Message;
    Ok(read_topic_to_end(kafka, topic)?
        .iter()
        .filter(|m| m.payload() == Some(value))
        .count())
}

/// Waits until `topic` holds at least `n` records from offsets `from` on
/// (per partition; empty: from the start) that `matches` accepts, and returns
/// them. Each read goes on from where the last one ended (off the async
/// threads), so that waiting on a topic under load stays quick.
///
/// # Errors
/// When `within` passes first (saying how many it found), or a read fails.
pub async fn until_records<F>(
    kafka: &KafkaSettings,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    n: usize,
    within: Duration,
    matches: F,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>>
where
    F: Fn(&rdkafka::message::OwnedMessage) -> bool,
{
    let deadline = Instant::now() + within;
    let (mut position, mut found) = (from.clone(), Vec::new());
    loop {
        let (settings, name, start) = (kafka.clone(), topic.to_owned(), position.clone());
        let (records, ends) =
            tokio::task::spawn_blocking(move || read_range(&settings, &name, &start, false))
                .await??;
        position = ends;
        found.extend(records.into_iter().filter(|m| matches(m)));
        if found.len() >= n {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic} holds {} of the {n} records waited for after {within:?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Taken by the tests that load the machine most (a 3-node cluster, a thousand
/// connections at once) or bound a time that such load would stretch, so that
/// two of them never run at once on a small machine; the rest of the suite
/// still runs beside them.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
