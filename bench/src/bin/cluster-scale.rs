//! Replyway on a Redis Cluster, end to end (HTTP → gateway → Kafka → echo →
//! collector → Redis → HTTP) on Apache Kafka and `redis-server` nodes started
//! here:
//!
//! 1. requests per second and Redis CPU per request (user + system time of
//!    every `redis-server`, from `/proc`) on one Redis (`redis.mode =
//!    "single"`), and on a cluster of 1 and of 3 masters;
//! 2. the notification load as gateways are added (1, 2, 4 gateways on a
//!    cluster of 3 masters with a replica each): cluster-bus messages per
//!    notification, summed over every node (`CLUSTER INFO`
//!    `cluster_stats_messages_publish*_received`);
//! 3. the same notifications sent as sharded `SPUBLISH` (what the collector
//!    sends) and as plain `PUBLISH`, which a cluster passes to every node.
//!
//!   cargo run --release -p replyway-bench --bin cluster-scale [-- --requests N]

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;

use replyway_tests::redis_cluster::connect;
use replyway_tests::{RedisCluster, Stack, StackOptions};

#[derive(Parser)]
struct Args {
    /// Requests per measurement.
    #[arg(long, default_value_t = 4_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "{} requests per measurement, {} in flight, over the stack's gateways; echo service, one collector",
        args.requests, args.concurrency
    );
    println!("## throughput and Redis CPU per request");
    for (label, cluster) in [
        ("one Redis (single)", None),
        ("cluster, 1 master", Some((1, 0))),
        ("cluster, 3 masters", Some((3, 0))),
    ] {
        let stack = Stack::start(StackOptions {
            gateways: 2,
            redis_cluster: cluster,
            ..StackOptions::default()
        })
        .await?;
        let ticks = || match &stack.cluster {
            Some(cluster) => cluster.cpu_ticks().values().sum::<u64>(),
            None => stack.redis.cpu_ticks().unwrap_or_default(),
        };
        run(&stack, 2, 200, args.concurrency).await?;
        let before = ticks();
        let took = run(&stack, 2, args.requests, args.concurrency).await?;
        let cpu = (ticks() - before) as f64 / TICKS_PER_SECOND;
        println!(
            "{label}: {:.0} requests/s, Redis CPU {:.0} µs per request",
            args.requests as f64 / took.as_secs_f64(),
            cpu * 1e6 / args.requests as f64,
        );
        stack.shutdown().await?;
    }

    println!("## notification load as gateways are added (3 masters, 3 replicas)");
    let stack = Stack::start(StackOptions {
        gateways: 4,
        redis_cluster: Some((3, 1)),
        ..StackOptions::default()
    })
    .await?;
    let cluster = stack.cluster.as_ref().expect("a cluster");
    run(&stack, 4, 200, args.concurrency).await?;
    for gateways in [1, 2, 4] {
        let before = bus_messages(cluster).await?;
        run(&stack, gateways, args.requests, args.concurrency).await?;
        let after = bus_messages(cluster).await?;
        println!(
            "{gateways} gateway(s): {:.2} cluster-bus messages per notification (sharded)",
            (after - before) as f64 / args.requests as f64
        );
    }

    println!("## the same notifications as SPUBLISH and as plain PUBLISH (3 masters, 3 replicas)");
    let channel = format!("{}:node:bench", stack.prefix);
    let message = vec![b'x'; 200];
    for command in ["SPUBLISH", "PUBLISH"] {
        let before = bus_messages(cluster).await?;
        let owner = cluster
            .master_of(replyway_tests::redis_cluster::slot_of(cluster.ports()[0], &channel).await?)
            .await?;
        let mut conn = connect(owner.port).await?;
        for _ in 0..args.requests {
            redis::cmd(command)
                .arg(&channel)
                .arg(&message)
                .query_async::<()>(&mut conn)
                .await?;
        }
        let after = bus_messages(cluster).await?;
        println!(
            "{command}: {:.2} cluster-bus messages per notification, over {} nodes",
            (after - before) as f64 / args.requests as f64,
            cluster.ports().len()
        );
    }
    stack.shutdown().await
}

/// Sends `requests` requests to `/echo`, `concurrency` at once, over the
/// first `gateways` gateways; every one must get its own reply.
async fn run(
    stack: &Stack,
    gateways: usize,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..requests)
        .map(|n| {
            let (http, url) = (stack.http.clone(), stack.url(n % gateways, "/echo"));
            async move {
                let body = format!("bench-{n}");
                let answer = http.post(url).body(body.clone()).send().await?;
                anyhow::ensure!(answer.status() == 200, "{}", answer.status());
                anyhow::ensure!(answer.text().await? == body, "another request's reply");
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(started.elapsed())
}

/// Pub/sub messages the cluster bus delivered so far, summed over every node.
async fn bus_messages(cluster: &RedisCluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for port in cluster.ports() {
        let mut conn = connect(port).await?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await?;
        total += info
            .lines()
            .filter(|l| {
                l.starts_with("cluster_stats_messages_publish_received:")
                    || l.starts_with("cluster_stats_messages_publishshard_received:")
            })
            .filter_map(|l| l.split_once(':')?.1.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}
