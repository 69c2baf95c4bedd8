//! Kafka faults under load, on Apache Kafka, every request counted: a request
//! counts as answered only when its client gets its own body back, directly or
//! by picking the reply up after a `504`, retrying `503`s and broken
//! connections with the same `Idempotency-Key` (`replyway_tests::load`).
//! Zero unanswered, zero wrong answers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use replyway_gateway::problem::ProblemKind;
use replyway_tests::load::{self, Load};
use replyway_tests::{BrokerChoice, Stack, StackOptions, eventually, records_with_value};

type TestResult = anyhow::Result<()>;

/// Reply partitions the collector with admin address `admin` owns.
async fn assigned_reply_partitions(stack: &Stack, admin: &str) -> i64 {
    let Ok(r) = stack
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
    else {
        return -1;
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("replyway_collector_assigned_partitions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// The reply partitions the collector with admin address `admin` consumes:
/// those its `replyway_collector_consumer_lag` gauge has a sample for.
async fn consumed_partitions(stack: &Stack, admin: &str) -> BTreeSet<i32> {
    let Ok(r) = stack
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
    else {
        return BTreeSet::new();
    };
    let page = r.text().await.unwrap_or_default();
    page.lines()
        .filter(|l| l.starts_with("replyway_collector_consumer_lag{"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("partition=\"")?;
            rest.split_once('"')?.0.parse().ok()
        })
        .collect()
}

/// Replies the collector with admin address `admin` found already stored (a
/// redelivered reply): its `replyway_collector_replies_duplicate` counter.
async fn duplicates(stack: &Stack, admin: &str) -> Option<f64> {
    stack
        .metric_sum(admin, "replyway_collector_replies_duplicate_total", &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_surviving_collector_takes_over_a_killed_ones_partitions() -> TestResult {
    let _heavy = replyway_tests::heavy().await;
    let mut stack = Stack::start(StackOptions {
        collectors: 2,
        processes: true,
        ..StackOptions::default()
    })
    .await?;
    let (survivor, victim) = (
        stack.collector_admin[0].clone(),
        stack.collector_admin[1].clone(),
    );
    // Both members own reply partitions before the kill.
    let shared = eventually(Duration::from_secs(60), || async {
        assigned_reply_partitions(&stack, &survivor).await > 0
            && assigned_reply_partitions(&stack, &victim).await > 0
    })
    .await;
    assert!(
        shared,
        "the two collectors never shared the reply partitions"
    );
    let running = Load::on(&stack, "collector-kill", 32).spawn(stack.http.clone());
    let before = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, before, 100).await,
        "the load never got going"
    );
    // Which partitions the victim consumes (from its consumer lag, which
    // librdkafka reports every few seconds), and that it is storing replies.
    let known = eventually(Duration::from_secs(30), || async {
        !consumed_partitions(&stack, &victim).await.is_empty()
    })
    .await;
    assert!(known, "the victim never reported its partitions");
    let victims = consumed_partitions(&stack, &victim).await;
    let duplicates_before = duplicates(&stack, &survivor).await.unwrap_or_default();
    // The kill lands while the victim holds replies it has stored but not
    // committed: its stored counter grew while the offsets the group has
    // committed on its partitions did not move (read from the coordinator
    // before and after), and it is killed at once.
    let group = stack.collector_settings.group_id.clone();
    let offsets = stack.broker.group_offsets(&group)?;
    let partitions: Vec<i32> = victims.iter().copied().collect();
    let stored = || async {
        stack
            .metric_sum(&victim, "replyway_collector_replies_stored_total", &[])
            .await
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let committed_before = offsets.committed(&stack.reply_topic, &partitions)?;
        let stored_before = stored().await;
        let grew = eventually(Duration::from_secs(5), || async {
            stored().await >= stored_before + 5.0
        })
        .await;
        assert!(grew, "the victim stopped storing replies");
        let committed_after = offsets.committed(&stack.reply_topic, &partitions)?;
        if committed_after == committed_before {
            stack.collectors[1].process().signal("KILL")?;
            break committed_after;
        }
        assert!(
            Instant::now() < deadline,
            "the victim committed every time it stored (committed {committed_after:?})"
        );
    };
    // Dead: what it committed on its partitions is all it will ever commit.
    let committed = offsets.committed(&stack.reply_topic, &partitions)?;
    let ends = stack.broker.end_offsets(&stack.reply_topic)?;
    let uncommitted: i64 = victims
        .iter()
        .map(|p| {
            ends.get(p).copied().unwrap_or(0) - committed.get(p).copied().flatten().unwrap_or(0)
        })
        .sum();
    // No replacement: the survivor alone must take the dead member's
    // partitions once its session ends, and collect every reply on them.
    let took_over = eventually(Duration::from_secs(60), || async {
        assigned_reply_partitions(&stack, &survivor).await == 3
    })
    .await;
    assert!(
        took_over,
        "the survivor never took over all 3 reply partitions"
    );
    let after = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, after, 200).await,
        "answers did not resume"
    );
    let tally = running.finish().await?;
    // Each request answered once, with its own reply.
    tally.assert_all_answered("a collector SIGKILLed, no replacement");
    // The kill landed while the victim held replies it had stored but not
    // committed: the survivor read them again from the committed offsets and
    // found them stored (the first wins), at most as many as lay past them.
    let redelivered = duplicates(&stack, &survivor).await.unwrap_or_default() - duplicates_before;
    assert!(
        redelivered >= 5.0,
        "{redelivered} replies the victim stored were delivered again, not the 5 it stored past its committed offsets \
         (partitions {victims:?}, committed {held:?} before the kill and {committed:?} after it, ends {ends:?})"
    );
    assert!(
        redelivered <= uncommitted as f64,
        "{redelivered} duplicates, but only {uncommitted} replies lay past the victim's committed offsets"
    );
    stack.collectors.remove(1);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_partition_leader_of_a_three_node_cluster_loses_nothing() -> TestResult {
    let _heavy = replyway_tests::heavy().await;
    let mut stack = Stack::start(StackOptions {
        broker: BrokerChoice::Cluster(3),
        // Node 1 leads the request and the reply partition.
        leader: Some(1),
        ..StackOptions::default()
    })
    .await?;
    assert_eq!(stack.broker.leaders(&stack.echo_topic)?, [Some(1)]);
    assert_eq!(stack.broker.leaders(&stack.reply_topic)?, [Some(1)]);
    let running = Load::on(&stack, "leader-kill", 16).spawn(stack.http.clone());
    let before = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, before, 100).await,
        "the load never got going"
    );
    stack.broker.kill_node(1);
    let moved = eventually(Duration::from_secs(60), || async {
        let led_elsewhere =
            |l: Vec<Option<u32>>| l.first().copied().flatten().is_some_and(|n| n != 1);
        stack
            .broker
            .leaders(&stack.echo_topic)
            .is_ok_and(led_elsewhere)
            && stack
                .broker
                .leaders(&stack.reply_topic)
                .is_ok_and(led_elsewhere)
    })
    .await;
    assert!(moved, "leadership never moved off the killed node");
    let after = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, after, 100).await,
        "answers did not resume on the new leader"
    );
    stack.broker.restart_node(1)?;
    let after = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, after, 100).await,
        "answers stopped when node 1 came back"
    );
    let tally = running.finish().await?;
    tally.assert_all_answered("the partition leader SIGKILLed and restarted");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restarted_under_load_loses_nothing() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        broker: BrokerChoice::Own,
        ..StackOptions::default()
    })
    .await?;
    let running = Load::on(&stack, "broker-restart", 16).spawn(stack.http.clone());
    let before = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, before, 100).await,
        "the load never got going"
    );
    let refused_before = refusals(&stack).await.unwrap_or_default();
    stack.broker.stop();
    // Down until the load's own requests are refused (and retried).
    let refused = eventually(Duration::from_secs(20), || async {
        refusals(&stack).await.is_some_and(|n| n > refused_before)
    })
    .await;
    assert!(refused, "the gateway never noticed the broker was down");
    stack.broker.restart()?;
    let after = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, after, 100).await,
        "answers did not resume after the restart"
    );
    let tally = running.finish().await?;
    tally.assert_all_answered("the broker SIGKILLed and restarted with its data");
    // Every request of the outage and the recovery counted: each failure was
    // a fast broker-unavailable refusal or, while the service reconnected, a
    // reply-timeout at the route's timeout whose reply the load then picked up.
    let route_timeout = stack.gateway_settings.routes[0].timeout;
    tally.assert_failures_only(
        &[
            (
                503,
                ProblemKind::BrokerUnavailable.uri(),
                stack.gateway_settings.produce_timeout + Duration::from_secs(2),
            ),
            (
                504,
                ProblemKind::ReplyTimeout.uri(),
                route_timeout + Duration::from_secs(2),
            ),
        ],
        "the broker SIGKILLed and restarted with its data",
    );
    stack.shutdown().await
}

/// `503` answers gateway 0 of `stack` has given so far, from its `/metrics`.
async fn refusals(stack: &Stack) -> Option<f64> {
    stack
        .metric_sum(
            &stack.gateway_admin[0],
            "replyway_gateway_requests_total",
            &[("status", "503")],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_producing_to_one_partition_lose_no_record() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        ..StackOptions::default()
    })
    .await?;
    // POST /orders/{id} keys its commands by the order: one key, one partition,
    // written by both gateways' producers at once.
    let requests = (0..600).map(|n| {
        let (http, url) = (stack.http.clone(), stack.url(n % 2, "/orders/same"));
        async move {
            let body = format!("order-{n}");
            let r = http.post(url).body(body.clone()).send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.text().await?, body))
        }
    });
    let results = futures::future::join_all(requests).await;
    for result in results {
        let (status, text, body) = result?;
        assert_eq!(status, 200, "{body}: {text}");
        assert_eq!(text, body);
    }
    let records =
        replyway_tests::read_topic_to_end(&stack.broker.kafka_settings(), &stack.echo_topic)?;
    let orders: Vec<_> = records
        .iter()
        .filter(|m| rdkafka::Message::key(*m) == Some(b"order-same"))
        .collect();
    assert_eq!(orders.len(), 600, "every command once in the log");
    let partitions: std::collections::HashSet<i32> = orders
        .iter()
        .map(|m| rdkafka::Message::partition(*m))
        .collect();
    assert_eq!(partitions.len(), 1, "one key, one partition");
    let bodies: std::collections::HashSet<&[u8]> = orders
        .iter()
        .filter_map(|m| rdkafka::Message::payload(*m))
        .collect();
    assert_eq!(bodies.len(), 600, "each command once, none twice");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_of_a_killed_gateway_retry_on_the_other_with_their_idempotency_key() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        gateways: 2,
        processes: true,
        ..StackOptions::default()
    })
    .await?;
    // Requests start on both gateways; those the kill cuts off retry on the
    // other with their key.
    let running = Load::on(&stack, "gateway-kill", 32).spawn(stack.http.clone());
    let before = load::answers(&stack, 0).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 0, before, 200).await,
        "the load never got going"
    );
    stack.gateways[0].process().signal("KILL")?;
    // The survivor serves the rest: the load's answers on it go on growing.
    let on_survivor = load::answers(&stack, 1).await.unwrap_or(0);
    assert!(
        load::answers_grow(&stack, 1, on_survivor, 200).await,
        "the survivor did not go on answering"
    );
    let tally = running.finish().await?;
    assert!(
        tally.connection_errors > 0,
        "the kill cut no request: {tally:?}"
    );
    tally.assert_all_answered("a gateway SIGKILLed under load");
    stack.gateways.remove(0);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_claimed_by_a_gateway_killed_before_producing_is_taken_over() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        gateways: 2,
        processes: true,
        broker: BrokerChoice::Own,
        ..StackOptions::default()
    })
    .await?;
    let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
    // The worst moment: the broker does not answer, so gateway 0 claims the key
    // and writes the pending record, then hangs in the produce.
    stack.broker.stop();
    let claimed = tokio::spawn(async move {
        http.post(url)
            .header("idempotency-key", "worst-moment")
            .body("worst moment")
            .send()
            .await
    });
    let in_produce = eventually(Duration::from_secs(10), || async {
        !stack
            .redis_keys("idem:*")
            .await
            .unwrap_or_default()
            .is_empty()
            && !stack
                .redis_keys("*:pending")
                .await
                .unwrap_or_default()
                .is_empty()
    })
    .await;
    assert!(in_produce, "gateway 0 never claimed the key");
    // Killed there: the claim is never marked produced, nor released.
    stack.gateways[0].process().signal("KILL")?;
    assert!(claimed.await?.is_err(), "the killed gateway answered");
    stack.broker.restart()?;
    assert!(
        stack.answers_within(1, Duration::from_secs(60), 5).await,
        "the stack did not recover after the broker restart"
    );
    // The client retries on the other replica with the same key: once the
    // claim's lease is over it takes it over and produces the command, long
    // before the key's TTL (60 s here).
    let retrying = std::time::Instant::now();
    let retried = stack
        .http
        .post(stack.url(1, "/echo"))
        .header("idempotency-key", "worst-moment")
        .body("worst moment")
        .timeout(Duration::from_secs(60))
        .send()
        .await?;
    let status = retried.status();
    let text = retried.text().await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "worst moment");
    assert!(
        retrying.elapsed() < Duration::from_secs(15),
        "the key was stuck for {:?}",
        retrying.elapsed()
    );
    // One command in the log for the key, and a further retry follows it:
    // nothing is produced again.
    let kafka = stack.broker.kafka_settings();
    let commands = || records_with_value(&kafka, &stack.echo_topic, b"worst moment");
    assert_eq!(commands()?, 1, "the retry's command, once");
    let again = stack
        .http
        .post(stack.url(1, "/echo"))
        .header("idempotency-key", "worst-moment")
        .body("worst moment")
        .send()
        .await?;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await?, "worst moment");
    assert_eq!(commands()?, 1, "the further retry was produced again");
    stack.gateways.remove(0);
    stack.shutdown().await
}
