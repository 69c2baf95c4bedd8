//! The collector's metrics and readiness, served on the admin port.
//!
//! Labels stay bounded: `reason` is one of the fixed malformed-reply labels,
//! `topic`/`partition` the reply topics' partitions assigned to this replica.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use replyway_shared::admin::{Collector, counter, gauge, gauge_family};
use replyway_shared::store::Store;

use crate::Stats;

/// Label of a malformed reply count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Fixed label of why the reply was rejected.
    pub reason: &'static str,
}

/// Malformed replies by reason.
pub type MalformedFamily = Family<Reason, Counter>;

/// Label of a partition's lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Reply topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// What librdkafka's latest statistics said.
#[derive(Debug, Default)]
pub struct Observed {
    lag: Mutex<Vec<(PartitionLabel, i64)>>,
    brokers_up: AtomicUsize,
    reports: AtomicUsize,
    assigned: AtomicUsize,
}

impl Observed {
    /// Takes in a statistics report.
    pub fn update(&self, statistics: &rdkafka::Statistics) {
        let mut lag: Vec<(PartitionLabel, i64)> = statistics
            .topics
            .iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .values()
                    // -1: not consumed by this replica (or not known yet).
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(move |p| {
                        (
                            PartitionLabel {
                                topic: topic.clone(),
                                partition: p.partition,
                            },
                            p.consumer_lag,
                        )
                    })
            })
            .collect();
        lag.sort_by(|a, b| (&a.0.topic, a.0.partition).cmp(&(&b.0.topic, b.0.partition)));
        *self
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lag;
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count();
        self.brokers_up.store(up, Ordering::Relaxed);
        self.reports.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how many reply partitions this replica owns after a rebalance.
    pub fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::Relaxed);
    }

    /// Brokers connected at the last report, if there was one.
    pub fn brokers_up(&self) -> Option<usize> {
        (self.reports.load(Ordering::Relaxed) > 0).then(|| self.brokers_up.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct Live {
    stats: Arc<Stats>,
    observed: Arc<Observed>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        counter(
            &mut encoder,
            "replies_stored",
            "Replies stored in Redis (the first of their correlation id).",
            read(&s.stored),
        )?;
        counter(
            &mut encoder,
            "replies_duplicate",
            "Replies for a correlation id that already had one (the first wins).",
            read(&s.duplicates),
        )?;
        counter(
            &mut encoder,
            "replies_dead_lettered",
            "Malformed replies sent to the dead-letter topic.",
            read(&s.dead_lettered),
        )?;
        counter(
            &mut encoder,
            "redis_errors",
            "Failed Redis round trips (each retried).",
            read(&s.redis_errors),
        )?;
        counter(
            &mut encoder,
            "kafka_errors",
            "Consumer errors and failed dead-letter productions.",
            read(&s.kafka_errors),
        )?;
        gauge(
            &mut encoder,
            "kafka_brokers_up",
            "Brokers connected at librdkafka's last statistics report.",
            i64::try_from(self.observed.brokers_up().unwrap_or(0)).unwrap_or(0),
        )?;
        gauge(
            &mut encoder,
            "assigned_partitions",
            "Reply partitions this replica owns in its consumer group (after the last rebalance).",
            i64::try_from(self.observed.assigned.load(Ordering::Relaxed)).unwrap_or(0),
        )?;
        let lag = self
            .observed
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        gauge_family(
            &mut encoder,
            "consumer_lag",
            "Replies not yet consumed, per assigned partition (librdkafka statistics, every statistics.interval.ms).",
            &lag,
        )
    }
}

/// The readiness check: Redis answers and a broker is connected.
#[derive(Clone)]
pub struct Readiness {
    store: Store,
    observed: Arc<Observed>,
}

impl Readiness {
    /// `200` when ready, else `503`, with what was checked.
    pub async fn check(&self) -> Response {
        let redis = self.store.ping().await.is_ok();
        let kafka = self.observed.brokers_up().is_some_and(|n| n > 0);
        let ready = redis && kafka;
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            Json(serde_json::json!({ "ready": ready, "redis": redis, "kafka": kafka })),
        )
            .into_response()
    }
}

/// The registry under `replyway_collector_` and the readiness check.
pub fn register(
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    malformed: MalformedFamily,
    store: Store,
) -> (Registry, Readiness) {
    let mut registry = Registry::with_prefix("replyway_collector");
    registry.register(
        "replies_malformed",
        "Replies rejected as malformed, by reason.",
        malformed,
    );
    registry.register_collector(Box::new(Live {
        stats,
        observed: Arc::clone(&observed),
    }));
    (registry, Readiness { store, observed })
}
