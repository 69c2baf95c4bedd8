//! `GET /healthz` (the process is alive) and `GET /readyz` (Redis answers, the
//! node's subscription is live and Kafka is reachable).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rdkafka::producer::Producer as _;

use crate::state::AppState;

/// How long readiness waits for the broker's metadata.
const KAFKA_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: `200` when every dependency answers, else `503`; the body
/// names each dependency's state.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let redis = state.node.store().ping().await.is_ok();
    let subscription = state.node.is_live();
    let producer = state.node.producer().clone();
    let kafka = tokio::task::spawn_blocking(move || {
        producer.client().fetch_metadata(None, KAFKA_CHECK).is_ok()
    })
    .await
    .unwrap_or(false);
    let ready = redis && subscription && kafka && !state.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "redis": redis,
        "subscription": subscription,
        "kafka": kafka,
    });
    (status, Json(body)).into_response()
}
