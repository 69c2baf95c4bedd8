//! The service side: the `Responder` and the `Requester` of `replyway-shared`,
//! end to end against a real broker, a real Redis and the collector (services
//! written with Spring for Apache Kafka: the `spring` module).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use replyway_shared::record::unix_millis;
use replyway_shared::requester::{Fetched, Requester, RequesterError, RequesterOptions};
use replyway_shared::responder::{HandlerError, Responder};
use replyway_shared::{Reply, Request};
use replyway_tests::{Broker, Stack, StackOptions, eventually, produce, records_with_value};

type TestResult = anyhow::Result<()>;

const NOBODY_TOPIC: &str = "nobody.requests";

fn requester(stack: &Stack, options: RequesterOptions) -> anyhow::Result<Requester> {
    Ok(Requester::start(
        &stack.broker.kafka_settings(),
        &stack.gateway_settings.redis,
        options,
    )?)
}

async fn live(requester: &Requester) -> bool {
    replyway_tests::eventually(Duration::from_secs(10), || async { requester.is_live() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_requester_instances_each_receive_exactly_their_own_replies() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let instances = [
        requester(&stack, RequesterOptions::new(&stack.reply_topic))?,
        requester(&stack, RequesterOptions::new(&stack.reply_topic))?,
    ];
    assert_ne!(instances[0].node_id(), instances[1].node_id());
    for instance in &instances {
        assert!(live(instance).await, "subscription never came up");
    }
    let echo_topic = &stack.echo_topic;
    let calls = (0..400).map(|n| {
        let instance = instances[n % 2].clone();
        async move {
            let sent = json!({ "instance": n % 2, "n": n }).to_string();
            let reply = instance
                .request(echo_topic, sent.clone(), Duration::from_secs(10))
                .await?;
            anyhow::Ok((n, sent, reply))
        }
    });
    let mut seen = HashSet::new();
    for result in join_all(calls).await {
        let (n, sent, reply) = result?;
        assert_eq!(reply.status, 200);
        assert_eq!(
            std::str::from_utf8(&reply.body)?,
            sent,
            "call {n} got another call's reply"
        );
        assert!(seen.insert(n));
    }
    assert_eq!(seen.len(), 400);
    for instance in &instances {
        assert_eq!(
            instance.waiting(),
            0,
            "a finished call left a waiter behind"
        );
        instance.stop().await;
    }
    let stopped = instances[0]
        .request(&stack.echo_topic, "late", Duration::from_secs(1))
        .await;
    assert!(
        matches!(stopped, Err(RequesterError::Stopped)),
        "{stopped:?}"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requester_times_out_then_fetches_the_late_reply_and_is_bounded() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    stack.broker.create_topics(&[NOBODY_TOPIC], 1).await?;
    let options = RequesterOptions {
        max_waiting: 1,
        ..RequesterOptions::new(&stack.reply_topic)
    };
    let requester = requester(&stack, options)?;
    assert!(live(&requester).await);

    // Nobody serves the topic: the call times out and names its id.
    let started = Instant::now();
    let waiting = requester.request(NOBODY_TOPIC, "anyone?", Duration::from_millis(1500));
    let second = async {
        // Sent while the first call waits.
        let first_waits = eventually(Duration::from_secs(10), || async {
            requester.waiting() == 1
        })
        .await;
        assert!(first_waits, "the first call never waited");
        requester
            .request(NOBODY_TOPIC, "and me?", Duration::from_secs(1))
            .await
    };
    let (first, second) = tokio::join!(waiting, second);
    assert!(
        matches!(second, Err(RequesterError::Overloaded)),
        "the bound of 1 waiting call was not enforced: {second:?}"
    );
    let Err(RequesterError::Timeout { correlation_id, .. }) = first else {
        panic!("expected a timeout, got {first:?}");
    };
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(matches!(
        requester.fetch(&correlation_id).await?,
        Fetched::Pending
    ));

    // The command is on the topic as the contract says.
    let is_it = |m: &rdkafka::message::OwnedMessage| m.key() == Some(correlation_id.as_bytes());
    let records = stack
        .read_topic(NOBODY_TOPIC, Duration::from_secs(20), |r| {
            r.iter().any(is_it)
        })
        .await?;
    let kafka = stack.broker.kafka_settings();
    assert_eq!(
        records_with_value(&kafka, NOBODY_TOPIC, b"and me?")?,
        0,
        "the refused call was produced anyway"
    );
    assert_eq!(records_with_value(&kafka, NOBODY_TOPIC, b"anyone?")?, 1);
    let command = records
        .iter()
        .map(Request::from_message)
        .find(|r| r.as_ref().is_ok_and(|r| r.correlation_id == correlation_id))
        .expect("the timed-out command was produced")?;
    assert_eq!(command.reply_to, stack.reply_topic);
    assert_eq!(&command.body[..], b"anyone?");
    assert!(command.deadline.is_some());

    // A late reply is collected and can be fetched.
    let producer = stack.broker.producer()?;
    produce(
        &producer,
        &stack.reply_topic,
        Some(&correlation_id),
        &[("status", "202")],
        b"late but here",
    )
    .await?;
    let fetched = replyway_tests::eventually(Duration::from_secs(10), || async {
        matches!(
            requester.fetch(&correlation_id).await,
            Ok(Fetched::Reply(_))
        )
    })
    .await;
    assert!(fetched, "the late reply was not stored");
    let Fetched::Reply(reply) = requester.fetch(&correlation_id).await? else {
        unreachable!()
    };
    assert_eq!(reply.status, 202);
    assert_eq!(&reply.body[..], b"late but here");
    assert!(matches!(
        requester.fetch("never-issued").await?,
        Fetched::Unknown
    ));
    requester.stop().await;
    stack.shutdown().await
}

/// Reads replies of `topic` by correlation id until `expected` ids are in.
async fn replies(
    broker: &Broker,
    topic: &str,
    expected: usize,
) -> anyhow::Result<Vec<(String, Reply)>> {
    let consumer: StreamConsumer = broker
        .kafka_settings()
        .consumer_config(&format!("reader-{}", replyway_tests::free_port()))
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    while out.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await??;
        out.push(replyway_shared::record::reply_from_message(
            &message,
            1 << 20,
        )?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responder_skips_expired_answers_failures_bounds_concurrency_and_drains() -> TestResult {
    replyway_tests::init_logs();
    let broker = Broker::shared();
    broker
        .create_topics(&["svc.requests", "svc.replies"], 2)
        .await?;
    let responder = Responder::new(&broker.kafka_settings(), "svc", &["svc.requests"], 4)?;
    let stats = responder.stats();
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = {
        let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
        move |request: Request| {
            let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                match &request.body[..] {
                    b"fail" => Err::<Reply, HandlerError>("database unreachable".into()),
                    body => Ok(Reply::with_body(200, "text/plain", body.to_vec())
                        .header("x-trace", request.traceparent.unwrap_or_default())),
                }
            }
        }
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(responder.run(handler, stop.clone()));

    let producer = broker.producer()?;
    let send = |request: Request| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to("svc.requests")
                        .key(&request.correlation_id)
                        .payload(&request.body[..])
                        .headers(request.record_headers()),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)?;
            anyhow::Ok(request.correlation_id)
        }
    };
    // A command past its deadline, and a record that is not a command.
    let mut expired = Request::new("svc.replies", "too late");
    expired.deadline = Some(unix_millis(std::time::SystemTime::now()) - 1000);
    let expired_id = send(expired).await?;
    produce(
        &producer,
        "svc.requests",
        Some("x"),
        &[("correlation-id", "x")],
        b"no reply-to",
    )
    .await?;
    // Twelve commands, one of which fails.
    let mut ids = Vec::new();
    for n in 0..12 {
        let mut request = Request::new(
            "svc.replies",
            if n == 5 {
                "fail".to_owned()
            } else {
                format!("n{n}")
            },
        );
        request.set_timeout(Duration::from_secs(60));
        request.traceparent = Some(format!("00-{:032x}-{:016x}-01", n + 1, n + 1));
        ids.push((n, send(request).await?));
    }
    let got = replies(broker, "svc.replies", 12).await?;
    let by_id: std::collections::HashMap<_, _> = got.into_iter().collect();
    assert!(
        !by_id.contains_key(&expired_id),
        "an expired command was answered"
    );
    for (n, id) in &ids {
        let reply = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no reply to command {n}"));
        if *n == 5 {
            assert_eq!(reply.status, 500);
            assert_eq!(
                reply.content_type.as_deref(),
                Some("application/problem+json")
            );
            let problem: Value = serde_json::from_slice(&reply.body)?;
            assert_eq!(problem["status"], 500);
        } else {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body, format!("n{n}").as_bytes());
            // The handler sees its own hop: the command's trace, a new span.
            let (name, seen) = &reply.headers[0];
            assert_eq!(name, "x-trace");
            let seen =
                replyway_shared::trace::TraceContext::parse(seen, None).expect("a traceparent");
            assert_eq!(seen.trace_id_hex(), format!("{:032x}", n + 1));
            assert_ne!(seen.span_id, (*n as u64 + 1).to_be_bytes());
        }
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        4,
        "max_in_flight = 4 was not used or not kept"
    );
    assert_eq!(stats.replied.load(Ordering::Relaxed), 12);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.expired.load(Ordering::Relaxed), 1);
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 1);

    // Shutdown with a command in flight: it is still answered, then the group is left.
    let mut last = Request::new("svc.replies", "in flight at shutdown");
    last.set_timeout(Duration::from_secs(60));
    let last_id = send(last).await?;
    assert!(
        replyway_tests::eventually(Duration::from_secs(10), || async {
            now.load(Ordering::SeqCst) == 1
        })
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    assert_eq!(stats.replied.load(Ordering::Relaxed), 13);
    let all = replies(broker, "svc.replies", 13).await?;
    assert!(
        all.iter()
            .any(|(id, r)| *id == last_id && r.body == "in flight at shutdown"),
        "the command in flight at shutdown was not answered"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn risk_scoring_example_two_processes_each_get_their_own_scores() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let settings = replyway_risk_scoring::Settings {
        kyc_topic: "kyc.requests".into(),
        kyc_group_id: format!("{}-kyc", stack.prefix),
        reply_topic: stack.reply_topic.clone(),
        customers: 150,
        concurrency: 32,
        timeout: Duration::from_secs(10),
        kafka: stack.broker.kafka_settings(),
        redis: stack.gateway_settings.redis.clone(),
        log: replyway_shared::settings::LogSettings {
            json: true,
            ..Default::default()
        },
    };
    stack.broker.create_topics(&["kyc.requests"], 3).await?;
    let mut kyc = replyway_tests::Proc::spawn("replyway-kyc", &settings, None)?;
    // The same settings for both instances: nothing per instance.
    let mut instances = [
        replyway_tests::Proc::spawn("replyway-risk-scoring", &settings, None)?,
        replyway_tests::Proc::spawn("replyway-risk-scoring", &settings, None)?,
    ];
    let mut nodes = HashSet::new();
    for instance in &mut instances {
        let status = instance.wait_exit(Duration::from_secs(60)).await;
        let log = instance.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "a risk-scoring instance did not get exactly its own 150 scores: {status:?}\n{log}"
        );
        let outcome: Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "scoring run finished")
            .expect("the outcome line");
        assert_eq!(outcome["own"], 150, "{outcome}");
        assert_eq!(outcome["foreign"], 0, "{outcome}");
        assert_eq!(outcome["failed"], 0, "{outcome}");
        let node = outcome["node_id"].as_str().expect("node_id").to_owned();
        nodes.insert(node);
    }
    assert_eq!(nodes.len(), 2, "the instances shared a node id");
    kyc.signal("TERM")?;
    assert!(kyc.wait_exit(Duration::from_secs(15)).await.is_some());
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_left_for_redelivery_is_served_after_a_restart() -> TestResult {
    replyway_tests::init_logs();
    let broker = Broker::shared();
    broker
        .create_topics(&["rd.requests", "rd.replies"], 1)
        .await?;
    let first = Responder::new(&broker.kafka_settings(), "rd", &["rd.requests"], 4)?;
    let stats = first.stats();
    let stop = CancellationToken::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let serving = tokio::spawn(first.run(
        {
            let attempts = Arc::clone(&attempts);
            move |_request: Request| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<Reply, HandlerError>(Box::new(replyway_shared::responder::Redeliver(
                        "shutting down".into(),
                    )))
                }
            }
        },
        stop.clone(),
    ));
    let mut command = Request::new("rd.replies", "pay once");
    command.set_timeout(Duration::from_secs(60));
    broker
        .producer()?
        .send(
            FutureRecord::to("rd.requests")
                .key(&command.correlation_id)
                .payload(&command.body[..])
                .headers(command.record_headers()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    assert!(
        replyway_tests::eventually(Duration::from_secs(10), || async {
            attempts.load(Ordering::SeqCst) >= 1
        })
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    assert_eq!(stats.replied.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "not answered with 500"
    );

    // The next member of the group gets the command again and answers it.
    let second = Responder::new(&broker.kafka_settings(), "rd", &["rd.requests"], 4)?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(second.run(
        |request: Request| async move {
            Ok::<_, HandlerError>(Reply::with_body(200, "text/plain", request.body))
        },
        stop.clone(),
    ));
    let got = replies(broker, "rd.replies", 1).await?;
    assert_eq!(got[0].0, command.correlation_id);
    assert_eq!(got[0].1.body, "pay once");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    Ok(())
}

/// A handler that never finishes does not hold the Responder's stop: after
/// `drain_timeout` it is abandoned, uncommitted, and the next member of the
/// group serves the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shutdown_drain_is_bounded_and_abandons_uncommitted() -> TestResult {
    replyway_tests::init_logs();
    let broker = Broker::shared();
    broker
        .create_topics(&["drain.requests", "drain.replies"], 1)
        .await?;
    let drain = Duration::from_millis(500);
    let stuck = Responder::new(&broker.kafka_settings(), "drain", &["drain.requests"], 4)?
        .with_drain_timeout(drain);
    let stop = CancellationToken::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let serving = tokio::spawn(stuck.run(
        {
            let started = Arc::clone(&started);
            move |_request: Request| {
                started.notify_one();
                std::future::pending::<Result<Reply, HandlerError>>()
            }
        },
        stop.clone(),
    ));
    let mut command = Request::new("drain.replies", "finish me");
    command.set_timeout(Duration::from_secs(60));
    broker
        .producer()?
        .send(
            FutureRecord::to("drain.requests")
                .key(&command.correlation_id)
                .payload(&command.body[..])
                .headers(command.record_headers()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    tokio::time::timeout(Duration::from_secs(30), started.notified()).await?;
    stop.cancel();
    // Without the bound, the stop would wait for the handler forever.
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .context("the Responder did not stop after its drain timeout")???;

    let second = Responder::new(&broker.kafka_settings(), "drain", &["drain.requests"], 4)?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(second.run(
        |request: Request| async move {
            Ok::<_, HandlerError>(Reply::with_body(200, "text/plain", request.body))
        },
        stop.clone(),
    ));
    let got = replies(broker, "drain.replies", 1).await?;
    assert_eq!(
        got[0].0, command.correlation_id,
        "the abandoned command is served again"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    Ok(())
}
