//! The relay's metrics and readiness, served on its admin port
//! (`admin_listen`): what it published, whether it streams the outbox now,
//! how far it acknowledged, and what waits for the broker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::admin::{Collector, counter, gauge};

use super::relay::RelayStats;

#[derive(Debug)]
struct Live(Arc<RelayStats>);

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let signed = |c: &std::sync::atomic::AtomicU64| i64::try_from(read(c)).unwrap_or(i64::MAX);
        counter(
            &mut encoder,
            "published_rows",
            "Outbox rows the broker acknowledged (a row published again after a crash counts again).",
            read(&s.published),
        )?;
        counter(
            &mut encoder,
            "batches",
            "Batches published, deleted from the outbox and acknowledged to the slot.",
            read(&s.batches),
        )?;
        counter(
            &mut encoder,
            "failed_publish_attempts",
            "Attempts to publish a batch that the broker did not acknowledge (each repeated whole).",
            read(&s.failed_attempts),
        )?;
        counter(
            &mut encoder,
            "session_failures",
            "Replication sessions that failed (database restarted, connection lost) and were started again.",
            read(&s.session_failures),
        )?;
        gauge(
            &mut encoder,
            "streaming",
            "1 while the relay streams the outbox from its replication slot, else 0.",
            i64::from(s.streaming.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut encoder,
            "pending_rows",
            "Committed outbox rows read from the stream and not yet acknowledged by the broker.",
            signed(&s.pending_rows),
        )?;
        gauge(
            &mut encoder,
            "acknowledged_lsn",
            "The commit position (LSN, as a number) after the last published batch, acknowledged to the slot every ack_interval; 0 before the first.",
            signed(&s.acknowledged_lsn),
        )
    }
}

/// The readiness check: `200` while the relay streams the outbox, else `503`.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RelayStats>);

impl Readiness {
    /// `200` when ready, else `503`, with what was checked.
    pub fn check(&self) -> Response {
        let streaming = self.0.streaming.load(Ordering::Relaxed);
        let status = if streaming {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            Json(serde_json::json!({ "ready": streaming, "streaming": streaming })),
        )
            .into_response()
    }
}

/// The registry under `replyway_outbox_relay_` and the readiness check.
pub fn register(stats: Arc<RelayStats>) -> (Registry, Readiness) {
    let mut registry = Registry::with_prefix("replyway_outbox_relay");
    registry.register_collector(Box::new(Live(Arc::clone(&stats))));
    (registry, Readiness(stats))
}
