//! Does the test broker hand a consumer every record it acknowledged?
//!
//! Starts a fresh Apache Kafka broker, subscribes one consumer (Replyway's
//! consumer settings) to a 3-partition topic, then has `--producers` producers
//! (Replyway's producer settings: idempotent, `acks=all`) send `--records`
//! records each, `--in-flight` at a time. Once every record is acknowledged it
//! waits for the consumer to go quiet, then reads the whole topic again from
//! the start and reports which acknowledged records the live consumer never
//! received although they are in the log.
//!
//!   cargo run --release -p replyway-bench --bin kafka-probe -- --producers 2
//!
//! Exits non-zero when a record is missing (from the log or from the consumer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use replyway_shared::settings::KafkaSettings;
use replyway_tests::Broker;

#[derive(Parser)]
struct Args {
    /// Producers writing at the same time.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Records per producer.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Records in flight per producer.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

/// Where each record is: key → (partition, offset).
type Positions = HashMap<String, (i32, i64)>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::start()?;
    let topic = "probe";
    broker.create_topics(&[topic], 3).await?;
    let kafka = broker.kafka_settings();

    let consumer: StreamConsumer = kafka.consumer_config("probe").create()?;
    consumer.subscribe(&[topic])?;
    let consumer = Arc::new(consumer);
    let seen: Arc<Mutex<Positions>> = Arc::default();
    let live = {
        let (consumer, seen) = (Arc::clone(&consumer), Arc::clone(&seen));
        tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(message) = stream.next().await {
                if let Ok(m) = message {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    let mut seen = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    seen.insert(key, (m.partition(), m.offset()));
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment()?.count() < 3 {
        ensure!(
            Instant::now() < deadline,
            "the consumer was never assigned the partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let producers = (0..args.producers).map(|p| {
        let kafka = kafka.clone();
        let (records, in_flight) = (args.records, args.in_flight);
        tokio::spawn(async move {
            let producer: FutureProducer = kafka.producer_config().create()?;
            let acked: Vec<anyhow::Result<(String, i32, i64)>> = futures::stream::iter(0..records)
                .map(|i| {
                    let producer = producer.clone();
                    async move {
                        let key = format!("p{p}-{i}");
                        let delivery = producer
                            .send(
                                FutureRecord::to(topic).key(&key).payload("probe"),
                                Duration::from_secs(30),
                            )
                            .await
                            .map_err(|(e, _)| e)?;
                        Ok((key, delivery.partition, delivery.offset))
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;
            acked.into_iter().collect::<anyhow::Result<Vec<_>>>()
        })
    });
    let mut acked = Positions::new();
    for producer in futures::future::join_all(producers).await {
        for (key, partition, offset) in producer.context("a producer panicked")?? {
            acked.insert(key, (partition, offset));
        }
    }
    println!(
        "{} producers: {} records acknowledged in {:.1} s",
        args.producers,
        acked.len(),
        started.elapsed().as_secs_f64()
    );

    // Until the consumer has everything, or has received nothing for 10 s.
    let (mut last, mut quiet_since) = (0, Instant::now());
    loop {
        let n = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        if n >= acked.len() || quiet_since.elapsed() > Duration::from_secs(10) {
            break;
        }
        if n != last {
            (last, quiet_since) = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    live.abort();
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let log = tokio::task::spawn_blocking(move || read_all(&kafka, topic)).await??;

    let mut by_position: HashMap<(i32, i64), Vec<&String>> = HashMap::new();
    for (key, position) in &acked {
        by_position.entry(*position).or_default().push(key);
    }
    let shared: Vec<_> = by_position
        .iter()
        .filter(|(_, keys)| keys.len() > 1)
        .collect();
    println!(
        "acknowledged at an offset another record was acknowledged at: {}",
        shared.len()
    );
    for (position, keys) in shared.iter().take(5) {
        println!(
            "  {position:?}: {keys:?}, the log holds {:?} there",
            log.iter().find(|(_, p)| *p == *position).map(|(k, _)| k)
        );
    }
    let not_in_log: Vec<_> = acked.keys().filter(|k| !log.contains_key(*k)).collect();
    let not_received: Vec<_> = acked.keys().filter(|k| !seen.contains_key(*k)).collect();
    println!(
        "in the log: {} of {}",
        acked.len() - not_in_log.len(),
        acked.len()
    );
    println!(
        "received by the live consumer: {} of {}",
        acked.len() - not_received.len(),
        acked.len()
    );
    for key in not_in_log.iter().take(10) {
        println!(
            "  not in the log: {key}, acknowledged at {:?}, received live at {:?}",
            acked[*key],
            seen.get(*key)
        );
    }
    for key in not_received.iter().take(10) {
        println!(
            "  never received: {key}, acknowledged at {:?}, in the log at {:?}",
            acked[*key],
            log.get(*key)
        );
    }
    ensure!(
        not_in_log.is_empty() && not_received.is_empty(),
        "{} acknowledged records not in the log, {} never received by the consumer",
        not_in_log.len(),
        not_received.len()
    );
    Ok(())
}

/// Where every record of `topic` is, read again from the start.
fn read_all(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Positions> {
    Ok(replyway_tests::read_topic_to_end(kafka, topic)?
        .iter()
        .map(|m| {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            (key, (m.partition(), m.offset()))
        })
        .collect())
}
