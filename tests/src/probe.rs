//! Probes that let a test check a guarantee exactly: a gateway of its own with
//! other settings, records produced with raw header bytes and their place in
//! the log, headers of a record read back, commands of one correlation id
//! counted by reading the topic, Redis commands counted by the server, and one
//! sample of a `/metrics` page.

use std::time::Duration;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use replyway_shared::settings::KafkaSettings;

use crate::RedisServer;

/// Starts a gateway with `settings` in this process, on a port of its own and
/// without an admin port. Returns its base URL (`http://127.0.0.1:<port>`) and
/// the token that stops it.
///
/// # Errors
/// When the settings are invalid or no port can be bound.
pub async fn spawn_gateway(
    mut settings: replyway_gateway::Settings,
) -> anyhow::Result<(String, CancellationToken)> {
    settings.admin_listen = String::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let config = settings.build()?;
    tokio::spawn(replyway_gateway::run(config, listener, None, token.clone()));
    Ok((format!("http://{addr}"), token))
}

/// [`spawn_gateway`], with an admin port of its own too: returns the base
/// URL, the admin address (`127.0.0.1:<port>`, for `/metrics`) and the token.
///
/// # Errors
/// When the settings are invalid or no port can be bound.
pub async fn spawn_gateway_with_admin(
    mut settings: replyway_gateway::Settings,
) -> anyhow::Result<(String, String, CancellationToken)> {
    settings.admin_listen = String::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (addr, admin_addr) = (listener.local_addr()?, admin.local_addr()?);
    let token = CancellationToken::new();
    let config = settings.build()?;
    tokio::spawn(replyway_gateway::run(
        config,
        listener,
        Some(admin),
        token.clone(),
    ));
    Ok((format!("http://{addr}"), admin_addr.to_string(), token))
}

/// Produces a record whose header values are raw bytes (not necessarily
/// UTF-8) and returns where the broker put it: `(partition, offset)`.
///
/// # Errors
/// When the broker does not take the record within 5 s.
pub async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: &[u8],
) -> anyhow::Result<(i32, i64)> {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(value)
        .headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivered = producer
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)?;
    Ok((delivered.partition, delivered.offset))
}

/// The first value of header `name` of a record, as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// How many commands of `topic` carry correlation id `id`, read from the
/// start of every partition to its end (not a broker-side counter).
///
/// # Errors
/// As [`crate::read_topic_to_end`].
pub fn commands_of(kafka: &KafkaSettings, topic: &str, id: &str) -> anyhow::Result<usize> {
    let records = crate::read_topic_to_end(kafka, topic)?;
    Ok(records
        .iter()
        .filter(|m| header(m, "correlation-id").as_deref() == Some(id))
        .count())
}

/// Commands Redis has executed for its clients so far, from `INFO
/// commandstats`, leaving out `PING` (a gateway's subscription pings every
/// few seconds) and `INFO` (this probe's own).
///
/// # Errors
/// When Redis does not answer.
pub async fn redis_commands(redis: &RedisServer) -> anyhow::Result<u64> {
    let mut conn = redis.connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let mut total = 0;
    for line in info.lines() {
        let Some((command, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if command == "ping" || command == "info" {
            continue;
        }
        let calls = stats
            .split(',')
            .find_map(|s| s.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_default();
        total += calls;
    }
    Ok(total)
}

/// The value of the sample `series` (metric name with its labels, as the page
/// writes it, e.g. `name_total{reason="x"}`) on the `/metrics` page at
/// `http://{admin}/metrics`; `None` when the page does not have it.
///
/// # Errors
/// When the page cannot be fetched.
pub async fn metric(
    http: &reqwest::Client,
    admin: &str,
    series: &str,
) -> anyhow::Result<Option<f64>> {
    let page = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(page.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }))
}
