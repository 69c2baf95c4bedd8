//! Spring for Apache Kafka, for real: the Spring Boot application in
//! `examples/spring/` (no Replyway code; built once by
//! `scripts/install-spring.sh`) runs as a JVM beside the suite's broker.
//!
//! * Its `listener` profile, a `@KafkaListener` with `@SendTo`, serves a
//!   gateway route with `spring_headers = true`: HTTP → gateway → Kafka →
//!   Spring → Kafka → collector → Redis → gateway → HTTP.
//! * Its `client` profile, a `ReplyingKafkaTemplate`, calls the Rust echo
//!   service (a `Responder`), which answers to `kafka_replyTopic` (and
//!   `kafka_replyPartition`) with `kafka_correlationId` echoed byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};

use replyway_gateway::routes::RouteConfig;
use replyway_shared::record::{header, new_correlation_id};
use replyway_tests::{Broker, Proc, Stack, StackOptions, read_topic_to_end};

type TestResult = anyhow::Result<()>;

/// How long a Spring application may take to start (a JVM on a loaded
/// machine), and the client to finish its calls.
const JVM: Duration = Duration::from_secs(120);

/// Requests the client sends at once.
const CALLS: usize = 20;

/// The listener's request topic of the stack with key prefix `prefix`.
fn shout_topic(prefix: &str) -> String {
    format!("{prefix}.shout.requests")
}

/// `POST /shout` → the Spring listener's topic, with Spring's headers.
fn shout_route(settings: &mut replyway_gateway::Settings) {
    settings.routes.push(RouteConfig {
        path: "/shout".into(),
        topic: shout_topic(&settings.redis.prefix),
        timeout: Duration::from_secs(30),
        spring_headers: true,
        ..RouteConfig::default()
    });
}

/// The Spring Boot application's jar, as `scripts/install-spring.sh` builds it.
fn shouter_jar() -> anyhow::Result<PathBuf> {
    let jar = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .join("examples/spring/target/shouter.jar");
    anyhow::ensure!(
        jar.is_file(),
        "{} is missing: run scripts/install-spring.sh (make test does)",
        jar.display()
    );
    Ok(jar)
}

/// The Spring application with `profile` on `broker`, Spring Boot properties
/// given on its command line.
fn shouter(broker: &Broker, profile: &str, properties: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let mut java = Command::new("java");
    // A small heap and a quick start: it serves a test, not a load.
    java.args([
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-jar",
    ])
    .arg(shouter_jar()?)
    .arg(format!("--spring.profiles.active={profile}"))
    .arg(format!(
        "--spring.kafka.bootstrap-servers={}",
        broker.bootstrap()
    ));
    for (name, value) in properties {
        java.arg(format!("--{name}={value}"));
    }
    Proc::spawn_program(java)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spring_sendto_listener_serves_a_route_with_spring_headers() -> TestResult {
    let stack = Stack::start(StackOptions {
        processes: true,
        gateway: shout_route,
        ..StackOptions::default()
    })
    .await?;
    let topic = shout_topic(&stack.prefix);
    stack.broker.create_topics(&[&topic], 3).await?;
    let group = format!("{}-shouter", stack.prefix);
    let mut listener = shouter(
        &stack.broker,
        "listener",
        &[
            ("shouter.topic", &topic),
            ("spring.kafka.consumer.group-id", &group),
        ],
    )?;
    listener.logged("Started ShouterApplication", JVM).await?;
    listener
        .logged(&format!("partitions assigned: [{topic}-"), JVM)
        .await?;

    let shout = |text: String| {
        let request = stack
            .http
            .post(stack.url(0, "/shout"))
            .header("content-type", "application/json")
            .body(json!({ "text": text }).to_string());
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"].to_str()?.to_owned();
            let id = response.headers()["correlation-id"].to_str()?.to_owned();
            let body: Value = response.json().await?;
            anyhow::Ok((status, content_type, id, body))
        }
    };
    let calls = (0..CALLS).map(|n| shout(format!("hello {n}")));
    let mut ids = std::collections::HashSet::new();
    for (n, result) in join_all(calls).await.into_iter().enumerate() {
        let (status, content_type, id, body) = result?;
        assert_eq!(status, 200, "call {n}: {body}");
        assert_eq!(content_type, "application/json", "call {n}");
        assert_eq!(body, json!({ "text": format!("HELLO {n}!") }), "call {n}");
        assert!(ids.insert(id), "two calls shared a correlation id");
    }
    // The listener's own status header.
    let (status, content_type, _, body) = shout("   ".into()).await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(body, json!({ "error": "nothing to shout" }));

    // The commands carried Spring's headers (the correlation id's bytes); a
    // route without the option carries none.
    let commands = read_topic_to_end(&stack.broker.kafka_settings(), &topic)?;
    assert_eq!(commands.len(), CALLS + 1);
    for command in &commands {
        let headers = command.headers().expect("a command has headers");
        let value = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
        assert_eq!(
            value(header::SPRING_CORRELATION_ID),
            value(header::CORRELATION_ID)
        );
        assert_eq!(value(header::SPRING_REPLY_TOPIC), value(header::REPLY_TO));
    }
    // The replies are Spring's own: `kafka_correlationId` copied, none of
    // Replyway's correlation headers, no key.
    let replies = read_topic_to_end(&stack.broker.kafka_settings(), &stack.reply_topic)?;
    let spring_replies: Vec<_> = replies
        .iter()
        .filter(|r| {
            r.headers()
                .is_some_and(|h| h.iter().any(|h| h.key == header::SPRING_CORRELATION_ID))
        })
        .collect();
    assert_eq!(spring_replies.len(), CALLS + 1);
    for reply in spring_replies {
        let headers = reply.headers().expect("checked above");
        assert!(headers.iter().all(|h| h.key != header::CORRELATION_ID));
        assert_eq!(reply.key(), None);
    }

    let response = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("x")
        .send()
        .await?;
    let id = response.headers()["correlation-id"].to_str()?.to_owned();
    let records = stack
        .read_topic(&stack.echo_topic, Duration::from_secs(20), |records| {
            records.iter().any(|m| m.key() == Some(id.as_bytes()))
        })
        .await?;
    let record = records
        .iter()
        .find(|m| m.key() == Some(id.as_bytes()))
        .expect("the echo command");
    let names: Vec<&str> = record
        .headers()
        .map(|h| h.iter().map(|h| h.key).collect())
        .unwrap_or_default();
    assert!(names.contains(&header::REPLY_TO));
    assert!(!names.contains(&header::SPRING_REPLY_TOPIC));
    assert!(!names.contains(&header::SPRING_CORRELATION_ID));
    stack.shutdown().await
}

/// How the Spring client addresses its replies.
struct ClientRun {
    /// `ReplyingKafkaTemplate.setBinaryCorrelation`: 16 raw bytes, or a
    /// UUID string.
    binary: bool,
    /// The one partition of the reply topic the client reads (Spring then
    /// sends `kafka_replyPartition`); `None`: its consumer group reads all.
    reply_partition: Option<i32>,
}

/// One line the client prints per call: `reply <n> sent=<hex> got=<hex> body=<text>`.
#[derive(Debug)]
struct Call {
    sent: Vec<u8>,
    got: Vec<u8>,
    body: String,
}

/// The client's lines, by call.
fn calls(log: &str) -> anyhow::Result<BTreeMap<usize, Call>> {
    let mut calls = BTreeMap::new();
    for line in log.lines().filter(|l| l.starts_with("reply ")) {
        let (n, call) = parse_call(line).ok_or_else(|| anyhow::anyhow!("not a call: {line:?}"))?;
        anyhow::ensure!(calls.insert(n, call).is_none(), "call {n} twice");
    }
    Ok(calls)
}

fn parse_call(line: &str) -> Option<(usize, Call)> {
    let (n, rest) = line.strip_prefix("reply ")?.split_once(" sent=")?;
    let (sent, rest) = rest.split_once(" got=")?;
    let (got, body) = rest.split_once(" body=")?;
    let call = Call {
        sent: from_hex(sent)?,
        got: from_hex(got)?,
        body: body.to_owned(),
    };
    Some((n.parse().ok()?, call))
}

/// Bytes from lower-case hex, as Java's `HexFormat` writes them.
fn from_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The echo service (a Rust `Responder`, as a process) on a request topic
/// of its own under `prefix`, with a reply topic beside it (3 partitions
/// each), once it serves: (requests, replies, the process).
async fn echo_service(broker: &Broker, prefix: &str) -> anyhow::Result<(String, String, Proc)> {
    let (requests, replies) = (format!("{prefix}.echo"), format!("{prefix}.replies"));
    broker.create_topics(&[&requests, &replies], 3).await?;
    let echo_settings = replyway_echo::Settings {
        topics: vec![requests.clone()],
        group_id: format!("{prefix}-echo"),
        kafka: broker.kafka_settings(),
        ..replyway_echo::Settings::default()
    };
    let mut echo = Proc::spawn("replyway-echo", &echo_settings, None)?;
    echo.logged("echo service started", JVM).await?;
    Ok((requests, replies, echo))
}

/// The Spring client sends [`CALLS`] requests at once to the echo service (a
/// Rust `Responder`, as a process) and gets each its own reply.
async fn replying_template_calls_the_echo_service(run: ClientRun) -> TestResult {
    let broker = Broker::shared();
    let prefix = format!("spring-{}", &new_correlation_id()[..8]);
    let (requests, replies, mut echo) = echo_service(broker, &prefix).await?;

    let (calls_text, binary_text) = (CALLS.to_string(), run.binary.to_string());
    let partition_text = run.reply_partition.map(|p| p.to_string());
    let group = format!("{prefix}-client");
    let mut properties = vec![
        ("echo.topic", requests.as_str()),
        ("echo.reply-topic", replies.as_str()),
        ("echo.requests", calls_text.as_str()),
        ("echo.binary-correlation", binary_text.as_str()),
        ("spring.kafka.consumer.group-id", group.as_str()),
    ];
    if let Some(partition) = &partition_text {
        properties.push(("echo.reply-partition", partition));
    }
    let mut client = shouter(broker, "client", &properties)?;
    let exit = client.wait_exit(JVM).await;
    let log = client.log();
    assert!(
        exit.is_some_and(|s| s.success()),
        "the Spring client did not get its replies ({exit:?}):\n{log}\n\necho:\n{}",
        echo.log()
    );

    let calls = calls(&log)?;
    assert_eq!(calls.len(), CALLS, "{log}");
    for (n, call) in &calls {
        assert_eq!(call.body, json!({ "n": n }).to_string(), "call {n}");
        assert_eq!(
            call.got, call.sent,
            "call {n}: the correlation id came back changed"
        );
        if run.binary {
            assert_eq!(call.sent.len(), 16, "Spring's default: 16 raw bytes");
        } else {
            let text = std::str::from_utf8(&call.sent)?;
            assert!(uuid::Uuid::parse_str(text).is_ok(), "{text:?}");
        }
    }

    // The replies went where Spring asked, with its id, and Replyway's
    // correlation id in the text form Spring logs.
    let records = read_topic_to_end(&broker.kafka_settings(), &replies)?;
    assert_eq!(records.len(), CALLS);
    for record in &records {
        if let Some(partition) = run.reply_partition {
            assert_eq!(record.partition(), partition, "kafka_replyPartition");
        }
        let headers = record.headers().expect("a reply has headers");
        let value = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
        let raw = value(header::SPRING_CORRELATION_ID).expect("kafka_correlationId");
        let id = std::str::from_utf8(value(header::CORRELATION_ID).expect("correlation-id"))?;
        let expected = if run.binary {
            uuid::Uuid::from_slice(raw)?.to_string()
        } else {
            std::str::from_utf8(raw)?.to_owned()
        };
        assert_eq!(id, expected);
        assert_eq!(record.key(), Some(id.as_bytes()));
    }
    echo.signal("TERM")?;
    assert!(echo.wait_exit(Duration::from_secs(15)).await.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spring_replying_kafka_template_calls_a_responder_with_binary_correlation() -> TestResult
{
    replying_template_calls_the_echo_service(ClientRun {
        binary: true,
        reply_partition: None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spring_replying_kafka_template_calls_a_responder_with_string_correlation_on_its_partition()
-> TestResult {
    replying_template_calls_the_echo_service(ClientRun {
        binary: false,
        reply_partition: Some(2),
    })
    .await
}

/// The lines of the Java sources under `examples/spring/src`, trimmed, blank
/// ones left out.
fn java_source_lines(dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            java_source_lines(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "java") {
            let text = std::fs::read_to_string(&path)?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    Ok(())
}

#[test]
fn the_readmes_spring_code_is_the_code_the_suite_runs() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Spring for Apache Kafka\n"))
        .ok_or_else(|| anyhow::anyhow!("README.md has no section \"Spring for Apache Kafka\""))?;
    let mut sources = Vec::new();
    java_source_lines(&root.join("examples/spring/src"), &mut sources)?;
    let blocks: Vec<Vec<&str>> = section
        .split("```java\n")
        .skip(1)
        .map(|block| {
            block
                .split("```")
                .next()
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect();
    assert!(blocks.len() >= 3, "the listener, the template and its call");
    for block in blocks {
        assert!(
            sources
                .windows(block.len())
                .any(|window| window.iter().zip(&block).all(|(a, b)| a == b)),
            "README.md shows Java that examples/spring/src does not have, line for line:\n{}",
            block.join("\n")
        );
    }
    Ok(())
}

/// A streamed reply to a Spring command goes where its single reply would: each
/// part to `kafka_replyPartition` with `kafka_correlationId` back, as the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_reply_to_a_spring_command_keeps_its_partition_and_id_in_every_part()
-> TestResult {
    let broker = Broker::shared();
    let prefix = format!("spring-parts-{}", &new_correlation_id()[..8]);
    let (requests, replies, mut echo) = echo_service(broker, &prefix).await?;

    // A command shaped as Spring's ReplyingKafkaTemplate sends it.
    let spring_id: Vec<u8> = (0xa0..0xb0).collect();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: header::SPRING_REPLY_TOPIC,
            value: Some(replies.as_bytes()),
        })
        .insert(rdkafka::message::Header {
            key: header::SPRING_REPLY_PARTITION,
            value: Some(&[0u8, 0, 0, 2][..]),
        })
        .insert(rdkafka::message::Header {
            key: header::SPRING_CORRELATION_ID,
            value: Some(&spring_id[..]),
        });
    let body = json!({ "parts": 4 }).to_string();
    broker
        .producer()?
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(&requests)
                .payload(&body)
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;

    let records = replyway_tests::until_records(
        &broker.kafka_settings(),
        &replies,
        &BTreeMap::new(),
        4,
        JVM,
        |_| true,
    )
    .await?;
    let mut parts = Vec::new();
    for record in &records {
        assert_eq!(record.partition(), 2, "kafka_replyPartition");
        let headers = record.headers().expect("a part has headers");
        let value = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
        assert_eq!(
            value(header::SPRING_CORRELATION_ID),
            Some(&spring_id[..]),
            "kafka_correlationId back in every part"
        );
        let part: u32 =
            std::str::from_utf8(value(header::REPLY_PART).expect("reply-part"))?.parse()?;
        parts.push((
            part,
            value(header::REPLY_LAST).is_some_and(|v| v == b"true"),
        ));
    }
    parts.sort_unstable();
    assert_eq!(
        parts,
        [(0, false), (1, false), (2, false), (3, true)],
        "{records:?}"
    );
    echo.signal("TERM")?;
    assert!(echo.wait_exit(Duration::from_secs(15)).await.is_some());
    Ok(())
}
