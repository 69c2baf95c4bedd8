//! How fast does a consumer group hand out partitions, with the classic group
//! protocol and with KIP-848's `consumer` protocol? The figures behind the
//! consumers' default `group.protocol` (README, configuration reference).
//!
//! For each protocol, on a fresh Apache Kafka broker with its default group
//! settings and Replyway's consumer settings, a 6-partition topic:
//! * join: one member subscribes; time until it owns every partition;
//! * scale out: a second member (a child process) joins; time until both own
//!   partitions and together own all;
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
    /// protocol; prints `assigned` once it owns a partition, `closed` after a
    /// clean close on a line `close` on standard input.
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

/// Polls `consumer` (which drives its rebalances) until `done` holds.
fn poll_until(
    consumer: &BaseConsumer,
    within: Duration,
    mut done: impl FnMut(&BaseConsumer) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done(consumer) {
        ensure!(started.elapsed() < within, "not within {within:?}");
        let _ = consumer.poll(Duration::from_millis(10));
    }
    Ok(started.elapsed())
}

fn member(args: &[String]) -> anyhow::Result<()> {
    let consumer = consumer(&args[0], &args[1], &args[3])?;
    consumer.subscribe(&[args[2].as_str()])?;
    poll_until(&consumer, Duration::from_secs(120), |c| owned(c) > 0)?;
    println!("assigned");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    while rx.try_recv().is_err() {
        let _ = consumer.poll(Duration::from_millis(10));
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

fn spawn_member(
    brokers: &str,
    group: &str,
    topic: &str,
    protocol: &str,
) -> anyhow::Result<(std::process::Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--member", brokers, group, topic, protocol])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = BufReader::new(child.stdout.take().context("the member's stdout")?);
    Ok((child, stdout))
}

fn wait_line(stdout: &mut BufReader<std::process::ChildStdout>, want: &str) -> anyhow::Result<()> {
    let mut line = String::new();
    while line.trim() != want {
        line.clear();
        ensure!(
            stdout.read_line(&mut line)? > 0,
            "the member exited before {want}"
        );
    }
    Ok(())
}

fn round(broker: &Broker, topic: &str, protocol: &str, n: usize) -> anyhow::Result<Figures> {
    let group = format!("probe-{protocol}-{n}");
    let brokers = broker.bootstrap();
    let all = usize::try_from(PARTITIONS)?;
    let first = consumer(&brokers, &group, protocol)?;
    let started = Instant::now();
    first.subscribe(&[topic])?;
    poll_until(&first, Duration::from_secs(120), |c| owned(c) == all)?;
    let join = started.elapsed();

    let (mut second, mut out) = spawn_member(&brokers, &group, topic, protocol)?;
    let started = Instant::now();
    // The second member says when it owns partitions; the first must give them up.
    let waiting = std::thread::spawn(move || wait_line(&mut out, "assigned").map(|()| out));
    poll_until(&first, Duration::from_secs(120), |c| {
        waiting.is_finished() && owned(c) > 0 && owned(c) < all
    })?;
    let scale_out = started.elapsed();
    drop(
        waiting
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??,
    );

    second.kill()?;
    second.wait()?;
    let kill = poll_until(&first, Duration::from_secs(180), |c| owned(c) == all)
        .context("the survivor never took the killed member's partitions")?;

    let (mut third, mut out) = spawn_member(&brokers, &group, topic, protocol)?;
    wait_line(&mut out, "assigned")?;
    poll_until(&first, Duration::from_secs(120), |c| owned(c) < all)?;
    std::io::Write::write_all(third.stdin.as_mut().context("stdin")?, b"close\n")?;
    let leave = poll_until(&first, Duration::from_secs(120), |c| owned(c) == all)?;
    third.wait()?;
    first.unsubscribe();
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
