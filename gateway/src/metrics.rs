//! The gateway's metrics, served on the admin port at `/metrics`.
//!
//! Labels stay bounded: `route` is a configured route's name (or `-` for a
//! request that matched none, `replies` for `GET /v1/replies/{id}`), `status` an
//! HTTP status code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use replyway_shared::admin::{Collector, counter, gauge, gauge_family};
use replyway_shared::waiters::Waiters;

/// Labels of a request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// Route name.
    pub route: String,
    /// HTTP status answered.
    pub status: u16,
}

/// Labels of per-route metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: String,
}

/// Labels of a cancellation count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CancelLabel {
    /// Route name.
    pub route: String,
    /// `disconnect` (the client went away) or `delete` (`DELETE /v1/replies/{id}`).
    pub reason: &'static str,
}

/// Labels of a lane count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// Route name.
    pub route: String,
    /// Lane name.
    pub lane: String,
}

/// Labels of a callback count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened (a fixed set of words per metric).
    pub outcome: &'static str,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What the handlers count.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Answered requests by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// Time from request to answer, by route.
    pub latency: HistogramFamily,
    /// Synchronous requests answered `504` (no reply in time), by route.
    pub timeouts: Family<RouteLabel, Counter>,
    /// Commands cancelled (cancel record produced), by route and reason.
    pub cancellations: Family<CancelLabel, Counter>,
    /// Replies that did not match the route's `reply_schema`, by route.
    pub invalid_replies: Family<RouteLabel, Counter>,
    /// Commands produced per lane, by route and lane.
    pub lane_commands: Family<LaneLabel, Counter>,
    /// Callback deliveries by outcome (`delivered`, `retried`, `failed`, `dropped`).
    pub callback_deliveries: Family<OutcomeLabel, Counter>,
    /// Callback attempts by result (`2xx`, `3xx`, `4xx`, `5xx`, `timeout`, `refused`, `error`).
    pub callback_attempts: Family<OutcomeLabel, Counter>,
    /// Failed Redis operations.
    pub redis_errors: Counter,
    /// Commands Kafka did not take or acknowledge.
    pub kafka_errors: Counter,
}

/// Values read at scrape time.
#[derive(Debug)]
struct Live {
    waiters: Arc<Waiters>,
    subscription_live: Arc<AtomicBool>,
    late_replies: Arc<AtomicU64>,
    responders: Arc<crate::responders::Responders>,
}

/// Labels of a responder group's gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "waiting_requests",
            "Places taken among the requests waiting on this node (bounded by max_waiting): a synchronous request from admission until answered, a long-poll while it waits.",
            i64::try_from(self.waiters.len()).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "redis_subscription_up",
            "1 while this node's Redis subscription is live.",
            i64::from(self.subscription_live.load(Ordering::Relaxed)),
        )?;
        let members: Vec<(GroupLabel, i64)> = self
            .responders
            .members()
            .map(|(group, n)| {
                (
                    GroupLabel {
                        group: group.to_owned(),
                    },
                    n,
                )
            })
            .collect();
        gauge_family(
            &mut encoder,
            "responder_members",
            "Active members of each route's responder_group as Kafka last reported them (-1: not known yet or Kafka could not be asked); 0 answers the group's routes 503 no-responders.",
            &members,
        )?;
        counter(
            &mut encoder,
            "late_replies",
            "Replies that arrived after every request waiting for them on this node had gone (timed out or disconnected).",
            self.late_replies.load(Ordering::Relaxed),
        )
    }
}

impl Metrics {
    /// Registers the metrics under `replyway_gateway_`, with the values read at
    /// scrape time.
    pub fn register(
        waiters: Arc<Waiters>,
        subscription_live: Arc<AtomicBool>,
        late_replies: Arc<AtomicU64>,
        responders: Arc<crate::responders::Responders>,
    ) -> (Self, Registry) {
        let mut registry = Registry::with_prefix("replyway_gateway");
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            timeouts: Family::default(),
            cancellations: Family::default(),
            invalid_replies: Family::default(),
            lane_commands: Family::default(),
            callback_deliveries: Family::default(),
            callback_attempts: Family::default(),
            redis_errors: Counter::default(),
            kafka_errors: Counter::default(),
        };
        registry.register(
            "requests",
            "Answered requests by route and HTTP status.",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to answering it, by route.",
            metrics.latency.clone(),
        );
        registry.register(
            "timeouts",
            "Synchronous requests answered 504 because no reply came in time, by route.",
            metrics.timeouts.clone(),
        );
        registry.register(
            "cancellations",
            "Commands cancelled (their cancel record produced), by route and reason: disconnect (the client went away before the reply) or delete (DELETE /v1/replies/{id}).",
            metrics.cancellations.clone(),
        );
        registry.register(
            "invalid_replies",
            "2xx replies that did not match the route's reply_schema (answered 502 invalid-reply), by route.",
            metrics.invalid_replies.clone(),
        );
        registry.register(
            "lane_commands",
            "Commands produced to each lane of routes with lanes, by route and lane.",
            metrics.lane_commands.clone(),
        );
        registry.register(
            "callback_deliveries",
            "Callback deliveries ended or put off, by outcome: delivered (the receiver answered 2xx), retried (an attempt failed, a retry is due later), failed (the schedule ran out, or the delivery cannot be made), dropped (its callback record was gone).",
            metrics.callback_deliveries.clone(),
        );
        registry.register(
            "callback_attempts",
            "Callback attempts by result: 2xx, 3xx (redirects are not followed), 4xx, 5xx, timeout, refused (the URL's address is not allowed) or error (no answer).",
            metrics.callback_attempts.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis operations that failed or timed out.",
            metrics.redis_errors.clone(),
        );
        registry.register(
            "kafka_errors",
            "Commands the broker did not take or did not acknowledge in time.",
            metrics.kafka_errors.clone(),
        );
        registry.register_collector(Box::new(Live {
            waiters,
            subscription_live,
            late_replies,
            responders,
        }));
        (metrics, registry)
    }

    /// Counts one answered request.
    pub fn answered(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(seconds);
    }
}
