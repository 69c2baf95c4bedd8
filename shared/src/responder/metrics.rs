//! The Responder's metrics: its [`ResponderStats`] read at scrape time, for a
//! service's admin port ([`crate::admin`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `replyway_responder_replied_total` | counter | |
//! | `replyway_responder_expired_total` | counter | |
//! | `replyway_responder_malformed_total` | counter | |
//! | `replyway_responder_failed_total` | counter | |
//! | `replyway_responder_cancelled_total` | counter | |
//! | `replyway_responder_interrupted_total` | counter | |
//! | `replyway_responder_running` | gauge | |
//! | `replyway_responder_queued` | gauge | `lane` (0 the highest) |
//!
//! The `lane` label is bounded by the lanes the service was built with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::registry::Registry;

use crate::admin::{Collector, counter, gauge, gauge_family};

use super::ResponderStats;

/// Prefix of the Responder's metric names.
pub const PREFIX: &str = "replyway_responder";

/// A [`Collector`] of a Responder's counters (see the module docs).
#[derive(Debug, Clone)]
pub struct ResponderMetrics {
    stats: Arc<ResponderStats>,
}

/// The collector of `stats` ([`Responder::stats`](super::Responder::stats)),
/// to register in a registry with the prefix [`PREFIX`].
pub fn collector(stats: Arc<ResponderStats>) -> ResponderMetrics {
    ResponderMetrics { stats }
}

/// A registry holding only the Responder's metrics, for a service whose admin
/// port shows nothing else: `admin::router(Arc::new(registry(stats)))`.
pub fn registry(stats: Arc<ResponderStats>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(collector(stats)));
    registry
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Lane {
    lane: usize,
}

impl Collector for ResponderMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        let counters = [
            (
                "replied",
                "Commands answered (handler failures answered 500 included).",
                &s.replied,
            ),
            (
                "expired",
                "Commands skipped because their deadline had passed before they started.",
                &s.expired,
            ),
            (
                "malformed",
                "Records skipped because they are not commands (no correlation id or reply-to).",
                &s.malformed,
            ),
            ("failed", "Handler failures answered 500.", &s.failed),
            (
                "cancelled",
                "Commands cancelled while queued: never handled, not answered.",
                &s.cancelled,
            ),
            (
                "interrupted",
                "Commands whose handler stopped on their cancellation: not answered.",
                &s.interrupted,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut encoder, name, help, read(value))?;
        }
        gauge(
            &mut encoder,
            "running",
            "Commands being handled (or their replies produced) now.",
            i64::try_from(s.running()).unwrap_or(i64::MAX),
        )?;
        let queued: Vec<(Lane, i64)> = s
            .queued()
            .into_iter()
            .enumerate()
            .map(|(lane, n)| (Lane { lane }, i64::try_from(n).unwrap_or(i64::MAX)))
            .collect();
        gauge_family(
            &mut encoder,
            "queued",
            "Commands read and waiting to start, per lane (0 the highest).",
            &queued,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_and_each_lanes_queue_is_exported() {
        let stats = Arc::new(ResponderStats::for_lanes(2));
        stats.cancelled.fetch_add(3, Ordering::Relaxed);
        stats.interrupted.fetch_add(1, Ordering::Relaxed);
        stats.set_queued(1, 7);
        let text = crate::admin::render(&registry(Arc::clone(&stats)));
        for line in [
            "replyway_responder_replied_total 0",
            "replyway_responder_expired_total 0",
            "replyway_responder_malformed_total 0",
            "replyway_responder_failed_total 0",
            "replyway_responder_cancelled_total 3",
            "replyway_responder_interrupted_total 1",
            "replyway_responder_running 0",
            r#"replyway_responder_queued{lane="0"} 0"#,
            r#"replyway_responder_queued{lane="1"} 7"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
