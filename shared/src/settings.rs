//! Settings shared by the binaries, and the layered loader: built-in defaults,
//! then an optional TOML file, then `REPLYWAY_…` environment variables (nested
//! keys joined by `__`, e.g. `REPLYWAY_REDIS__URL`).

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rdkafka::ClientConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod redis_settings;
pub use redis_settings::{MAX_MIN_REPLICAS, RedisMode, RedisSettings, SubscriptionClient};

/// Prefix of every environment variable that configures Replyway.
pub const ENV_PREFIX: &str = "REPLYWAY_";

/// Loads settings: `defaults`, then `file` (if given), then the environment.
///
/// The file is strict: an unknown key is an error. The environment is shared by
/// every Replyway binary (one env file for a whole deployment), so a variable
/// whose top-level section this binary does not have is ignored.
///
/// # Errors
/// A [`figment::Error`] naming the setting that is missing or malformed.
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
) -> Result<T, Box<figment::Error>> {
    let sections: Vec<String> = match serde_json::to_value(defaults) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    let env = Env::prefixed(ENV_PREFIX)
        .ignore(&["config"])
        .split("__")
        .filter(move |key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            sections.iter().any(|s| s.eq_ignore_ascii_case(top))
        });
    figment.merge(env).extract().map_err(Box::new)
}

/// Every setting of `defaults` with its default value and its environment
/// variable, one per line, for `--help` (generated, so it lists every key).
pub fn reference<T: Serialize>(defaults: &T) -> String {
    fn walk(prefix: &str, value: &serde_json::Value, lines: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&key, value, lines);
                }
            }
            serde_json::Value::Null => lines.push((prefix.to_owned(), "(unset)".into())),
            other => lines.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut lines = Vec::new();
    if let Ok(value) = serde_json::to_value(defaults) {
        walk("", &value, &mut lines);
    }
    let width = lines
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .max()
        .unwrap_or(0)
        + 4;
    let mut text = String::from(
        "Settings: built-in defaults, then the TOML file (--config), then environment\n\
         variables REPLYWAY_<KEY> with nested keys joined by __. An unknown or malformed\n\
         setting stops the program, naming it. Tables of librdkafka properties take\n\
         dotted keys: set them in the file, or as an inline table, e.g.\n\
         REPLYWAY_KAFKA__CONSUMER='{\"client.rack\"=\"eu-1a\"}'. docs/configuration.md\n\
         says what each setting means.\n\n",
    );
    for (key, value) in lines {
        let env = format!(
            "{ENV_PREFIX}{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
        let setting = format!("{key} = {value}");
        text.push_str(&format!("  {setting:<width$}{env}\n"));
    }
    text
}

/// Parses the command line of a binary whose settings are `defaults`: `--help`
/// ends with [`reference()`].
pub fn parse_args<A: clap::Parser, T: Serialize>(defaults: &T) -> A {
    let command = A::command()
        .after_help("--help lists every setting with its default and environment variable.")
        .after_long_help(reference(defaults));
    A::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

/// What a secret shows instead of itself.
const REDACTED: &str = "***";

/// A secret setting (a password, a signing key, a URL that may hold
/// credentials). `Debug` and `Display` print `***`, so a settings struct can
/// be logged or put in an error message without showing it;
/// [`Secret::expose`] is the one way to read it.
///
/// Serde reads and writes the plain string (`#[serde(transparent)]`): settings
/// are serialized only to seed the loader with the built-in defaults, to list
/// those under `--help`, and to hand a child process its settings file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{REDACTED:?}")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A setting that is out of bounds.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct InvalidSetting {
    /// The setting's path, e.g. `redis.prefix`.
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidSetting {
    /// A new error for `setting`.
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// How to reach Kafka. Any librdkafka property can be set for the producer and the
/// consumer (TLS, SASL, `linger.ms`, `group.protocol`, …); they override the
/// built-in defaults. `Debug` hides the values of properties that hold
/// secrets (see [`is_secret_property`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// librdkafka properties for every client (producer and consumer).
    pub common: BTreeMap<String, String>,
    /// librdkafka properties for the producer.
    pub producer: BTreeMap<String, String>,
    /// librdkafka properties for the consumer.
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            common: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka property holds a secret: `sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, `ssl.key.pem`, `ssl_key`,
/// `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config` and the like
/// (librdkafka's own "sensitive" properties, matched by name so that a newer
/// one is covered too).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "passphrase",
        "key.pem",
        "ssl_key",
        "oauthbearer.config",
    ]
    .iter()
    .any(|part| name.contains(part))
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Properties<'a>(&'a BTreeMap<String, String>);
        impl std::fmt::Debug for Properties<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(name, value)| {
                        let value = if is_secret_property(name) {
                            REDACTED
                        } else {
                            value.as_str()
                        };
                        (name, value)
                    }))
                    .finish()
            }
        }
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("common", &Properties(&self.common))
            .field("producer", &Properties(&self.producer))
            .field("consumer", &Properties(&self.consumer))
            .finish()
    }
}

impl KafkaSettings {
    fn base(&self, defaults: &[(&str, &str)], specific: &BTreeMap<String, String>) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in self.common.iter().chain(specific) {
            config.set(k, v);
        }
        config
    }

    /// Producer configuration: idempotent, no linger (latency first), bounded
    /// delivery time so an unreachable broker fails a request fast.
    pub fn producer_config(&self) -> ClientConfig {
        self.base(
            &[
                ("enable.idempotence", "true"),
                ("linger.ms", "0"),
                ("message.timeout.ms", "5000"),
                ("socket.keepalive.enable", "true"),
            ],
            &self.producer,
        )
    }

    /// Consumer configuration for `group`: offsets stored by the application only
    /// after a record's effect is durable, then committed in the background.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.base(
            &[
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
                ("session.timeout.ms", "10000"),
                // Only what a transaction committed: a reply (or command) of
                // an aborted transaction never reaches a client (librdkafka's
                // default too, written down so that it stays).
                ("isolation.level", "read_committed"),
            ],
            &self.consumer,
        );
        // With KIP-848's `consumer` protocol the broker owns the session and
        // heartbeat timing: librdkafka refuses these settings.
        if config.get("group.protocol") == Some("consumer") {
            for owned_by_broker in ["session.timeout.ms", "heartbeat.interval.ms"] {
                config.remove(owned_by_broker);
            }
        }
        config.set("group.id", group);
        config
    }

    /// Checks that the settings name a broker.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.brokers.trim().is_empty() {
            return Err(InvalidSetting::new(
                "kafka.brokers",
                "must name at least one broker",
            ));
        }
        Ok(())
    }
}

/// Whether `topic` is a legal Kafka topic name.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `replyway_gateway=debug,info`; `RUST_LOG` wins.
    pub filter: String,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// OTLP/HTTP (protobuf) endpoint that spans are exported to, e.g.
    /// `http://otel-collector:4318/v1/traces`; unset: no export (trace context
    /// is still propagated).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans; default: the binary's name.
    pub service_name: Option<String>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            json: false,
            otlp_endpoint: None,
            service_name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        name: String,
        redis: RedisSettings,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "name = \"from-file\"\n[redis]\nprefix = \"file\"\n",
            )?;
            jail.set_env("REPLYWAY_REDIS__PREFIX", "env");
            // Another binary's section: ignored, not an error.
            jail.set_env("REPLYWAY_ROUTES", "[]");
            let s: Sample = load(&Sample::default(), Some(Path::new("s.toml"))).map_err(|e| *e)?;
            assert_eq!(s.name, "from-file");
            assert_eq!(s.redis.prefix, "env");
            assert_eq!(s.redis.pool_size, RedisSettings::default().pool_size);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn unknown_file_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "[redis]\nprefx = \"typo\"\n")?;
            let e = load(&Sample::default(), Some(Path::new("s.toml"))).unwrap_err();
            assert!(e.to_string().contains("prefx"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn redis_password_is_hidden() {
        let s = RedisSettings {
            url: "redis://user:secret@host:6379/0".into(),
            ..RedisSettings::default()
        };
        assert_eq!(s.redacted_url(), "redis://***@host:6379/0");
        assert!(!s.redacted_url().contains("secret"));
    }

    #[test]
    fn debug_and_display_show_no_secret() {
        let mut kafka = KafkaSettings::default();
        for (name, value) in [
            ("sasl.password", "kafka-pass"),
            ("SSL.KEY.PASSWORD", "key-pass"),
            ("sasl.oauthbearer.client.secret", "oauth-secret"),
            ("sasl.username", "replyway"),
        ] {
            kafka.common.insert(name.into(), value.into());
        }
        kafka
            .producer
            .insert("ssl.key.pem".into(), "PRIVATE-PEM".into());
        let redis = RedisSettings {
            url: "rediss://user:redis-pass@host:6380/0".into(),
            ..RedisSettings::default()
        };
        let shown = format!("{redis:?} {kafka:?}");
        for secret in [
            "redis-pass",
            "kafka-pass",
            "key-pass",
            "oauth-secret",
            "PRIVATE-PEM",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("replyway"),
            "other properties stay visible: {shown}"
        );
        let secret = Secret::from("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "*** \"***\"");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn secrets_serialize_as_plain_strings() {
        // The loader seeds itself with serialized defaults, and child processes
        // get their settings as a file: both need the secret itself.
        let redis = RedisSettings {
            url: "redis://:pw@h:1".into(),
            ..RedisSettings::default()
        };
        let json = serde_json::to_value(&redis).unwrap();
        assert_eq!(json["url"], "redis://:pw@h:1");
        let back: RedisSettings = serde_json::from_value(json).unwrap();
        assert_eq!(back.url.expose(), "redis://:pw@h:1");
    }

    #[test]
    fn bad_settings_are_named() {
        let s = RedisSettings {
            prefix: "a b".into(),
            ..RedisSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().setting, "redis.prefix");
        let s = RedisSettings {
            url: "http://x".into(),
            ..RedisSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().setting, "redis.url");
    }

    #[test]
    fn user_properties_override_defaults() {
        let mut k = KafkaSettings::default();
        k.consumer.insert("client.rack".into(), "eu-1a".into());
        k.consumer
            .insert("auto.offset.reset".into(), "latest".into());
        let c = k.consumer_config("g");
        assert_eq!(c.get("client.rack"), Some("eu-1a"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn tls_and_sasl_properties_reach_librdkafka() {
        // The clients are built with TLS and SASL support: these properties are
        // accepted (librdkafka rejects them at creation when built without).
        let mut k = KafkaSettings::default();
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "replyway"),
            ("sasl.password", "secret"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            k.common.insert(key.into(), value.into());
        }
        let producer: Result<rdkafka::producer::BaseProducer, _> = k.producer_config().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
        let consumer: Result<rdkafka::consumer::BaseConsumer, _> = k.consumer_config("g").create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        // And a wrong value is refused at creation, naming the property.
        k.common
            .insert("security.protocol".into(), "CARRIER_PIGEON".into());
        let refused: Result<rdkafka::producer::BaseProducer, _> = k.producer_config().create();
        assert!(
            refused
                .err()
                .is_some_and(|e| e.to_string().contains("security.protocol"))
        );
    }

    #[test]
    fn a_cluster_is_named_by_a_tcp_seed_with_database_0() {
        let cluster = |url: &str| RedisSettings {
            url: url.into(),
            mode: RedisMode::Cluster,
            ..RedisSettings::default()
        };
        assert!(cluster("redis://10.0.0.1:7000").validate().is_ok());
        assert!(cluster("rediss://:pw@10.0.0.1:7000/0").validate().is_ok());
        let seeds = cluster("redis://10.0.0.1:7000, redis://10.0.0.2:7000");
        assert!(seeds.validate().is_ok());
        assert_eq!(
            seeds.seeds(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        let refused = RedisSettings {
            url: "redis://10.0.0.1:7000,redis://10.0.0.2:7000".into(),
            ..RedisSettings::default()
        };
        assert_eq!(refused.validate().unwrap_err().setting, "redis.url");
        for bad in [
            "redis://10.0.0.1:7000/3",
            "redis+unix:///run/redis.sock",
            "redis://10.0.0.1:7000,10.0.0.2:7000",
        ] {
            let refused = cluster(bad).validate().unwrap_err();
            assert_eq!(refused.setting, "redis.url", "{bad}");
        }
        // One Redis may use any database.
        let single = RedisSettings {
            url: "redis://10.0.0.1:7000/3".into(),
            ..RedisSettings::default()
        };
        assert!(single.validate().is_ok());
        let mode: RedisMode = serde_json::from_str("\"cluster\"").unwrap();
        assert_eq!(mode, RedisMode::Cluster);
        assert!(serde_json::from_str::<RedisMode>("\"sentinel\"").is_err());
    }

    #[test]
    fn redis_urls_with_tls_and_passwords_are_accepted() {
        for url in [
            "rediss://:secret@redis.example:6380/0",
            "rediss://user:secret@redis.example:6380",
            "redis://:secret@127.0.0.1:6379/2",
        ] {
            let r = RedisSettings {
                url: url.into(),
                ..RedisSettings::default()
            };
            assert!(r.validate().is_ok(), "{url}");
            assert!(r.client().is_ok(), "{url}");
            assert!(!r.redacted_url().contains("secret"), "{url}");
        }
    }

    #[test]
    fn reference_lists_every_setting_with_its_variable() {
        let text = reference(&Sample::default());
        for line in [
            "name = \"\"",
            "REPLYWAY_NAME",
            "redis.url = \"redis://127.0.0.1:6379\"",
            "REPLYWAY_REDIS__URL",
            "redis.ttl = \"10m\"",
            "REPLYWAY_REDIS__POOL_SIZE",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn topic_names() {
        assert!(is_valid_topic("echo.requests"));
        assert!(!is_valid_topic("a/b"));
        assert!(!is_valid_topic(".."));
        assert!(!is_valid_topic(&"a".repeat(250)));
    }
}
