//! The collector's settings: defaults, then a TOML file, then `REPLYWAY_…` variables.

use serde::{Deserialize, Serialize};

use replyway_shared::correlation::Signer;
use replyway_shared::settings::{
    InvalidSetting, KafkaSettings, LogSettings, RedisSettings, Secret, is_valid_topic,
};

/// Everything the collector is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Reply topics to consume.
    pub topics: Vec<String>,
    /// Consumer group shared by every collector replica.
    pub group_id: String,
    /// Address of the admin port (`/healthz`, `/readyz`, `/metrics`); empty: none.
    pub admin_listen: String,
    /// Most replies stored in one Redis round trip.
    pub batch_max: usize,
    /// Largest reply value accepted, in bytes; larger replies are skipped.
    pub max_reply_bytes: usize,
    /// Topic that malformed replies are sent to, with the reason in a header;
    /// unset: they are counted, logged and skipped.
    pub dead_letter_topic: Option<String>,
    /// The gateways' `correlation_secret`: replies whose id it did not sign are
    /// rejected (counted and dead-lettered as `unsigned_correlation_id`).
    #[serde(default)]
    pub correlation_secret: Option<Secret>,
    /// Redis.
    pub redis: RedisSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            topics: vec!["replyway.replies".into()],
            group_id: "replyway-collector".into(),
            admin_listen: "127.0.0.1:9091".into(),
            batch_max: 500,
            max_reply_bytes: 4 * 1024 * 1024,
            dead_letter_topic: None,
            correlation_secret: None,
            redis: RedisSettings::default(),
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl replyway_shared::service::ServiceSettings for Settings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

impl Settings {
    /// The id checker, when `correlation_secret` is set.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the secret is too short.
    pub fn signer(&self) -> Result<Option<Signer>, InvalidSetting> {
        Signer::from_setting(self.correlation_secret.as_ref())
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.redis.validate()?;
        self.kafka.validate()?;
        self.signer()?;
        if self.topics.is_empty() {
            return Err(InvalidSetting::new(
                "topics",
                "name at least one reply topic",
            ));
        }
        if let Some(t) = self.topics.iter().find(|t| !is_valid_topic(t)) {
            return Err(InvalidSetting::new(
                "topics",
                format!("{t:?} is not a legal Kafka topic name"),
            ));
        }
        if let Some(t) = &self.dead_letter_topic
            && (!is_valid_topic(t) || self.topics.contains(t))
        {
            return Err(InvalidSetting::new(
                "dead_letter_topic",
                "must be a legal Kafka topic name other than the reply topics",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(InvalidSetting::new("group_id", "must not be empty"));
        }
        if self.batch_max == 0 || self.batch_max > 10_000 {
            return Err(InvalidSetting::new("batch_max", "must be 1 to 10000"));
        }
        if self.max_reply_bytes == 0 {
            return Err(InvalidSetting::new(
                "max_reply_bytes",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let settings = Settings {
            correlation_secret: Some("correlation secret of 32 bytes or more".into()),
            redis: RedisSettings {
                url: "rediss://user:redis-password-0@redis:6380/0".into(),
                ..RedisSettings::default()
            },
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        for secret in ["redis-password-0", "correlation secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
