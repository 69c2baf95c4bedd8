//! Timing replies as they land on a topic: from the first reply counted to
//! the last, read from the topic's start with assigned partitions (no
//! consumer group to join, so no rebalance in the measurement).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use replyway_shared::record::header;
use replyway_shared::settings::KafkaSettings;

/// When the first and the last counted reply arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrivals {
    /// The first.
    pub first: Instant,
    /// The last.
    pub last: Instant,
    /// How many were counted.
    pub count: usize,
}

impl Arrivals {
    /// Replies per second between the first and the last (the first one
    /// starts the clock, so it is not counted in the rate).
    pub fn rate(&self) -> f64 {
        let span = self.last.duration_since(self.first).as_secs_f64();
        if span > 0.0 {
            (self.count.saturating_sub(1)) as f64 / span
        } else {
            f64::INFINITY
        }
    }
}

/// Reads `partitions` partitions of `topic` (with `kafka`'s consumer
/// properties, `read_committed` among them) from the start until `n`
/// distinct correlation ids that `counts` accepts have arrived.
///
/// # Errors
/// When they have not arrived within `limit`, or the consumer fails.
pub fn until_replies(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: i32,
    n: usize,
    counts: impl Fn(&str) -> bool,
    limit: Duration,
) -> anyhow::Result<Arrivals> {
    let consumer: BaseConsumer = kafka
        .consumer_config(&format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let (mut first, mut last) = (None, started);
    let mut seen = HashSet::with_capacity(n);
    while seen.len() < n {
        anyhow::ensure!(
            started.elapsed() < limit,
            "{} of {n} replies on {topic} within {limit:?}",
            seen.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == header::CORRELATION_ID))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if let Some(id) = id
            && counts(&id)
            && seen.insert(id)
        {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
        }
    }
    Ok(Arrivals {
        first: first.unwrap_or(last),
        last,
        count: seen.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_the_replies_after_the_first() {
        let first = Instant::now();
        let arrivals = Arrivals {
            first,
            last: first + Duration::from_secs(2),
            count: 201,
        };
        assert!((arrivals.rate() - 100.0).abs() < 1e-9);
        let at_once = Arrivals {
            first,
            last: first,
            count: 1,
        };
        assert!(at_once.rate().is_infinite());
    }
}
