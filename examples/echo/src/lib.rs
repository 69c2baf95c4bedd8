//! The echo demo service, built on the [`Responder`]: it replies with the
//! request's body and content type. If the body is a JSON object with
//! `"status": N` it replies with that status; with `"sleep_ms": N` it waits that
//! long first (at most [`MAX_SLEEP`]). That makes timeouts and status mapping
//! visible to a new user.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use replyway_shared::responder::{HandlerError, Responder};
use replyway_shared::settings::{KafkaSettings, LogSettings};
use replyway_shared::{Reply, Request};

/// Longest sleep the service honours.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The echo service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Request topics served.
    pub topics: Vec<String>,
    /// Consumer group of every echo replica.
    pub group_id: String,
    /// Most commands handled at once.
    pub max_in_flight: usize,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
}

impl replyway_shared::service::ServiceSettings for Settings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            topics: vec!["echo.requests".into()],
            group_id: "replyway-echo".into(),
            max_in_flight: 1000,
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
        }
    }
}

#[derive(Deserialize)]
struct Controls {
    status: Option<u16>,
    sleep_ms: Option<u64>,
}

/// Answers one command.
///
/// # Errors
/// Never: a body that asks for an impossible status gets a `400` reply.
pub async fn handle(request: Request) -> Result<Reply, HandlerError> {
    let controls = serde_json::from_slice::<Controls>(&request.body).ok();
    let mut status = 200;
    if let Some(c) = controls {
        if let Some(ms) = c.sleep_ms {
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLEEP)).await;
        }
        if let Some(s) = c.status {
            if !(200..=599).contains(&s) {
                return Ok(Reply::problem(400, "Bad Request", "status must be 200-599"));
            }
            status = s;
        }
    }
    let content_type = request
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok(Reply::with_body(status, content_type, request.body)
        .header("x-echo-path", request.path.unwrap_or_default()))
}

/// Serves the echo topics until `shutdown`.
///
/// # Errors
/// When the Kafka clients cannot be created or the final commit fails.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let responder = Responder::new(
        &settings.kafka,
        &settings.group_id,
        &topics,
        settings.max_in_flight,
    )?;
    tracing::info!(topics = ?settings.topics, group_id = %settings.group_id, "echo service started");
    responder.run(handle, shutdown).await?;
    tracing::info!("echo service stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Request {
        Request {
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec().into(),
            ..Request::default()
        }
    }

    #[tokio::test]
    async fn echoes_body_and_status() {
        let reply = handle(request(r#"{"status":409,"x":1}"#)).await.unwrap();
        assert_eq!(reply.status, 409);
        assert_eq!(&reply.body[..], br#"{"status":409,"x":1}"#);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        let reply = handle(request("plain")).await.unwrap();
        assert_eq!(reply.status, 200);
        let reply = handle(request(r#"{"status":42}"#)).await.unwrap();
        assert_eq!(reply.status, 400);
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_when_asked() {
        let started = tokio::time::Instant::now();
        handle(request(r#"{"sleep_ms":1500}"#)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1500));
    }
}
