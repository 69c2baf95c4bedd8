//! The gateway's settings: defaults, then a TOML file, then `REPLYWAY_…` variables.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use replyway_shared::settings::{
    InvalidSetting, KafkaSettings, LogSettings, RedisSettings, is_valid_topic,
};

use crate::routes::{RouteConfig, RouteTable};

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// This node's id (its notification channel); generated when unset, so
    /// replicas need no per-instance configuration.
    pub node_id: Option<String>,
    /// Bound on requests waiting for a reply on this node; past it, `503`.
    pub max_waiting: usize,
    /// Longest `Prefer: wait` honoured on `GET /v1/replies/{id}`.
    #[serde(with = "humantime_serde")]
    pub max_poll_wait: Duration,
    /// Longest wait for the broker to acknowledge a command; past it the request
    /// is answered `503` and its pending record removed.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Topic that services reply to (`reply-to` of every command).
    pub reply_topic: String,
    /// Redis.
    pub redis: RedisSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
    /// The routes.
    pub routes: Vec<RouteConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            node_id: None,
            max_waiting: 10_000,
            max_poll_wait: Duration::from_secs(60),
            produce_timeout: Duration::from_secs(5),
            reply_topic: "replyway.replies".into(),
            redis: RedisSettings::default(),
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
            routes: Vec::new(),
        }
    }
}

impl Settings {
    /// Checks every setting and builds the route table.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<RouteTable, InvalidSetting> {
        self.redis.validate()?;
        self.kafka.validate()?;
        if !is_valid_topic(&self.reply_topic) {
            return Err(InvalidSetting::new(
                "reply_topic",
                "not a legal Kafka topic name",
            ));
        }
        if let Some(node) = &self.node_id
            && !replyway_shared::record::is_valid_correlation_id(node)
        {
            return Err(InvalidSetting::new(
                "node_id",
                "must be 1-128 characters of [A-Za-z0-9._:-]",
            ));
        }
        if self.max_waiting == 0 {
            return Err(InvalidSetting::new("max_waiting", "must be at least 1"));
        }
        if self.max_poll_wait >= self.redis.ttl {
            return Err(InvalidSetting::new(
                "max_poll_wait",
                "must be shorter than redis.ttl: a reply is kept longer than anyone waits",
            ));
        }
        if self.produce_timeout.is_zero() {
            return Err(InvalidSetting::new(
                "produce_timeout",
                "must be more than 0",
            ));
        }
        let routes = RouteTable::new(&self.routes)?;
        for (i, route) in routes.routes().iter().enumerate() {
            if route.timeout >= self.redis.ttl {
                return Err(InvalidSetting::new(
                    format!("routes[{i}].timeout"),
                    "must be shorter than redis.ttl: a reply is kept longer than anyone waits",
                ));
            }
        }
        Ok(routes)
    }
}
