//! Faults injected for real: Redis and the broker stopped and restarted,
//! collectors and gateways killed, duplicate and malformed replies, overload,
//! stalled clients, SIGTERM. No mocks of Kafka or Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::Message;
use rdkafka::message::Headers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use replyway_tests::{BrokerChoice, Stack, StackOptions, produce};

type TestResult = anyhow::Result<()>;

/// Sends requests one after another until stopped; counts answers by status.
fn steady_load(
    stack: &Stack,
    gateway: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<HashMap<u16, u64>>> {
    let (http, url) = (stack.http.clone(), stack.url(gateway, "/echo"));
    tokio::spawn(async move {
        let mut statuses = HashMap::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = format!("load-{n}");
            let started = Instant::now();
            let response = http
                .post(&url)
                .body(body.clone())
                .timeout(Duration::from_secs(15))
                .send()
                .await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(12),
                "a request hung for {:?}",
                started.elapsed()
            );
            if status == 200 {
                anyhow::ensure!(text == body, "request {n} got another reply: {text}");
            }
            *statuses.entry(status).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(statuses)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restart_under_load_loses_no_stored_reply() -> TestResult {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&stack, 0, stop.clone());
    // Requests in flight across the outage: their replies are produced while
    // Redis is down.
    let slow: Vec<_> = (0..5)
        .map(|i| {
            let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
            tokio::spawn(async move {
                let body = format!(r#"{{"sleep_ms":1500,"i":{i}}}"#);
                let r = http.post(url).body(body.clone()).send().await?;
                anyhow::Ok((r.status().as_u16(), r.text().await?, body))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stack.redis.stop();
    let started = Instant::now();
    let during = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("during")
        .send()
        .await?;
    assert_eq!(during.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The replies are produced while Redis is down.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Back, empty (no persistence): the gateway re-subscribes and re-joins the
    // waiters of its requests; the collector stores the replies it held back.
    stack.redis.restart()?;
    for handle in slow {
        let (status, text, body) = handle.await??;
        assert_eq!(status, 200, "{text}");
        assert_eq!(text, body);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await??;
    assert!(
        statuses.get(&200).copied().unwrap_or_default() > 10,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "unexpected answers: {statuses:?}"
    );
    assert!(
        stack.collector_stats.redis_errors.load(Ordering::Relaxed) > 0,
        "the collector never had to retry"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_fails_fast_then_recovers_without_restarts() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        broker: BrokerChoice::Own,
        ..StackOptions::default()
    })
    .await?;
    stack.broker.stop();
    let started = Instant::now();
    let during = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("during")
        .send()
        .await?;
    assert_eq!(during.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "503 took {:?}",
        started.elapsed()
    );
    stack.broker.restart()?;
    let recovered = stack.answers_within(0, Duration::from_secs(45), 3).await;
    if !recovered {
        let last = stack
            .http
            .post(stack.url(0, "/echo"))
            .header("prefer", "wait=3")
            .body("diagnose")
            .send()
            .await?;
        panic!(
            "gateway, collector and service did not recover after the broker came back: last answer {} {}; records: requests {:?}, replies {:?}; stored {}\nbroker log:\n{}",
            last.status(),
            last.text().await?,
            stack.broker.record_count(&stack.echo_topic),
            stack.broker.record_count(&stack.reply_topic),
            stack.collector_stats.stored.load(Ordering::Relaxed),
            stack.broker.log()
        );
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateways_replies_are_fetchable_from_another() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        gateways: 2,
        processes: true,
        ..StackOptions::default()
    })
    .await?;
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
            tokio::spawn(async move {
                http.post(url)
                    .header("x-request-id", format!("killed-{i}"))
                    .body(format!(r#"{{"sleep_ms":1500,"i":{i}}}"#))
                    .send()
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.gateways[0].process().signal("KILL")?;
    for handle in in_flight {
        assert!(
            handle.await?.is_err(),
            "a client of the killed gateway got an answer"
        );
    }
    // The other replica is unaffected.
    let other = stack
        .http
        .post(stack.url(1, "/echo"))
        .body("unaffected")
        .send()
        .await?;
    assert_eq!(other.status(), 200);
    // Find the killed requests' ids in the request topic, fetch their replies.
    let records = stack
        .read_topic(&stack.echo_topic, Duration::from_secs(20), |r| {
            r.iter()
                .filter(|m| request_id(m).is_some_and(|v| v.starts_with("killed-")))
                .count()
                == 5
        })
        .await?;
    for record in records
        .iter()
        .filter(|m| request_id(m).is_some_and(|v| v.starts_with("killed-")))
    {
        let request = replyway_shared::Request::from_message(record)?;
        let reply = stack
            .http
            .get(stack.url(1, &format!("/v1/replies/{}", request.correlation_id)))
            .header("prefer", "wait=10")
            .send()
            .await?;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text().await?.as_bytes(), &request.body[..]);
    }
    stack.gateways.remove(0);
    stack.shutdown().await
}

fn request_id(message: &rdkafka::message::OwnedMessage) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == "header-x-request-id")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_duplicate_reply_wins_and_malformed_replies_are_dead_lettered() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        dead_letters: true,
        collector: |c| c.max_reply_bytes = 1024,
        ..StackOptions::default()
    })
    .await?;
    let producer = stack.broker.producer()?;
    let id = "dup-1";
    produce(
        &producer,
        &stack.reply_topic,
        Some(id),
        &[("correlation-id", id), ("status", "201")],
        b"first",
    )
    .await?;
    produce(
        &producer,
        &stack.reply_topic,
        Some(id),
        &[("correlation-id", id), ("status", "500")],
        b"second",
    )
    .await?;
    produce(
        &producer,
        &stack.reply_topic,
        None,
        &[("status", "200")],
        b"no id",
    )
    .await?;
    produce(
        &producer,
        &stack.reply_topic,
        Some("bad-status"),
        &[("correlation-id", "bad-status"), ("status", "OK")],
        b"bad",
    )
    .await?;
    produce(
        &producer,
        &stack.reply_topic,
        Some("too-big"),
        &[("correlation-id", "too-big")],
        &[b'x'; 2048],
    )
    .await?;

    let dead = stack
        .read_topic(
            stack.dead_letter_topic.as_deref().unwrap_or_default(),
            Duration::from_secs(20),
            |r| r.len() >= 3,
        )
        .await?;
    let mut reasons: Vec<String> = dead
        .iter()
        .filter_map(|m| {
            m.headers()?
                .iter()
                .find(|h| h.key == "replyway-dead-letter-reason")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["bad_status", "missing_correlation_id", "too_large"]
    );
    let too_big = dead
        .iter()
        .find(|m| m.key() == Some(b"too-big"))
        .expect("the oversized reply");
    assert_eq!(
        too_big.payload().map(<[u8]>::len),
        Some(2048),
        "the dead letter keeps the value"
    );
    assert!(too_big.headers().is_some_and(|h| {
        h.iter().any(|h| {
            h.key == "replyway-source-topic" && h.value == Some(stack.reply_topic.as_bytes())
        })
    }));

    for gateway in 0..2 {
        let r = stack
            .http
            .get(stack.url(gateway, &format!("/v1/replies/{id}")))
            .send()
            .await?;
        assert_eq!(r.status(), 201);
        assert_eq!(r.text().await?, "first");
    }
    assert_eq!(stack.collector_stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(
        stack.collector_stats.dead_lettered.load(Ordering::Relaxed),
        3
    );
    // The collector goes on.
    let after = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("after")
        .send()
        .await?;
    assert_eq!(after.status(), 200);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_shed_and_memory_stays_flat() -> TestResult {
    let _heavy = replyway_tests::heavy().await;
    let mut stack = Stack::start(StackOptions {
        processes: true,
        max_waiting: 100,
        ..StackOptions::default()
    })
    .await?;
    let (client, echo_url) = (stack.http.clone(), stack.url(0, "/echo"));
    let wave = |n: usize| {
        let requests = (0..1000).map(|i| {
            let (http, url) = (client.clone(), echo_url.clone());
            async move {
                let body = format!(r#"{{"sleep_ms":1500,"wave":{n},"i":{i}}}"#);
                let started = Instant::now();
                let r = http.post(url).body(body.clone()).send().await?;
                let status = r.status().as_u16();
                let took = started.elapsed();
                let text = r.text().await?;
                anyhow::ensure!(status != 200 || text == body, "wrong reply");
                // Shedding is the `overloaded` problem, answered at once.
                anyhow::ensure!(
                    status != 503
                        || text.contains(replyway_gateway::problem::ProblemKind::Overloaded.uri()),
                    "a 503 that is not load shedding after {took:?}: {text}"
                );
                anyhow::Ok((status, took))
            }
        });
        join_all(requests)
    };
    let before = stack.gateways[0].process().rss_kib()?;
    let mut after = Vec::new();
    for n in 0..3 {
        let results = wave(n).await;
        let mut ok = 0;
        let mut shed = 0;
        // An admitted request waits for its reply (the echo service sleeps
        // 1.5 s); a shed one must not: each is answered before the fastest
        // admitted one. (Relative, so that a loaded machine's slower
        // connection set-up stretches both alike.)
        let (mut slowest_shed, mut fastest_ok) = (Duration::ZERO, Duration::MAX);
        for r in results {
            let (status, took) = r?;
            match status {
                200 => {
                    ok += 1;
                    fastest_ok = fastest_ok.min(took);
                }
                503 => {
                    shed += 1;
                    slowest_shed = slowest_shed.max(took);
                }
                other => panic!("unexpected status {other}"),
            }
        }
        assert!(
            slowest_shed < fastest_ok,
            "wave {n}: a shed request waited {slowest_shed:?}, an admitted one took {fastest_ok:?}"
        );
        assert!(ok >= 100, "wave {n}: only {ok} admitted");
        assert!(shed >= 800, "wave {n}: only {shed} shed");
        after.push(stack.gateways[0].process().rss_kib()?);
    }
    // Generous bounds: 1000 connections at once cost some buffers, but waves
    // two and three must not grow on wave one.
    assert!(
        after[0] < before + 64 * 1024,
        "RSS grew from {before} KiB to {} KiB",
        after[0]
    );
    assert!(
        after[2] < after[0] + 16 * 1024,
        "RSS keeps growing: {after:?} KiB (start {before} KiB)"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_clients_are_cut_off() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| {
            g.header_read_timeout = Duration::from_secs(1);
            g.body_read_timeout = Duration::from_secs(1);
        },
        ..StackOptions::default()
    })
    .await?;
    let addr = stack.url(0, "").trim_start_matches("http://").to_owned();

    // Headers that never end: the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\n")
        .await?;
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the stalled connection was kept open");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that never arrives: 408.
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b")
        .await?;
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_the_gateway_and_stops_the_collector_cleanly() -> TestResult {
    let mut stack = Stack::start(StackOptions {
        processes: true,
        gateway: |g| g.shutdown_grace = Duration::from_secs(10),
        ..StackOptions::default()
    })
    .await?;
    let (http, url) = (stack.http.clone(), stack.url(0, "/echo"));
    let in_flight = tokio::spawn(async move {
        let r = http
            .post(url)
            .body(r#"{"sleep_ms":1500,"draining":true}"#)
            .send()
            .await?;
        anyhow::Ok((r.status().as_u16(), r.text().await?))
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    stack.gateways[0].process().signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections.
    let refused = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("late")
        .send()
        .await;
    assert!(refused.is_err(), "a new request was accepted after SIGTERM");
    // The one in flight is answered.
    let (status, text) = in_flight.await??;
    assert_eq!(status, 200);
    assert_eq!(text, r#"{"sleep_ms":1500,"draining":true}"#);
    let exit = stack.gateways[0]
        .process()
        .wait_exit(Duration::from_secs(12))
        .await
        .expect("the gateway exited");
    assert!(exit.success(), "gateway exit: {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(12));

    let collector = stack.collectors[0].process();
    collector.signal("TERM")?;
    let exit = collector
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the collector exited");
    assert!(
        exit.success(),
        "collector exit: {exit:?}\n{}",
        collector.log()
    );
    assert!(collector.log().contains("collector stopped"));
    stack.gateways.clear();
    stack.collectors.clear();
    stack.shutdown().await
}
