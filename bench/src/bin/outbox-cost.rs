//! Transfers per second of the ledger demo in its two modes, on an Apache
//! Kafka started here: balances in Redis (the `Responder`: the reply and the
//! events produced by the service), and balances in PostgreSQL on the
//! transactional outbox (the `OutboxResponder` commits the transfer, its reply
//! and its events in one transaction; `replyway-outbox-relay` publishes them
//! from logical replication). Each run preloads a fresh 3-partition topic
//! with the same transfers between 100 accounts, starts the ledger (and, for
//! the outbox, the relay first), and times the replies as a reader sees them
//! arrive, from the first to the last (so start-up and the group join are not
//! counted). Each outbox run has a PostgreSQL of its own (Debian's 15,
//! `fsync` on). The modes take turns, run after run.
//!
//!   cargo run --release -p replyway-bench --bin outbox-cost -- --commands 5000 --runs 3 [--connections 8]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use clap::Parser;
use rdkafka::producer::FutureRecord;

use replyway_bench::replies::until_replies;
use replyway_shared::Request;
use replyway_shared::outbox::{PostgresSettings, RelaySettings};
use replyway_shared::settings::{RedisSettings, Secret};
use replyway_tests::{Broker, Postgres, Proc, RedisServer};

#[derive(Parser)]
struct Args {
    /// Transfers per run.
    #[arg(long, default_value_t = 5_000)]
    commands: usize,
    /// Runs of each mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The ledger's `postgres.connections` (commands in flight).
    #[arg(long, default_value_t = PostgresSettings::default().connections)]
    connections: usize,
}

const PARTITIONS: i32 = 3;
const ACCOUNTS: usize = 100;
/// Longest a run may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Redis,
    Outbox,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Redis => "ledger on Redis (Responder)",
            Self::Outbox => "ledger on PostgreSQL (OutboxResponder + relay)",
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::start()?;
    let kafka = broker.kafka_settings();
    let producer = broker.producer()?;
    let redis = RedisServer::start()?;
    let mut rates: Vec<(Mode, Vec<f64>)> =
        vec![(Mode::Redis, Vec::new()), (Mode::Outbox, Vec::new())];
    for run in 0..args.runs {
        for (mode, seen) in &mut rates {
            let name = format!("outboxbench-{run}-{}", *mode as u8);
            let (requests, replies, events) = (
                format!("{name}.requests"),
                format!("{name}.replies"),
                format!("{name}.events"),
            );
            broker
                .create_topics(&[&requests, &replies, &events], PARTITIONS)
                .await?;
            let mut ids = HashSet::with_capacity(args.commands);
            for i in 0..args.commands {
                let (from, to) = (i % ACCOUNTS, (i * 7 + 1) % ACCOUNTS);
                let to = if to == from { (to + 1) % ACCOUNTS } else { to };
                let body = format!(r#"{{"from":"a{from}","to":"a{to}","amount":1}}"#);
                let mut command = Request::new(&replies, body);
                command.method = Some("POST".into());
                command.path = Some("/ledger/transfers".into());
                ids.insert(command.correlation_id.clone());
                producer
                    .send(
                        FutureRecord::to(&requests)
                            .key(&command.correlation_id)
                            .payload(&command.body[..])
                            .headers(command.record_headers()),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
            }
            let accounts: BTreeMap<String, u64> = (0..ACCOUNTS)
                .map(|a| (format!("a{a}"), 1_000_000))
                .collect();
            let mut ledger = replyway_ledger::Settings {
                topics: vec![requests],
                events_topic: events,
                group_id: format!("{name}-ledger"),
                accounts,
                kafka: kafka.clone(),
                ..replyway_ledger::Settings::default()
            };
            let (_pg, _relay) = match mode {
                Mode::Redis => {
                    ledger.redis = RedisSettings {
                        url: redis.url().into(),
                        prefix: name.clone(),
                        ..ledger.redis.clone()
                    };
                    (None, None)
                }
                Mode::Outbox => {
                    let pg = Postgres::start_durable()?;
                    ledger.postgres = PostgresSettings {
                        url: Some(Secret::from(pg.url())),
                        connections: args.connections,
                        ..PostgresSettings::default()
                    };
                    let relay = RelaySettings {
                        postgres: ledger.postgres.clone(),
                        kafka: kafka.clone(),
                        ..RelaySettings::default()
                    };
                    let relay =
                        Proc::spawn_with_log("replyway-outbox-relay", &relay, None, "warn")?;
                    (Some(pg), Some(relay))
                }
            };
            let service = Proc::spawn_with_log("replyway-ledger", &ledger, None, "warn")?;
            let rate = until_replies(
                &kafka,
                &replies,
                PARTITIONS,
                ids.len(),
                |id| ids.contains(id),
                RUN_LIMIT,
            )?
            .rate();
            drop(service);
            println!("run {run}: {}: {rate:.0} transfers/s", mode.name());
            seen.push(rate);
        }
    }
    println!();
    for (mode, seen) in &rates {
        let mut sorted = seen.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let runs: Vec<String> = seen.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{}: median {median:.0} transfers/s of {} (runs: {})",
            mode.name(),
            args.commands,
            runs.join(", ")
        );
    }
    Ok(())
}
