//! Kafka faults under load, on Apache Kafka, every request counted: a request
//! counts as answered only when its client gets its own body back, directly or
//! by picking the reply up after a `504`, retrying `503`s and broken
//! connections with the same `Idempotency-Key` (`replyway_tests::load`).
//! Zero unanswered, zero wrong answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use replyway_tests::load::{self, Load, Tally};
use replyway_tests::{BrokerChoice, Stack, StackOptions, eventually};

type TestResult = anyhow::Result<()>;

/// A load on every gateway of `stack` until the returned flag is set.
fn start_load(
    stack: &Stack,
    tag: &str,
    concurrency: usize,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Tally>) {
    let stop = Arc::new(AtomicBool::new(false));
    let gateways = (0..stack.gateways.len())
        .map(|i| stack.url(i, ""))
        .collect();
    let load = Load {
        gateways,
        path: "/echo".into(),
        concurrency,
        deadline: Duration::from_secs(90),
        tag: format!("{}-{tag}", stack.prefix),
    };
    let handle = tokio::spawn(load::run(
        stack.http.clone(),
        load,
        Arc::clone(&stop),
        20_000,
    ));
    (stop, handle)
}

/// Waits until the load has had `n` more answers of 200 than `since`.
async fn answers_grow(stack: &Stack, since: u64, n: u64) -> bool {
    eventually(Duration::from_secs(60), || async {
        echo_answers(stack)
            .await
            .is_some_and(|now| now >= since + n)
    })
    .await
}

/// `200` answers of the first gateway's echo route so far, from its metrics.
async fn echo_answers(stack: &Stack) -> Option<u64> {
    let text = stack
        .http
        .get(format!("http://{}/metrics", stack.gateway_admin[0]))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let total = text
        .lines()
        .filter(|l| {
            l.starts_with("replyway_gateway_requests_total{") && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    Some(total)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_surviving_collector_takes_over_a_killed_ones_partitions() -> TestResult {
    let _heavy = replyway_tests::heavy().await;
    let mut stack = Stack::start(StackOptions {
        collectors: 2,
        processes: true,
        ..StackOptions::default()
    })
    .await?;
    let (first, second) = (
        stack.collector_admin[0].clone(),
        stack.collector_admin[1].clone(),
    );
    // Both members own reply partitions before the kill.
    let shared = eventually(Duration::from_secs(60), || async {
        assigned_reply_partitions(&stack, &first).await > 0
            && assigned_reply_partitions(&stack, &second).await > 0
    })
    .await;
    assert!(
        shared,
        "the two collectors never shared the reply partitions"
    );
    let (stop, load) = start_load(&stack, "collector-kill", 32);
    let before = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, before, 100).await,
        "the load never got going"
    );
    stack.collectors[1].process().signal("KILL")?;
    // No replacement: the survivor alone must take the dead member's
    // partitions once its session ends, and collect every reply on them.
    let took_over = eventually(Duration::from_secs(60), || async {
        assigned_reply_partitions(&stack, &first).await == 3
    })
    .await;
    assert!(
        took_over,
        "the survivor never took over all 3 reply partitions"
    );
    let after = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, after, 200).await,
        "answers did not resume"
    );
    stop.store(true, Ordering::Relaxed);
    let tally = load.await?;
    tally.assert_all_answered("a collector SIGKILLed, no replacement");
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
    let (stop, load) = start_load(&stack, "leader-kill", 16);
    let before = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, before, 100).await,
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
    let after = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, after, 100).await,
        "answers did not resume on the new leader"
    );
    stack.broker.restart_node(1)?;
    let after = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, after, 100).await,
        "answers stopped when node 1 came back"
    );
    stop.store(true, Ordering::Relaxed);
    let tally = load.await?;
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
    let (stop, load) = start_load(&stack, "broker-restart", 16);
    let before = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, before, 100).await,
        "the load never got going"
    );
    stack.broker.stop();
    // Down for a moment (requests meanwhile are answered 503 and retried).
    let refused = eventually(Duration::from_secs(20), || async {
        stack
            .http
            .post(stack.url(0, "/echo"))
            .body("while down")
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(refused, "the gateway never noticed the broker was down");
    stack.broker.restart()?;
    let after = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, after, 100).await,
        "answers did not resume after the restart"
    );
    stop.store(true, Ordering::Relaxed);
    let tally = load.await?;
    tally.assert_all_answered("the broker SIGKILLed and restarted with its data");
    stack.shutdown().await
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
    let before = stack.broker.record_count(&stack.echo_topic)?;
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
    assert_eq!(stack.broker.record_count(&stack.echo_topic)? - before, 600);
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
    // Every request starts on gateway 0 (the other is where retries go).
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        gateways: vec![stack.url(0, ""), stack.url(1, "")],
        path: "/echo".into(),
        concurrency: 32,
        deadline: Duration::from_secs(90),
        tag: format!("{}-gateway-kill", stack.prefix),
    };
    let running = tokio::spawn(load::run(
        stack.http.clone(),
        load,
        Arc::clone(&stop),
        20_000,
    ));
    let before = echo_answers(&stack).await.unwrap_or(0);
    assert!(
        answers_grow(&stack, before, 200).await,
        "the load never got going"
    );
    stack.gateways[0].process().signal("KILL")?;
    // The survivor serves the rest.
    let served_by_survivor = eventually(Duration::from_secs(30), || async {
        stack
            .http
            .post(stack.url(1, "/echo"))
            .body("survivor")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served_by_survivor);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = running.await?;
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
    // And a further retry follows it: nothing is produced again.
    let produced = stack.broker.record_count(&stack.echo_topic)?;
    let again = stack
        .http
        .post(stack.url(1, "/echo"))
        .header("idempotency-key", "worst-moment")
        .body("worst moment")
        .send()
        .await?;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await?, "worst moment");
    assert_eq!(stack.broker.record_count(&stack.echo_topic)?, produced);
    stack.gateways.remove(0);
    stack.shutdown().await
}
