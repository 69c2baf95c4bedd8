//! How fast does a consumer group hand out partitions, with the classic group
//! protocol and with KIP-848's `consumer` protocol? The figures behind the
//! consumers' default `group.protocol` (docs/configuration.md, Kafka client defaults).
//!
//! For each protocol, on a fresh Apache Kafka broker with its default group
//! settings and Replyway's consumer settings, a 6-partition topic, each member
//! a child process:
//! * join: one member subscribes; time until it owns every partition;
//! * scale out: a second member joins; time until both own partitions and
//!   together own all;
//! * SIGKILL: the second member is killed; time until the first owns all again
//!   (the broker must notice that the dead member's session ended);
//! * leave: a second member joins again and then closes cleanly; time until
//!   the first owns all.
//!
//!   cargo run --release -p replyway-bench --bin group-probe -- --rounds 3

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};

use replyway_shared::settings::KafkaSettings;
use replyway_tests::Broker;

const PARTITIONS: i32 = 6;

#[derive(Parser)]
struct Args {
    /// Rounds per protocol.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run as a group member (used by the probe itself): brokers, group, topic,
    /// protocol; prints `owned N` whenever the partitions it owns change, and
    /// closes cleanly on a line on standard input.
    #[arg(long, num_args = 4, value_names = ["BROKERS", "GROUP", "TOPIC", "PROTOCOL"])]
    member: Option<Vec<String>>,
}

fn consumer(brokers: &str, group: &str, protocol: &str) -> anyhow::Result<BaseConsumer> {
    let mut kafka = KafkaSettings {
        brokers: brokers.into(),
        ..KafkaSettings::default()
    };
    kafka
        .consumer
        .insert("group.protocol".into(), protocol.into());
    Ok(kafka.consumer_config(group).create()?)
}

fn owned(consumer: &BaseConsumer) -> usize {
    consumer.assignment().map(|a| a.count()).unwrap_or(0)
}

fn member(args: &[String]) -> anyhow::Result<()> {
    let consumer = consumer(&args[0], &args[1], &args[3])?;
    consumer.subscribe(&[args[2].as_str()])?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let mut last = usize::MAX;
    while rx.try_recv().is_err() {
        let _ = consumer.poll(Duration::from_millis(10));
        let now = owned(&consumer);
        if now != last {
            println!("owned {now}");
            last = now;
        }
    }
    consumer.unsubscribe();
    drop(consumer);
    println!("closed");
    Ok(())
}

struct Figures {
    join: Duration,
    scale_out: Duration,
    kill: Duration,
    leave: Duration,
}

/// A group member in a child process, and what it last said it owns.
struct Member {
    child: std::process::Child,
    owned: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Member {
    fn spawn(brokers: &str, group: &str, topic: &str, protocol: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--member", brokers, group, topic, protocol])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().context("the member's stdout")?);
        let owned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&owned);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("owned ").and_then(|n| n.parse().ok()) {
                    seen.store(n, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Ok(Self { child, owned })
    }

    fn owned(&self) -> usize {
        self.owned.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds; how long it took.
fn until(within: Duration, done: impl Fn() -> bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done() {
        ensure!(started.elapsed() < within, "not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(started.elapsed())
}

fn round(broker: &Broker, topic: &str, protocol: &str, n: usize) -> anyhow::Result<Figures> {
    let group = format!("probe-{protocol}-{n}");
    let brokers = broker.bootstrap();
    let all = usize::try_from(PARTITIONS)?;
    let within = Duration::from_secs(120);
    let first = Member::spawn(&brokers, &group, topic, protocol)?;
    let join = until(within, || first.owned() == all).context("join")?;
    let mut second = Member::spawn(&brokers, &group, topic, protocol)?;
    let scale_out = until(within, || {
        second.owned() > 0 && first.owned() > 0 && first.owned() + second.owned() == all
    })
    .context("scale out")?;
    second.child.kill()?;
    second.child.wait()?;
    let kill = until(Duration::from_secs(180), || first.owned() == all)
        .context("the survivor never took the killed member's partitions")?;
    let mut third = Member::spawn(&brokers, &group, topic, protocol)?;
    until(within, || {
        third.owned() > 0 && first.owned() + third.owned() == all
    })
    .context("third join")?;
    std::io::Write::write_all(third.child.stdin.as_mut().context("stdin")?, b"close\n")?;
    let leave = until(within, || first.owned() == all).context("leave")?;
    third.child.wait()?;
    Ok(Figures {
        join,
        scale_out,
        kill,
        leave,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(member_args) = &args.member {
        return member(member_args);
    }
    let broker = Broker::start_for_benchmark()?;
    println!(
        "Apache Kafka {} (broker group settings at their defaults), {PARTITIONS} partitions",
        replyway_tests::kafka_version()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "| protocol | round | join | scale out | SIGKILL → survivor owns all | clean leave → survivor owns all |"
    );
    println!("|---|---|---|---|---|---|");
    for protocol in ["classic", "consumer"] {
        let topic = format!("probe-{protocol}");
        runtime.block_on(broker.create_topics(&[&topic], PARTITIONS))?;
        for n in 0..args.rounds {
            let f = round(&broker, &topic, protocol, n)?;
            println!(
                "| {protocol} | {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s |",
                f.join.as_secs_f64(),
                f.scale_out.as_secs_f64(),
                f.kill.as_secs_f64(),
                f.leave.as_secs_f64()
            );
        }
    }
    Ok(())
}
