//! The echo demo service, built on the [`Responder`]: it replies with the
//! request's body and content type. If the body is a JSON object with
//! `"status": N` it replies with that status; with `"sleep_ms": N` it waits that
//! long first (at most [`MAX_SLEEP`]), and stops without a reply when the
//! command is cancelled meanwhile; with `"parts": N` (and `"part_ms": M`) it
//! streams its reply in N parts, M ms apart. That makes timeouts, cancellation and status
//! mapping visible to a new user.
//!
//! With `lanes` it serves its topics in priority lanes (see
//! [`replyway_shared::responder`]); with `admin_listen` it serves `/healthz`
//! and `/metrics` (the Responder's counters) on an admin port.
//!
//! With `transactional_id_prefix` it answers exactly once, with a
//! [`TransactionalResponder`] whose `transactional.id` is
//! `<prefix>-<instance>`; with `events_topic` too, every echoed command also
//! produces one event there (key and `correlation-id`: the command's id,
//! value: its body), in the reply's transaction.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use replyway_shared::admin::{self, AdminServer};
use replyway_shared::responder::transactional::{self, Answer, Event};
use replyway_shared::responder::{
    self, Cancelled, DEFAULT_LOWER_LANE_SHARE, DEFAULT_MAX_QUEUED, HandlerError, Responder,
    TransactionalResponder,
};
use replyway_shared::settings::{InvalidSetting, KafkaSettings, LogSettings, is_valid_topic};
use replyway_shared::{Reply, Request};

/// Longest sleep the service honours.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The echo service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Request topics served (in one lane; ignored when `lanes` is set).
    pub topics: Vec<String>,
    /// Priority lanes, highest first, each a list of topics; when not empty
    /// it replaces `topics`.
    pub lanes: Vec<Vec<String>>,
    /// Share of the starts that go to lower lanes while a higher one is
    /// backlogged: `0 < share <= 0.5`.
    pub lower_lane_share: f64,
    /// Commands read ahead per lane; at the bound the lane is paused.
    pub max_queued: usize,
    /// Consumer group of every echo replica.
    pub group_id: String,
    /// Most commands handled at once.
    pub max_in_flight: usize,
    /// Admin port (`/healthz`, `/metrics`), e.g. `127.0.0.1:9093`; empty:
    /// none.
    pub admin_listen: String,
    /// Answer exactly once, in Kafka transactions, with `transactional.id`
    /// `<prefix>-<instance>`; unset: at least once.
    pub transactional_id_prefix: Option<String>,
    /// This instance's id, the same across its restarts (a restart fences
    /// the previous run); unset: the host name.
    pub instance: Option<String>,
    /// Topic of one event per echoed command, in the reply's transaction
    /// (needs `transactional_id_prefix`); unset: no events.
    pub events_topic: Option<String>,
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
            lanes: Vec::new(),
            lower_lane_share: DEFAULT_LOWER_LANE_SHARE,
            max_queued: DEFAULT_MAX_QUEUED,
            group_id: "replyway-echo".into(),
            max_in_flight: 1000,
            admin_listen: String::new(),
            transactional_id_prefix: None,
            instance: None,
            events_topic: None,
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl Settings {
    /// The lanes served, highest first: `lanes`, or `topics` as one lane.
    pub fn served_lanes(&self) -> Vec<Vec<String>> {
        if self.lanes.is_empty() {
            vec![self.topics.clone()]
        } else {
            self.lanes.clone()
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let setting = if self.lanes.is_empty() {
            "topics"
        } else {
            "lanes"
        };
        let lanes = self.served_lanes();
        if lanes.iter().any(Vec::is_empty) {
            return Err(InvalidSetting::new(
                setting,
                "every lane must name at least one topic",
            ));
        }
        if let Some(bad) = lanes.iter().flatten().find(|t| !is_valid_topic(t)) {
            return Err(InvalidSetting::new(
                setting,
                format!("{bad:?} is not a legal Kafka topic name"),
            ));
        }
        if !responder::valid_lower_lane_share(self.lower_lane_share) {
            return Err(InvalidSetting::new(
                "lower_lane_share",
                format!(
                    "must be more than 0 and at most 0.5, got {}",
                    self.lower_lane_share
                ),
            ));
        }
        if self.max_queued == 0 {
            return Err(InvalidSetting::new("max_queued", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(InvalidSetting::new("max_in_flight", "must be at least 1"));
        }
        if self.group_id.trim().is_empty() {
            return Err(InvalidSetting::new("group_id", "must not be empty"));
        }
        self.validate_transactions()?;
        self.kafka.validate()
    }

    /// Checks the settings of the transactional mode.
    fn validate_transactions(&self) -> Result<(), InvalidSetting> {
        let is_id_part = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        let Some(prefix) = &self.transactional_id_prefix else {
            if self.events_topic.is_some() {
                return Err(InvalidSetting::new(
                    "events_topic",
                    "needs transactional_id_prefix: events are committed with the replies",
                ));
            }
            return Ok(());
        };
        if !is_id_part(prefix) {
            return Err(InvalidSetting::new(
                "transactional_id_prefix",
                "must be 1-200 characters of [A-Za-z0-9._-]",
            ));
        }
        if !self.lanes.is_empty() {
            return Err(InvalidSetting::new(
                "lanes",
                "the transactional mode serves its topics in one lane: set topics instead",
            ));
        }
        if !is_id_part(&self.instance_id()) {
            return Err(InvalidSetting::new(
                "instance",
                "must be 1-200 characters of [A-Za-z0-9._-] (unset: the host name, which is not)",
            ));
        }
        if let Some(topic) = &self.events_topic
            && !is_valid_topic(topic)
        {
            return Err(InvalidSetting::new(
                "events_topic",
                format!("{topic:?} is not a legal Kafka topic name"),
            ));
        }
        Ok(())
    }

    /// This instance's id: `instance`, or the host name.
    pub fn instance_id(&self) -> String {
        self.instance.clone().unwrap_or_else(host_name)
    }

    /// The `transactional.id` of this instance, in the transactional mode.
    pub fn transactional_id(&self) -> Option<String> {
        let prefix = self.transactional_id_prefix.as_deref()?;
        Some(transactional::transactional_id(prefix, &self.instance_id()))
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`); empty when
/// neither says.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Controls {
    status: Option<u16>,
    sleep_ms: Option<u64>,
    /// Answer in this many parts (a streamed reply), each
    /// `{"part": i, "of": n, "tag": …}`.
    parts: Option<u32>,
    /// Pause before each part (at most 1 s).
    part_ms: Option<u64>,
    tag: Option<serde_json::Value>,
}

/// Most parts the service streams.
pub const MAX_PARTS: u32 = replyway_shared::record::MAX_PART + 1;

/// Answers one command.
///
/// # Errors
/// [`Cancelled`] when the command is cancelled while it sleeps; otherwise
/// never: a body that asks for an impossible status gets a `400` reply.
pub async fn handle(request: Request) -> Result<Reply, HandlerError> {
    let controls = serde_json::from_slice::<Controls>(&request.body).ok();
    let mut status = 200;
    if let Some(c) = controls {
        if let Some(ms) = c.sleep_ms {
            let sleep = tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLEEP));
            tokio::select! {
                () = sleep => {}
                () = request.cancelled.cancelled() => return Err(Cancelled.into()),
            }
        }
        if let Some(s) = c.status {
            if !(200..=599).contains(&s) {
                return Ok(Reply::problem(400, "Bad Request", "status must be 200-599"));
            }
            status = s;
        }
        if let Some(n) = c.parts {
            if !(1..=MAX_PARTS).contains(&n) {
                let detail = format!("parts must be 1-{MAX_PARTS}");
                return Ok(Reply::problem(400, "Bad Request", &detail));
            }
            let pause = Duration::from_millis(c.part_ms.unwrap_or(0)).min(Duration::from_secs(1));
            let part = |i: u32| {
                let body = serde_json::json!({ "part": i, "of": n, "tag": c.tag });
                Reply::with_body(status, "application/json", body.to_string())
            };
            for i in 0..n - 1 {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = request.cancelled.cancelled() => return Err(Cancelled.into()),
                }
                request.parts.send(part(i)).await?;
            }
            tokio::time::sleep(pause).await;
            return Ok(part(n - 1));
        }
    }
    let content_type = request
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok(Reply::with_body(status, content_type, request.body)
        .header("x-echo-path", request.path.unwrap_or_default()))
}

/// Answers one command as [`handle`] does, and, with `events_topic`, adds
/// one event there: key and `correlation-id` the command's id, value its
/// body.
///
/// # Errors
/// As [`handle`].
pub async fn handle_with_event(
    request: Request,
    events_topic: Option<Arc<str>>,
) -> Result<Answer, HandlerError> {
    let event = events_topic.map(|topic| {
        Event::new(topic.as_ref(), request.body.clone())
            .key(request.correlation_id.clone())
            .header(
                replyway_shared::record::header::CORRELATION_ID,
                request.correlation_id.clone(),
            )
    });
    let reply = handle(request).await?;
    Ok(Answer::new(reply, event.into_iter().collect()))
}

/// Serves the echo topics until `shutdown`, binding `admin_listen` itself.
///
/// # Errors
/// When a setting is invalid, the admin address cannot be bound, the Kafka
/// clients cannot be created or the final commit fails.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    settings.validate()?;
    let admin = AdminServer::bind(&settings.admin_listen).await?;
    run_with_admin(settings, admin, shutdown).await
}

/// Serves the echo topics until `shutdown`, with the admin port (`/healthz`,
/// `/metrics`) on `admin` (none when `None`; `admin_listen` is not read).
///
/// # Errors
/// As [`run`].
pub async fn run_with_admin(
    settings: &Settings,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.validate()?;
    if let Some(transactional_id) = settings.transactional_id() {
        return run_transactional(settings, &transactional_id, admin, shutdown).await;
    }
    let lanes = settings.served_lanes();
    let lanes: Vec<Vec<&str>> = lanes
        .iter()
        .map(|lane| lane.iter().map(String::as_str).collect())
        .collect();
    let lanes: Vec<&[&str]> = lanes.iter().map(Vec::as_slice).collect();
    let responder = Responder::with_lanes(
        &settings.kafka,
        &settings.group_id,
        &lanes,
        settings.max_in_flight,
    )?
    .with_max_queued(settings.max_queued)
    .with_lower_lane_share(settings.lower_lane_share);
    let registry = responder::metrics::registry(responder.stats());
    let admin = AdminServer::start(admin, admin::router(Arc::new(registry)));
    tracing::info!(lanes = ?settings.served_lanes(), group_id = %settings.group_id, "echo service started");
    let served = responder.run(handle, shutdown).await;
    admin.stop().await;
    served?;
    tracing::info!("echo service stopped");
    Ok(())
}

/// Serves the echo topics exactly once with `transactional_id`.
async fn run_transactional(
    settings: &Settings,
    transactional_id: &str,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let responder = TransactionalResponder::start(
        &settings.kafka,
        &settings.group_id,
        &topics,
        transactional_id,
    )
    .await?;
    let registry = transactional::metrics::registry(responder.stats());
    let admin = AdminServer::start(admin, admin::router(Arc::new(registry)));
    tracing::info!(
        topics = ?settings.topics,
        group_id = %settings.group_id,
        transactional_id,
        events_topic = settings.events_topic.as_deref().unwrap_or_default(),
        "echo service started"
    );
    let events: Option<Arc<str>> = settings.events_topic.as_deref().map(Arc::from);
    let served = responder
        .run(
            |request| handle_with_event(request, events.clone()),
            shutdown,
        )
        .await;
    admin.stop().await;
    served?;
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

    #[tokio::test(start_paused = true)]
    async fn a_cancellation_stops_the_sleep_without_a_reply() {
        let command = request(r#"{"sleep_ms":60000}"#);
        let cancel = command.cancelled.clone();
        let started = tokio::time::Instant::now();
        let handled = tokio::spawn(handle(command));
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        let error = handled.await.unwrap().expect_err("cancelled, not answered");
        assert!(error.downcast_ref::<Cancelled>().is_some(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn lanes_replace_topics_and_bad_settings_are_named() {
        let s = Settings::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.served_lanes(), [["echo.requests"]]);
        let lanes = Settings {
            lanes: vec![vec!["urgent".into()], vec!["bulk".into(), "more".into()]],
            ..Settings::default()
        };
        assert!(lanes.validate().is_ok());
        assert_eq!(lanes.served_lanes(), lanes.lanes);
        let bad = |change: fn(&mut Settings)| {
            let mut s = Settings::default();
            change(&mut s);
            s.validate().expect_err("invalid").setting
        };
        assert_eq!(bad(|s| s.lower_lane_share = 0.0), "lower_lane_share");
        assert_eq!(bad(|s| s.lower_lane_share = 0.6), "lower_lane_share");
        assert_eq!(bad(|s| s.max_queued = 0), "max_queued");
        assert_eq!(bad(|s| s.lanes = vec![vec![]]), "lanes");
        assert_eq!(bad(|s| s.topics = vec!["a b".into()]), "topics");
        assert_eq!(bad(|s| s.topics.clear()), "topics");
        assert_eq!(
            bad(|s| s.events_topic = Some("events".into())),
            "events_topic"
        );
        assert_eq!(
            bad(|s| s.transactional_id_prefix = Some("a b".into())),
            "transactional_id_prefix"
        );
        let transactional = |change: fn(&mut Settings)| {
            let mut s = Settings {
                transactional_id_prefix: Some("echo".into()),
                instance: Some("pod-0".into()),
                ..Settings::default()
            };
            change(&mut s);
            s.validate().map_err(|e| e.setting)
        };
        assert_eq!(transactional(|_| {}), Ok(()));
        assert_eq!(
            transactional(|s| s.instance = Some(String::new())),
            Err("instance".into())
        );
        assert_eq!(
            transactional(|s| s.lanes = vec![vec!["a".into()]]),
            Err("lanes".into())
        );
        assert_eq!(
            transactional(|s| s.events_topic = Some("a/b".into())),
            Err("events_topic".into())
        );
    }

    #[test]
    fn the_transactional_id_is_the_prefix_and_the_instance() {
        let s = Settings {
            transactional_id_prefix: Some("echo".into()),
            instance: Some("pod-0".into()),
            ..Settings::default()
        };
        assert_eq!(s.transactional_id().as_deref(), Some("echo-pod-0"));
        assert_eq!(Settings::default().transactional_id(), None);
        let unnamed = Settings {
            instance: None,
            ..s
        };
        assert_eq!(unnamed.instance_id(), host_name());
    }

    #[tokio::test]
    async fn an_echoed_command_carries_one_event_with_its_id() {
        let mut command = request(r#"{"x":1}"#);
        command.correlation_id = "id-7".into();
        let answer = handle_with_event(command, Some("echo.events".into()))
            .await
            .unwrap();
        assert_eq!(&answer.reply.body[..], br#"{"x":1}"#);
        let [event] = answer.events.as_slice() else {
            panic!("one event: {:?}", answer.events)
        };
        assert_eq!(event.topic, "echo.events");
        assert_eq!(event.key.as_deref(), Some(&b"id-7"[..]));
        assert_eq!(event.headers, [("correlation-id".into(), "id-7".into())]);
        assert_eq!(&event.payload[..], br#"{"x":1}"#);
        let none = handle_with_event(request("x"), None).await.unwrap();
        assert!(none.events.is_empty());
    }
}
