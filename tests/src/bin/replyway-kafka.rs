//! `make run`'s broker: one Apache Kafka KRaft node with its data kept in a
//! folder (formatted on first start), the topics created with the admin API,
//! up until SIGINT or SIGTERM, then stopped with a controlled shutdown.
//!
//!   replyway-kafka --dir .run/kafka --port 9092 --topics echo.requests,replyway.replies
//!
//! Prints one line `ready` once the topics exist.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

use replyway_tests::{Broker, kafka_version};

#[derive(Parser)]
struct Args {
    /// Data folder, kept across runs.
    #[arg(long)]
    dir: PathBuf,
    /// Client port on 127.0.0.1.
    #[arg(long, default_value_t = 9092)]
    port: u16,
    /// Controller port on 127.0.0.1.
    #[arg(long, default_value_t = 9093)]
    controller_port: u16,
    /// Topics to create when missing (comma-separated).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Partitions of each new topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut broker = Broker::start_kept(&args.dir, args.port, args.controller_port)?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let created = broker.ensure_topics(&topics, args.partitions).await;
    if let Err(e) = created {
        broker.terminate(Duration::from_secs(30));
        return Err(e);
    }
    println!(
        "Apache Kafka {} ready on {} after {:.1} s (topics {:.1} s later; data in {})",
        kafka_version(),
        broker.bootstrap(),
        broker.startup.as_secs_f64(),
        (started.elapsed() - broker.startup).as_secs_f64(),
        args.dir.display()
    );
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let stopping = Instant::now();
    broker.terminate(Duration::from_secs(30));
    println!(
        "Apache Kafka stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}
