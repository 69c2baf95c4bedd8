//! Commands per second of the echo service at least once (the `Responder`)
//! and exactly once (the `TransactionalResponder`, with and without one
//! event per command), on an Apache Kafka started here. Each run preloads
//! a fresh 3-partition topic with the same commands, starts one echo
//! process on it, and times its replies as a `read_committed` reader sees
//! them arrive, from the first to the last (so the process's start and its
//! group join are not counted). The modes take turns, run after run.
//!
//!   cargo run --release -p replyway-bench --bin tx-throughput -- --commands 20000 --runs 3

use std::time::Duration;

use clap::Parser;
use rdkafka::producer::FutureRecord;

use replyway_bench::replies::until_replies;
use replyway_shared::Request;
use replyway_tests::{Broker, Proc};

#[derive(Parser)]
struct Args {
    /// Commands per run.
    #[arg(long, default_value_t = 20_000)]
    commands: usize,
    /// Runs of each mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// How the echo service answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `Responder`: at least once.
    Plain,
    /// `TransactionalResponder`, the reply alone.
    Transactional,
    /// `TransactionalResponder`, the reply and one event.
    TransactionalWithEvent,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "at least once (Responder)",
            Self::Transactional => "exactly once (TransactionalResponder)",
            Self::TransactionalWithEvent => "exactly once, + 1 event per command",
        }
    }
}

const PARTITIONS: i32 = 3;
/// Longest a run may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::start()?;
    let kafka = broker.kafka_settings();
    let producer = broker.producer()?;
    let modes = [
        Mode::Plain,
        Mode::Transactional,
        Mode::TransactionalWithEvent,
    ];
    let mut rates: Vec<(Mode, Vec<f64>)> = modes.iter().map(|m| (*m, Vec::new())).collect();
    for run in 0..args.runs {
        for (mode, seen) in &mut rates {
            let name = format!("txbench-{run}-{}", *mode as u8);
            let (requests, replies, events) = (
                format!("{name}.requests"),
                format!("{name}.replies"),
                format!("{name}.events"),
            );
            broker
                .create_topics(&[&requests, &replies, &events], PARTITIONS)
                .await?;
            let sends = (0..args.commands).map(|i| {
                let id = format!("{name}-{i}");
                let headers = Request {
                    correlation_id: id.clone(),
                    reply_to: replies.clone(),
                    content_type: Some("application/json".into()),
                    ..Request::default()
                }
                .record_headers();
                let (producer, requests) = (producer.clone(), requests.clone());
                async move {
                    let record = FutureRecord::to(&requests)
                        .key(&id)
                        .payload(r#"{"order":42}"#)
                        .headers(headers);
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                }
            });
            futures::future::try_join_all(sends).await?;
            let settings = replyway_echo::Settings {
                topics: vec![requests.clone()],
                group_id: format!("{name}-echo"),
                transactional_id_prefix: match mode {
                    Mode::Plain => None,
                    _ => Some(name.clone()),
                },
                instance: Some("bench".into()),
                events_topic: match mode {
                    Mode::TransactionalWithEvent => Some(events.clone()),
                    _ => None,
                },
                kafka: kafka.clone(),
                ..replyway_echo::Settings::default()
            };
            let reading = {
                let (kafka, replies, n) = (kafka.clone(), replies.clone(), args.commands);
                tokio::task::spawn_blocking(move || {
                    until_replies(&kafka, &replies, PARTITIONS, n, |_| true, RUN_LIMIT)
                })
            };
            let mut echo = Proc::spawn_with_log("replyway-echo", &settings, None, "warn")?;
            let arrivals = reading.await??;
            echo.signal("TERM")?;
            echo.wait_exit(Duration::from_secs(30)).await;
            let rate = arrivals.rate();
            let span = arrivals.last.duration_since(arrivals.first);
            println!(
                "run {run}: {:<40} {rate:>8.0} commands/s ({} commands in {span:.2?})",
                mode.name(),
                args.commands
            );
            seen.push(rate);
        }
    }
    println!();
    println!("| mode | commands/s, median of {} runs | runs |", args.runs);
    println!("|---|---|---|");
    for (mode, seen) in &rates {
        let mut sorted = seen.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let runs: Vec<String> = seen.iter().map(|r| format!("{r:.0}")).collect();
        println!("| {} | {median:.0} | {} |", mode.name(), runs.join(", "));
    }
    Ok(())
}
