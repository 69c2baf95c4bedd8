//! The gateway's settings: defaults, then a TOML file, then `REPLYWAY_…` variables.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use replyway_shared::correlation::Signer;
use replyway_shared::exchange::{Node, NodeOptions};
use replyway_shared::settings::{
    InvalidSetting, KafkaSettings, LogSettings, RedisSettings, Secret,
};

use crate::auth::{Authenticator, RouteAuth};
use crate::routes::{Route, RouteConfig, RouteTable};

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Address of the admin port (`/healthz`, `/readyz`, `/metrics`); empty: none.
    pub admin_listen: String,
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
    /// How often the members of the routes' `responder_group`s are asked of
    /// Kafka (in the background; a request never waits for it).
    #[serde(with = "humantime_serde")]
    pub responder_check_interval: Duration,
    /// Longest time a client may take to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest time a client may take to send a request's body (`408` past it).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger: `431`.
    pub max_header_bytes: usize,
    /// TLS on the API port; unset: plain HTTP (and h2c).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Most requests in flight on one HTTP/2 connection (clients that speak
    /// HTTP/2 without TLS, "h2c", share one connection among many requests).
    pub http2_max_streams: u32,
    /// Longest a streamed reply may take from its first part to its last.
    #[serde(with = "humantime_serde")]
    pub max_stream_duration: Duration,
    /// After SIGTERM: how long requests in flight may still be answered before
    /// the remaining connections are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long an `Idempotency-Key` is remembered: at most `redis.ttl` (so
    /// that a retry finds the reply), and `redis.ttl` when unset.
    #[serde(default, with = "humantime_serde")]
    pub idempotency_ttl: Option<Duration>,
    /// Topic that services reply to (`reply-to` of every command).
    pub reply_topic: String,
    /// A request header that names the calling client, set by a trusted proxy in
    /// front of the gateway (e.g. `x-client-id`); its value goes to services as
    /// the record's `client-id`. Unset: no `client-id` is sent.
    #[serde(default)]
    pub client_id_header: Option<String>,
    /// A request header in which a trusted proxy passes the client's address
    /// (e.g. `x-forwarded-for`; the first address is used); unset: the
    /// connection's peer. Keys rate limits of unauthenticated callers.
    #[serde(default)]
    pub client_ip_header: Option<String>,
    /// Authentication: API keys and JWT validation (routes choose with `auth`).
    pub auth: crate::auth::AuthConfig,
    /// Secret (≥ 32 bytes) for signed correlation ids: issued ids carry an HMAC
    /// tag, and unsigned ids are unknown (`404`). Give the collectors the same.
    #[serde(default)]
    pub correlation_secret: Option<Secret>,
    /// Redis.
    pub redis: RedisSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
    /// Commands over a WebSocket (`GET /v1/ws`).
    pub websocket: crate::websocket::WebSocketSettings,
    /// Callbacks (webhooks): the signing secret, the retry schedule and the
    /// delivery worker's bounds (routes choose with `callbacks`).
    pub callbacks: crate::callbacks::CallbackSettings,
    /// The routes.
    pub routes: Vec<RouteConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            node_id: None,
            max_waiting: 10_000,
            max_poll_wait: Duration::from_secs(60),
            produce_timeout: Duration::from_secs(5),
            responder_check_interval: Duration::from_millis(500),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            max_stream_duration: Duration::from_secs(600),
            http2_max_streams: 1000,
            max_header_bytes: 16 * 1024,
            tls: None,
            idempotency_ttl: None,
            reply_topic: "replyway.replies".into(),
            client_id_header: None,
            client_ip_header: None,
            auth: crate::auth::AuthConfig::default(),
            correlation_secret: None,
            redis: RedisSettings::default(),
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
            websocket: crate::websocket::WebSocketSettings::default(),
            callbacks: crate::callbacks::CallbackSettings::default(),
            routes: Vec::new(),
        }
    }
}

impl replyway_shared::service::ServiceSettings for Settings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

/// The gateway's checked configuration, built once at start from its
/// [`Settings`]: everything a setting can be wrong about has been found out.
pub struct Config {
    /// The settings it was built from.
    pub settings: Settings,
    /// The routes, free of conflicts.
    pub routes: RouteTable,
    /// Checks credentials.
    pub auth: Authenticator,
    /// Signs correlation ids, when `correlation_secret` is set.
    pub signer: Option<Signer>,
    /// The TLS acceptor, when `tls` is set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// This node of the correlation (clients connect lazily).
    pub node: Node,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("settings", &self.settings)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The id signer, when `correlation_secret` is set.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the secret is too short.
    pub fn signer(&self) -> Result<Option<Signer>, InvalidSetting> {
        Signer::from_setting(self.correlation_secret.as_ref())
    }

    /// How long an idempotency key is remembered.
    pub fn idempotency_ttl(&self) -> Duration {
        self.idempotency_ttl.unwrap_or(self.redis.ttl)
    }

    /// How long an idempotency claim may stay unproduced before a retry takes
    /// it over and produces the command again: the longest a produce may take
    /// (`produce_timeout`) and a second for the Redis round trips around it.
    /// A gateway that dies between claiming a key and producing its command
    /// leaves the key stuck for no longer than this.
    pub fn idempotency_lease(&self) -> Duration {
        self.produce_timeout + Duration::from_secs(1)
    }

    /// Checks every setting and builds what the gateway runs with: the route
    /// table, the authenticator (reading JWKS files), the id signer, the TLS
    /// acceptor (reading certificate and key) and the node's clients.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn build(self) -> Result<Config, InvalidSetting> {
        let routes = self.route_table()?;
        let auth = Authenticator::new(&self.auth)?;
        let signer = self.signer()?;
        let tls = self.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let node = Node::new(
            &self.kafka,
            &self.redis,
            NodeOptions {
                reply_topic: self.reply_topic.clone(),
                node_id: self.node_id.clone(),
                max_waiting: self.max_waiting,
                produce_timeout: self.produce_timeout,
            },
        )?;
        Ok(Config {
            settings: self,
            routes,
            auth,
            signer,
            tls,
            node,
        })
    }

    /// The part of [`Settings::build`] that reads no file and creates no
    /// client: the gateway's own settings, and the route table checked
    /// against them.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn route_table(&self) -> Result<RouteTable, InvalidSetting> {
        check_header_name("client_id_header", self.client_id_header.as_deref())?;
        self.check_node_id()?;
        self.check_limits()?;
        let routes = RouteTable::new(&self.routes)?;
        for (i, route) in routes.routes().iter().enumerate() {
            self.check_route(i, route)?;
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(InvalidSetting::new(
                "max_header_bytes",
                "must be 1 KiB to 1 MiB",
            ));
        }
        check_header_name("client_ip_header", self.client_ip_header.as_deref())?;
        let callbacks = routes.routes().iter().position(|r| r.callbacks.is_some());
        if let Some(index) = callbacks
            && self.redis.mode == replyway_shared::settings::RedisMode::Cluster
        {
            // A reply and its delivery are stored in one step, and the
            // stream of deliveries has a slot of its own: one Redis only.
            return Err(InvalidSetting::new(
                format!("routes[{index}].callbacks"),
                "callbacks need redis.mode = \"single\" (a reply and its delivery are stored in one atomic step)",
            ));
        }
        self.callbacks.check(callbacks.is_some())?;
        Ok(routes)
    }

    /// `node_id`, when set, can name a notification channel.
    fn check_node_id(&self) -> Result<(), InvalidSetting> {
        if let Some(node) = &self.node_id
            && !replyway_shared::record::is_valid_correlation_id(node)
        {
            return Err(InvalidSetting::new(
                "node_id",
                "must be 1-128 characters of [A-Za-z0-9._:-]",
            ));
        }
        Ok(())
    }

    /// The bounds on waiting, reading, remembering and producing: none zero,
    /// and nobody waits or remembers longer than a reply is kept.
    fn check_limits(&self) -> Result<(), InvalidSetting> {
        if self.max_waiting == 0 {
            return Err(InvalidSetting::new("max_waiting", "must be at least 1"));
        }
        if self.max_poll_wait >= self.redis.ttl {
            return Err(InvalidSetting::new(
                "max_poll_wait",
                "must be shorter than redis.ttl: a reply is kept longer than anyone waits",
            ));
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idempotency_ttl", self.idempotency_ttl()),
        ] {
            if value.is_zero() {
                return Err(InvalidSetting::new(name, "must be more than 0"));
            }
        }
        if self.idempotency_ttl() > self.redis.ttl {
            return Err(InvalidSetting::new(
                "idempotency_ttl",
                "must not exceed redis.ttl: a retry must find the reply",
            ));
        }
        if self.http2_max_streams == 0 {
            return Err(InvalidSetting::new(
                "http2_max_streams",
                "must be at least 1",
            ));
        }
        if self.responder_check_interval < Duration::from_millis(100) {
            return Err(InvalidSetting::new(
                "responder_check_interval",
                "must be at least 100ms",
            ));
        }
        if self.produce_timeout.is_zero() {
            return Err(InvalidSetting::new(
                "produce_timeout",
                "must be more than 0",
            ));
        }
        Ok(())
    }

    /// Route `i` against these settings: its reply outlives its wait, and its
    /// `auth` has credentials configured to check.
    fn check_route(&self, i: usize, route: &Route) -> Result<(), InvalidSetting> {
        if route.timeout >= self.redis.ttl {
            return Err(InvalidSetting::new(
                format!("routes[{i}].timeout"),
                "must be shorter than redis.ttl: a reply is kept longer than anyone waits",
            ));
        }
        let keys = !self.auth.api_keys.is_empty();
        let jwt = self.auth.jwt.is_some();
        let usable = match route.auth {
            RouteAuth::None => route.scopes.is_empty(),
            RouteAuth::ApiKey => keys,
            RouteAuth::Jwt => jwt,
            RouteAuth::Any => keys || jwt,
        };
        if !usable {
            return Err(InvalidSetting::new(
                format!("routes[{i}].auth"),
                "needs auth.api_keys or auth.jwt configured (and scopes need an auth other than none)",
            ));
        }
        Ok(())
    }
}

/// Setting `setting`, when set, is an HTTP header name.
fn check_header_name(setting: &str, name: Option<&str>) -> Result<(), InvalidSetting> {
    if let Some(name) = name
        && axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
    {
        return Err(InvalidSetting::new(setting, "not an HTTP header name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::RouteCallbacksConfig;
    use crate::routes::RouteConfig;
    use replyway_shared::settings::RedisMode;

    #[test]
    fn a_cluster_refuses_callbacks() {
        let mut settings = Settings {
            routes: vec![RouteConfig {
                method: "POST".into(),
                path: "/hooked".into(),
                topic: "hooked.requests".into(),
                callbacks: Some(RouteCallbacksConfig {
                    allow_hosts: vec!["hooks.example.com".into()],
                    ..RouteCallbacksConfig::default()
                }),
                ..RouteConfig::default()
            }],
            ..Settings::default()
        };
        settings.callbacks.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        assert!(settings.route_table().is_ok(), "one Redis takes callbacks");
        settings.redis.mode = RedisMode::Cluster;
        let refused = settings.route_table().unwrap_err();
        assert_eq!(refused.setting, "routes[0].callbacks");
        assert!(refused.reason.contains("redis.mode"), "{}", refused.reason);
    }
}
