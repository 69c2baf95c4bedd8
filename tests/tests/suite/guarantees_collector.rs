//! Guarantees of the collector that each need a test of their own: what a
//! dead letter carries, for every reason, and that its secrets never show.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;

use replyway_shared::correlation::Signer;
use replyway_shared::record::ReplyError;
use replyway_tests::probe::{self, header, produce_raw};
use replyway_tests::{Proc, Stack, StackOptions, bin_path, eventually};

type TestResult = anyhow::Result<()>;

/// A malformed reply planted on the reply topic, and what its dead letter must say.
struct Planted {
    key: &'static [u8],
    headers: Vec<(&'static str, &'static [u8])>,
    value: &'static [u8],
    reason: &'static str,
    error: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_carry_the_error_and_origin_for_not_utf8_and_invalid_ids() -> TestResult {
    let stack = Stack::start(StackOptions {
        dead_letters: true,
        ..StackOptions::default()
    })
    .await?;
    let dead_letter_topic = stack.dead_letter_topic.clone().unwrap_or_default();
    let planted = [
        Planted {
            key: b"not-utf8-id",
            headers: vec![("correlation-id", b"\xffnot-utf8"), ("status", b"200")],
            value: b"an id that is not UTF-8",
            reason: "not_utf8",
            error: ReplyError::NotUtf8("correlation-id".into()).to_string(),
        },
        Planted {
            key: b"not-utf8-header",
            headers: vec![
                ("correlation-id", b"not-utf8-header"),
                ("header-x-note", b"caf\xe9"),
            ],
            value: b"a reply header that is not UTF-8",
            reason: "not_utf8",
            error: ReplyError::NotUtf8("header-x-note".into()).to_string(),
        },
        Planted {
            key: b"invalid-id",
            headers: vec![("correlation-id", b"a{b}c")],
            value: b"an id Redis keys cannot carry",
            reason: "invalid_correlation_id",
            error: ReplyError::InvalidCorrelationId.to_string(),
        },
        Planted {
            key: b"bad-status",
            headers: vec![("correlation-id", b"bad-status"), ("status", b"OK")],
            value: b"a status that is not a number",
            reason: "bad_status",
            error: ReplyError::BadStatus("OK".into()).to_string(),
        },
    ];
    let producer = stack.broker.producer()?;
    let mut origins = Vec::new();
    for p in &planted {
        let origin = produce_raw(
            &producer,
            &stack.reply_topic,
            Some(p.key),
            &p.headers,
            p.value,
        )
        .await?;
        origins.push(origin);
    }
    let letters = stack
        .read_topic(&dead_letter_topic, Duration::from_secs(30), |r| {
            r.len() >= planted.len()
        })
        .await?;
    assert_eq!(letters.len(), planted.len());
    for (p, (partition, offset)) in planted.iter().zip(&origins) {
        let name = String::from_utf8_lossy(p.key);
        let letter = letters
            .iter()
            .find(|m| m.key() == Some(p.key))
            .unwrap_or_else(|| panic!("no dead letter for {name}"));
        assert_eq!(
            header(letter, "replyway-dead-letter-reason").as_deref(),
            Some(p.reason),
            "{name}"
        );
        assert_eq!(
            header(letter, "replyway-dead-letter-error"),
            Some(p.error.clone()),
            "{name}"
        );
        assert_eq!(
            header(letter, "replyway-source-topic").as_deref(),
            Some(stack.reply_topic.as_str()),
            "{name}"
        );
        assert_eq!(
            header(letter, "replyway-source-partition"),
            Some(partition.to_string()),
            "{name}"
        );
        assert_eq!(
            header(letter, "replyway-source-offset"),
            Some(offset.to_string()),
            "{name}"
        );
        assert_eq!(letter.payload(), Some(p.value), "{name}: the value is kept");
        // The reply's own headers are kept byte for byte.
        let kept = letter.headers().expect("headers");
        for (key, value) in &p.headers {
            assert!(
                kept.iter()
                    .any(|h| h.key == *key && h.value == Some(*value)),
                "{name}: header {key} was not kept"
            );
        }
    }
    // Counted by reason; none of them reached Redis.
    let admin = &stack.collector_admin[0];
    for (reason, count) in [
        ("not_utf8", 2.0),
        ("invalid_correlation_id", 1.0),
        ("bad_status", 1.0),
    ] {
        let series = format!(r#"replyway_collector_replies_malformed_total{{reason="{reason}"}}"#);
        assert_eq!(
            probe::metric(&stack.http, admin, &series).await?,
            Some(count),
            "{series}"
        );
    }
    assert_eq!(
        probe::metric(
            &stack.http,
            admin,
            "replyway_collector_replies_dead_lettered_total"
        )
        .await?,
        Some(4.0)
    );
    for id in ["not-utf8-header", "bad-status"] {
        assert!(stack.redis_keys(&format!("{{{id}}}:*")).await?.is_empty());
    }
    // The collector goes on.
    let after = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("after the dead letters")
        .send()
        .await?;
    assert_eq!(after.status(), 200);
    assert_eq!(after.text().await?, "after the dead letters");
    stack.shutdown().await
}

const SECRET: &str = "correlation secret of the test deployment, 32+ bytes";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_secrets_never_reach_its_help_log_or_metrics() -> TestResult {
    let redis_password = "collector-redis-password-never-shown";
    let mut stack = Stack::start(StackOptions {
        redis_password: Some(redis_password.into()),
        dead_letters: true,
        gateway: |g| g.correlation_secret = Some(SECRET.into()),
        collector: |c| c.correlation_secret = Some(SECRET.into()),
        ..StackOptions::default()
    })
    .await?;
    let mut settings = stack.collector_settings.clone();
    settings.admin_listen = "127.0.0.1:0".into();
    // A group of its own: it reads every reply, beside the stack's collector.
    settings.group_id = format!("{}-secrets", stack.prefix);
    settings.log.filter = "debug".into();
    assert!(settings.redis.url.expose().contains(redis_password));
    let mut collector = Proc::spawn_with_log("replyway-collector", &settings, None, "debug")?;
    let admin = collector
        .reported_addr("admin", Duration::from_secs(60))
        .await?;

    // A reply stored, and a planted (unsigned) one rejected and dead-lettered.
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("secret body 4111")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let producer = stack.broker.producer()?;
    produce_raw(
        &producer,
        &stack.reply_topic,
        Some(b"planted"),
        &[("correlation-id", b"planted")],
        b"planted body 4242",
    )
    .await?;
    let admin = admin.to_string();
    let (http, at) = (&stack.http, admin.as_str());
    // Both collectors read every reply: whichever stores it first, the other
    // counts it as a duplicate.
    let handled = || async {
        let stored = probe::metric(http, at, "replyway_collector_replies_stored_total").await;
        let duplicate = probe::metric(http, at, "replyway_collector_replies_duplicate_total").await;
        match (stored, duplicate) {
            (Ok(Some(s)), Ok(Some(d))) => s + d,
            _ => 0.0,
        }
    };
    let seen = eventually(Duration::from_secs(30), || async {
        let rejected = probe::metric(
            http,
            at,
            r#"replyway_collector_replies_malformed_total{reason="unsigned_correlation_id"}"#,
        )
        .await;
        handled().await >= 2.0 && matches!(rejected, Ok(Some(r)) if r >= 1.0)
    })
    .await;
    assert!(
        seen,
        "the collector did not see the replies:\n{}",
        collector.log()
    );

    // A reply while Redis is away: the failed round trips are logged too,
    // and the reply is stored once Redis is back.
    let before_outage = handled().await;
    stack.redis.stop();
    let signed = Signer::new("correlation_secret", SECRET)?.issue();
    produce_raw(
        &producer,
        &stack.reply_topic,
        Some(signed.as_bytes()),
        &[("correlation-id", signed.as_bytes())],
        b"stored after the outage",
    )
    .await?;
    let failed = eventually(Duration::from_secs(30), || async {
        probe::metric(http, at, "replyway_collector_redis_errors_total")
            .await
            .is_ok_and(|v| v.is_some_and(|n| n >= 1.0))
    })
    .await;
    assert!(
        failed,
        "the collector never failed to reach Redis:\n{}",
        collector.log()
    );
    stack.redis.restart()?;
    let stored = eventually(Duration::from_secs(30), || async {
        handled().await >= before_outage + 1.0
    })
    .await;
    assert!(stored, "the reply was not stored after Redis came back");

    let metrics = stack
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let help = std::process::Command::new(bin_path("replyway-collector"))
        .arg("--help")
        .env("REPLYWAY_CORRELATION_SECRET", SECRET)
        .env("REPLYWAY_REDIS__URL", settings.redis.url.expose())
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    assert!(help.contains("correlation_secret"), "{help}");
    collector.signal("TERM")?;
    let exit = collector.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|s| s.success()), "{}", collector.log());
    let log = collector.log();
    assert!(log.contains("collector started"), "{log}");
    assert!(log.contains("malformed reply"), "{log}");
    assert!(log.contains("could not store replies"), "{log}");
    // Refused settings are named, and the secrets still not shown.
    let mut refused = settings.clone();
    refused.batch_max = 0;
    let mut invalid = Proc::spawn_with_log("replyway-collector", &refused, None, "debug")?;
    let exit = invalid.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(2), "{}", invalid.log());
    let invalid = invalid.log();
    assert!(invalid.contains("batch_max"), "{invalid}");
    for (what, text) in [
        ("log", &log),
        ("/metrics", &metrics),
        ("--help", &help),
        ("the refusal", &invalid),
    ] {
        for secret in [
            SECRET,
            redis_password,
            "secret body 4111",
            "planted body 4242",
        ] {
            assert!(!text.contains(secret), "{what} shows {secret:?}");
        }
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_of_an_aborted_transaction_never_reaches_a_client() -> TestResult {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

    let stack = Stack::start(StackOptions::default()).await?;
    let producer: FutureProducer = stack
        .broker
        .kafka_settings()
        .producer_config()
        .set("transactional.id", format!("{}-tx", stack.prefix))
        .create()?;
    let within = Duration::from_secs(20);
    let transact = |id: &'static str, commit: bool| {
        let (producer, topic) = (producer.clone(), stack.reply_topic.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            producer.begin_transaction()?;
            // Both replies on one partition: the committed one comes after
            // the aborted one, so once it is stored the other was read.
            let record = FutureRecord::to(&topic)
                .partition(0)
                .key(id)
                .payload(id)
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "correlation-id",
                        value: Some(id),
                    }),
                );
            producer.send_result(record).map_err(|(e, _)| e)?;
            if commit {
                producer.commit_transaction(within)?;
            } else {
                // In the log first, then aborted: a reader that does not
                // skip aborted records would see it.
                producer.flush(within)?;
                producer.abort_transaction(within)?;
            }
            Ok(())
        })
    };
    {
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || producer.init_transactions(within)).await??;
    }
    transact("aborted-1", false).await??;
    transact("committed-1", true).await??;
    let url = |id: &str| stack.url(0, &format!("/v1/replies/{id}"));
    let committed = eventually(Duration::from_secs(20), || async {
        stack
            .http
            .get(url("committed-1"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(committed, "the committed reply was not stored");
    let aborted = stack.http.get(url("aborted-1")).send().await?;
    assert_eq!(aborted.status(), 404, "an aborted reply was stored");
    stack.shutdown().await
}
