//! `redis.mode = "cluster"`: the core of the suite on a real local Redis
//! Cluster (3 masters, 3 replicas, `redis-server` on free ports), sharded
//! pub/sub, a channel that follows its slot, and a master killed under load.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;

use replyway_gateway::problem::ProblemKind;
use replyway_gateway::ratelimit::RateLimitConfig;
use replyway_gateway::routes::RouteConfig;
use replyway_tests::load::{Load, Tally, answers, answers_grow};
use replyway_tests::redis_cluster::{ClusterNode, connect};
use replyway_tests::{RedisCluster, Stack, StackOptions, eventually, heavy};

type TestResult = anyhow::Result<()>;

/// Masters and replicas per master of the suite's clusters.
const CLUSTER: Option<(usize, usize)> = Some((3, 1));

fn cluster_of(stack: &Stack) -> &RedisCluster {
    stack.cluster.as_ref().expect("the stack runs on a cluster")
}

/// The node channels subscribed on master `node` (`PUBSUB SHARDCHANNELS`).
async fn shard_channels(node: &ClusterNode, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = connect(node.port).await?;
    Ok(redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .arg(format!("{prefix}:node:*"))
        .query_async(&mut conn)
        .await?)
}

/// The master whose shard holds gateway channel subscriptions, and those
/// channels, as the masters list them.
async fn subscribed_masters(stack: &Stack) -> anyhow::Result<Vec<(ClusterNode, Vec<String>)>> {
    let mut found = Vec::new();
    for node in cluster_of(stack).nodes().await? {
        if node.master && !node.failed {
            let channels = shard_channels(&node, &stack.prefix).await?;
            if !channels.is_empty() {
                found.push((node, channels));
            }
        }
    }
    Ok(found)
}

fn limited_route(topic: &str) -> RouteConfig {
    RouteConfig {
        name: None,
        method: "POST".into(),
        path: "/limited".into(),
        topic: topic.into(),
        key: "{correlation_id}".into(),
        timeout: Duration::from_secs(10),
        rate_limit: Some(RateLimitConfig {
            requests: 3,
            per: Duration::from_secs(60),
            burst: None,
        }),
        ..RouteConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_core_runs_on_a_redis_cluster_with_sharded_notifications() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        redis_cluster: CLUSTER,
        gateway: |s| {
            let topic = s.routes[0].topic.clone();
            s.routes.push(limited_route(&topic));
        },
        ..StackOptions::default()
    })
    .await?;

    // 500 concurrent requests over two gateways, each its own reply.
    let requests = (0..500).map(|n| {
        let (http, url) = (stack.http.clone(), stack.url(n % 2, "/echo"));
        let body = json!({ "n": n }).to_string();
        async move {
            let response = http.post(url).body(body.clone()).send().await?;
            let status = response.status();
            let id = response.headers().get("correlation-id").cloned();
            anyhow::Ok((status, id, body, response.text().await?))
        }
    });
    let mut ids = HashSet::new();
    for result in join_all(requests).await {
        let (status, id, sent, answer) = result?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, sent, "another request's reply");
        assert!(ids.insert(id.expect("correlation-id")), "an id twice");
    }
    // The requests' keys are spread over the masters (a slot per id).
    let mut masters_with_keys = 0;
    for node in cluster_of(&stack).nodes().await? {
        if node.master {
            let mut conn = connect(node.port).await?;
            let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
            masters_with_keys += usize::from(keys > 0);
        }
    }
    assert_eq!(masters_with_keys, 3, "every master holds requests' keys");

    // Notifications are sharded: each gateway's channel is a shard channel of
    // one master, and no node has a plain pub/sub channel.
    let subscribed = subscribed_masters(&stack).await?;
    let channels: usize = subscribed.iter().map(|(_, c)| c.len()).sum();
    assert_eq!(channels, 2, "one shard channel per gateway: {subscribed:?}");
    for port in cluster_of(&stack).ports() {
        let mut conn = connect(port).await?;
        let plain: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await?;
        assert!(
            plain.is_empty(),
            "plain pub/sub channels on {port}: {plain:?}"
        );
    }

    // Asynchronous pick-up: accepted on one gateway, long-polled on the other.
    let accepted = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "respond-async")
        .body(r#"{"sleep_ms":500,"async":true}"#)
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"].to_str()?.to_owned();
    let reply = stack
        .http
        .get(stack.url(1, &location))
        .header("prefer", "wait=20")
        .send()
        .await?;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await?, r#"{"sleep_ms":500,"async":true}"#);

    // Idempotency: a retry on the other gateway gets the first reply.
    let mut answered = Vec::new();
    for i in 0..2 {
        let response = stack
            .http
            .post(stack.url(i, "/echo"))
            .header("idempotency-key", "cluster-once")
            .body("once")
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        answered.push(response.headers()["correlation-id"].to_str()?.to_owned());
    }
    assert_eq!(answered[0], answered[1], "the retry was executed again");

    // A rate limit is one cell in the cluster, shared by both gateways.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let response = stack
            .http
            .post(stack.url(i % 2, "/limited"))
            .body("limited")
            .send()
            .await?;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_channel_follows_its_slot_to_another_master() -> TestResult {
    let stack = Stack::start(StackOptions {
        redis_cluster: CLUSTER,
        ..StackOptions::default()
    })
    .await?;
    let cluster = cluster_of(&stack);
    let [(from, channels)] = &subscribed_masters(&stack).await?[..] else {
        anyhow::bail!("one gateway, one shard channel");
    };
    let slot = replyway_tests::redis_cluster::slot_of(from.port, &channels[0]).await?;
    let load = Load::on(&stack, "moving", 16).spawn(stack.http.clone());
    let before = answers(&stack, 0).await.unwrap_or_default();
    assert!(
        answers_grow(&stack, 0, before, 50).await,
        "no load before the move"
    );

    let to = cluster.another_master(from).await?;
    cluster.move_slot(slot, &to).await?;
    // The old owner dropped the channel; the gateway subscribed on the new one.
    assert!(
        eventually(Duration::from_secs(20), || async {
            shard_channels(&to, &stack.prefix)
                .await
                .is_ok_and(|c| c == *channels)
        })
        .await,
        "the channel did not follow its slot"
    );
    let moved = answers(&stack, 0).await.unwrap_or_default();
    assert!(
        answers_grow(&stack, 0, moved, 50).await,
        "no answers after the move"
    );
    let tally = load.finish().await?;
    tally.assert_all_answered("a channel's slot moved under load");
    assert!(tally.sent >= 100, "{tally:?}");
    stack.shutdown().await
}

/// A master SIGKILLed under load over two gateways: the one whose shard holds
/// a gateway's channel, so that the failover moves a subscription too.
/// Clients retry a `503` with their `Idempotency-Key`.
async fn kill_a_master_under_load(min_replicas: u32) -> anyhow::Result<(Tally, Duration)> {
    let mut stack = Stack::start(StackOptions {
        gateways: 2,
        redis_cluster: CLUSTER,
        gateway: if min_replicas == 1 {
            |s| s.redis.min_replicas = 1
        } else {
            |_| {}
        },
        collector: if min_replicas == 1 {
            |s| s.redis.min_replicas = 1
        } else {
            |_| {}
        },
        ..StackOptions::default()
    })
    .await?;
    let (master, _) = subscribed_masters(&stack)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no shard channel"))?;
    let load = Load::on(&stack, "failover", 32).spawn(stack.http.clone());
    let before: Vec<u64> = join_all((0..2).map(|i| answers(&stack, i)))
        .await
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    for (i, n) in before.iter().enumerate() {
        assert!(
            answers_grow(&stack, i, *n, 100).await,
            "no load on gateway {i}"
        );
    }
    let killed = Instant::now();
    stack
        .cluster
        .as_mut()
        .expect("the stack runs on a cluster")
        .kill(master.port);
    assert!(
        cluster_of(&stack)
            .until_failed_over(master.port, Duration::from_secs(30))
            .await,
        "the killed master's replica was not promoted"
    );
    let failed_over = killed.elapsed();
    // The killed master comes back (as an operator brings it back) and
    // rejoins as the replica of the one that took its place: with
    // `min_replicas = 1` that shard's writes count again once it is in sync.
    stack
        .cluster
        .as_mut()
        .expect("the stack runs on a cluster")
        .restart(master.port)?;
    assert!(
        eventually(Duration::from_secs(60), || cluster_of(&stack).is_formed()).await,
        "the killed master did not rejoin as a replica"
    );
    for i in 0..2 {
        let now = answers(&stack, i).await.unwrap_or_default();
        assert!(
            answers_grow(&stack, i, now, 100).await,
            "gateway {i} does not answer after the failover"
        );
    }
    let tally = load.finish().await?;
    stack.shutdown().await?;
    Ok((tally, failed_over))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_loses_no_request_with_min_replicas_1() -> TestResult {
    let _heavy = heavy().await;
    let (tally, failed_over) = kill_a_master_under_load(1).await?;
    eprintln!(
        "redis.min_replicas = 1: {} of {} answered, failover {failed_over:?}, statuses {:?}",
        tally.answered, tally.sent, tally.statuses
    );
    tally.assert_all_answered("a master killed, min_replicas = 1");
    tally.assert_failures_only(
        &[
            (
                503,
                ProblemKind::StoreUnavailable.uri(),
                Duration::from_secs(5),
            ),
            (
                504,
                ProblemKind::ReplyTimeout.uri(),
                Duration::from_secs(12),
            ),
        ],
        "a master killed, min_replicas = 1",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_with_min_replicas_0_reports_what_it_lost() -> TestResult {
    let _heavy = heavy().await;
    let (tally, failed_over) = kill_a_master_under_load(0).await?;
    // Without WAIT, a write the master acknowledged but had not yet sent to
    // its replica is gone: what that costs is counted, not assumed.
    eprintln!(
        "redis.min_replicas = 0: {} of {} answered, {} unanswered, failover {failed_over:?}, statuses {:?}",
        tally.answered,
        tally.sent,
        tally.unanswered.len(),
        tally.statuses
    );
    assert!(
        tally.wrong.is_empty(),
        "another request's reply: {:?}",
        tally.wrong
    );
    assert_eq!(tally.answered + tally.unanswered.len(), tally.sent);
    assert!(tally.sent >= 200, "{tally:?}");
    Ok(())
}
