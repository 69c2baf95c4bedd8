//! The counters of a [`TransactionalResponder`](super::TransactionalResponder)
//! and their metrics, for a service's admin port ([`crate::admin`]), the way
//! [`responder::metrics`](crate::responder::metrics) exports the plain
//! Responder's. Besides the Responder's own (`replied`, `expired`,
//! `malformed`, `failed`, `cancelled`, …; `replied` counts only replies of
//! committed transactions):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `replyway_responder_transactions_committed_total` | counter | |
//! | `replyway_responder_transactions_aborted_total` | counter | |
//! | `replyway_responder_transaction_commands_total` | counter | |
//! | `replyway_responder_transaction_events_total` | counter | |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::admin::{Collector, counter};
use crate::responder::ResponderStats;
use crate::responder::metrics::{self as responder_metrics, PREFIX};

/// Counters of what a transactional Responder did, readable while it runs.
#[derive(Debug)]
pub struct TransactionalStats {
    /// Transactions committed.
    pub committed: AtomicU64,
    /// Transactions aborted (each one's batch is read and handled again).
    pub aborted: AtomicU64,
    /// Commands handled in committed transactions (records skipped as
    /// expired, cancelled or malformed are counted by
    /// [`TransactionalStats::responder`]).
    pub commands: AtomicU64,
    /// Events of committed transactions.
    pub events: AtomicU64,
    responder: Arc<ResponderStats>,
}

impl Default for TransactionalStats {
    fn default() -> Self {
        Self {
            committed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            events: AtomicU64::new(0),
            responder: Arc::new(ResponderStats::for_lanes(1)),
        }
    }
}

impl TransactionalStats {
    /// The counters it shares with the plain Responder (`replied` counts
    /// the replies of committed transactions only).
    pub fn responder(&self) -> Arc<ResponderStats> {
        Arc::clone(&self.responder)
    }
}

/// A [`Collector`] of a transactional Responder's own counters (see the
/// module docs).
#[derive(Debug, Clone)]
pub struct TransactionalMetrics {
    stats: Arc<TransactionalStats>,
}

/// The collector of `stats`' own counters, to register in a registry with
/// the prefix [`PREFIX`] beside [`responder_metrics::collector`] of
/// [`TransactionalStats::responder`].
pub fn collector(stats: Arc<TransactionalStats>) -> TransactionalMetrics {
    TransactionalMetrics { stats }
}

/// A registry holding the transactional Responder's metrics and the
/// Responder's, for a service whose admin port shows nothing else.
pub fn registry(stats: Arc<TransactionalStats>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(responder_metrics::collector(stats.responder())));
    registry.register_collector(Box::new(collector(stats)));
    registry
}

impl Collector for TransactionalMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let counters = [
            (
                "transactions_committed",
                "Kafka transactions committed (replies, events and command offsets of a batch).",
                &s.committed,
            ),
            (
                "transactions_aborted",
                "Kafka transactions aborted; their commands are read and handled again.",
                &s.aborted,
            ),
            (
                "transaction_commands",
                "Commands handled in committed transactions.",
                &s.commands,
            ),
            (
                "transaction_events",
                "Events of committed transactions.",
                &s.events,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transaction_counters_are_exported_beside_the_responders() {
        let stats = Arc::new(TransactionalStats::default());
        stats.committed.fetch_add(2, Ordering::Relaxed);
        stats.aborted.fetch_add(1, Ordering::Relaxed);
        stats.commands.fetch_add(7, Ordering::Relaxed);
        stats.events.fetch_add(5, Ordering::Relaxed);
        stats.responder().replied.fetch_add(6, Ordering::Relaxed);
        let text = crate::admin::render(&registry(Arc::clone(&stats)));
        for line in [
            "replyway_responder_transactions_committed_total 2",
            "replyway_responder_transactions_aborted_total 1",
            "replyway_responder_transaction_commands_total 7",
            "replyway_responder_transaction_events_total 5",
            "replyway_responder_replied_total 6",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
