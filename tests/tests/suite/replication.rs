//! `redis.min_replicas`: a write counts only once that many replicas have it
//! (Redis `WAIT`). The collector stores a batch's offsets only then, so a
//! reply acknowledged by a master that dies before its replica got it is
//! consumed again; a gateway answers `503` rather than go on with a request
//! whose pending record only the master holds.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use replyway_tests::probe::spawn_gateway;
use replyway_tests::{RedisServer, Stack, StackOptions, eventually};

type TestResult = anyhow::Result<()>;

async fn until_replicas(master: &RedisServer, n: usize) -> bool {
    eventually(Duration::from_secs(20), || async {
        master.replicas_online().await.is_ok_and(|r| r >= n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_collector_stores_offsets_only_once_a_replica_has_the_batch() -> TestResult {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let mut replica = RedisServer::start_replica_of(&stack.redis)?;
    assert!(
        until_replicas(&stack.redis, 1).await,
        "the replica did not sync"
    );

    // The stack's collector gives way to one that waits for a replica.
    stack.collectors[0].stop().await?;
    let mut settings = stack.collector_settings.clone();
    settings.redis.min_replicas = 1;
    settings.redis.timeout = Duration::from_millis(500);
    let collector = replyway_collector::Collector::new(&settings)?;
    let stats = collector.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(collector.run(stop.clone()));
    assert!(
        stack.answers_within(0, Duration::from_secs(60), 5).await,
        "with its replica in sync the collector serves"
    );
    let topic = stack.reply_topic.clone();
    let offsets = stack.broker.group_offsets(&settings.group_id)?;
    let behind_end =
        |end: &std::collections::BTreeMap<i32, i64>,
         committed: &std::collections::BTreeMap<i32, Option<i64>>| {
            end.iter()
                .any(|(p, e)| committed.get(p).copied().flatten().unwrap_or(0) < *e)
        };
    // Every batch so far counted (its `WAIT` answered, its offsets
    // committed): a batch still waiting when the replica stops would hold up
    // the next reply behind it.
    let end = stack.broker.end_offsets(&topic)?;
    let partitions: Vec<i32> = end.keys().copied().collect();
    assert!(
        eventually(Duration::from_secs(30), || async {
            offsets
                .committed(&topic, &partitions)
                .is_ok_and(|c| !behind_end(&end, &c))
        })
        .await,
        "the replicated batches' offsets were not committed"
    );

    // Without the replica, replies are still stored on the master, but the
    // batch does not count: its offsets are not committed, it is retried.
    replica.stop();
    let failed_before = stats.redis_errors.load(Ordering::Relaxed);
    let answer = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("unreplicated")
        .send()
        .await?;
    assert_eq!(answer.status(), 200, "the master has the reply");
    assert!(
        eventually(Duration::from_secs(10), || async {
            stats.redis_errors.load(Ordering::Relaxed) > failed_before
        })
        .await,
        "a batch without its replica was taken as stored"
    );
    let end = stack.broker.end_offsets(&topic)?;
    let behind =
        |committed: &std::collections::BTreeMap<i32, Option<i64>>| behind_end(&end, committed);
    assert!(
        behind(&offsets.committed(&topic, &partitions)?),
        "the unreplicated batch's offset was committed"
    );

    // The replica back: the batch counts, and the offsets reach the end.
    let mut replica = RedisServer::start_replica_of(&stack.redis)?;
    assert!(until_replicas(&stack.redis, 1).await);
    let caught_up = eventually(Duration::from_secs(30), || async {
        offsets
            .committed(&topic, &partitions)
            .is_ok_and(|c| !behind(&c))
    })
    .await;
    assert!(caught_up, "the offsets were not committed once replicated");
    stop.cancel();
    running.await??;
    replica.stop();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_refuses_a_request_its_replicas_do_not_have() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let mut replica = RedisServer::start_replica_of(&stack.redis)?;
    assert!(
        until_replicas(&stack.redis, 1).await,
        "the replica did not sync"
    );
    let mut settings = stack.gateway_settings.clone();
    settings.redis.min_replicas = 1;
    settings.redis.timeout = Duration::from_millis(500);
    let (base, stop) = spawn_gateway(settings).await?;
    let post = || stack.http.post(format!("{base}/echo")).body("x").send();
    let answered = eventually(Duration::from_secs(20), || async {
        post().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(answered, "with its replica in sync the gateway serves");

    replica.stop();
    let pending_before = stack.redis_keys("*:pending").await?;
    let refused = post().await?;
    assert_eq!(refused.status(), 503);
    let problem: serde_json::Value = refused.json().await?;
    assert_eq!(problem["type"], "urn:replyway:problem:store-unavailable");
    assert_eq!(
        stack.new_redis_keys("*:pending", &pending_before).await?,
        Vec::<String>::new(),
        "an unreplicated pending record is removed again"
    );
    stop.cancel();
    stack.shutdown().await
}
