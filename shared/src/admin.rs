//! The admin port of the binaries: `GET /healthz`, `GET /readyz` and
//! `GET /metrics` (Prometheus / OpenMetrics text), apart from the API port so
//! that metrics are not exposed to API clients.
//!
//! Counters that already exist as atomics are read at scrape time by small
//! [`Collector`]s (see [`counter`], [`gauge`]); nothing is counted twice.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use prometheus_client::collector::Collector;

/// Media type of the metrics text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes a counter read at scrape time (`name` without `_total`).
///
/// # Errors
/// When the encoder fails (never for text).
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes a gauge read at scrape time.
///
/// # Errors
/// When the encoder fails (never for text).
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes a family of gauges (one per label set) read at scrape time.
///
/// # Errors
/// When the encoder fails (never for text).
pub fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(L, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    text
}

/// `/healthz` and `/metrics`; a binary adds its own `/readyz`.
pub fn router<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move { metrics_response(&registry) }
            }),
        )
}

/// [`router`] with `/readyz` answered by `check` (a binary's own readiness:
/// `200` when ready, else `503`).
pub fn router_with_readiness<F, Fut>(registry: Arc<Registry>, check: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    router(registry).route("/readyz", get(check))
}

fn metrics_response(registry: &Registry) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        render(registry),
    )
        .into_response()
}

/// The admin port while it runs (nothing when its address is empty).
#[derive(Debug)]
pub struct AdminServer {
    running: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

impl AdminServer {
    /// Serves `router` on `listener` (bound by the binary's `main`); `None`
    /// serves nothing (an empty `admin_listen`).
    pub fn start(listener: Option<TcpListener>, router: Router) -> Self {
        let Some(listener) = listener else {
            return Self { running: None };
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(admin = %addr, "admin port: /healthz /readyz /metrics");
        }
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { cancelled.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "admin server failed");
            }
        });
        Self {
            running: Some((task, stop)),
        }
    }

    /// Binds `listen` for [`AdminServer::start`]; an empty address binds
    /// nothing.
    ///
    /// # Errors
    /// When the address cannot be bound (naming it).
    pub async fn bind(listen: &str) -> anyhow::Result<Option<TcpListener>> {
        use anyhow::Context;
        if listen.is_empty() {
            return Ok(None);
        }
        TcpListener::bind(listen)
            .await
            .map(Some)
            .with_context(|| format!("binding the admin address {listen}"))
    }

    /// Stops serving and waits until it has.
    pub async fn stop(self) {
        if let Some((task, stop)) = self.running {
            stop.cancel();
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Partition {
        topic: String,
        partition: i32,
    }

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            counter(&mut encoder, "things", "Things done.", 7)?;
            gauge(&mut encoder, "waiting", "Waiting now.", 3)?;
            let lag = [(
                Partition {
                    topic: "t".into(),
                    partition: 2,
                },
                5,
            )];
            gauge_family(&mut encoder, "lag", "Lag.", &lag)
        }
    }

    #[test]
    fn scrape_time_metrics_are_encoded() {
        let mut registry = Registry::with_prefix("replyway_test");
        registry.register_collector(Box::new(Fixed));
        let text = render(&registry);
        assert!(text.contains("replyway_test_things_total 7"), "{text}");
        assert!(text.contains("replyway_test_waiting 3"), "{text}");
        assert!(
            text.contains(r#"replyway_test_lag{topic="t",partition="2"} 5"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
