//! Redis settings: where Redis is, how it is deployed (one Redis or a Redis
//! Cluster), and the clients built from them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{InvalidSetting, REDACTED, Secret};

/// How to reach Redis and how long its records live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS (a
    /// secret: it may hold a password; [`RedisSettings::redacted_url`] is what
    /// logs show).
    pub url: Secret,
    /// Prefix of every key and channel, so deployments can share a Redis.
    pub prefix: String,
    /// How long replies and pending records are kept (longer than anyone waits).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Bound on every Redis operation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Multiplexed connections per process (concurrent operations share them).
    pub pool_size: usize,
    /// Replicas that must have a write before it counts (Redis `WAIT`, within
    /// `timeout`): a collector stores a batch's offsets, and a gateway goes on
    /// with a request, only then. `0`: the master's acknowledgement is enough.
    pub min_replicas: u32,
    /// One Redis (`single`) or a Redis Cluster (`cluster`, `url` naming any
    /// seed node): see [`RedisMode`].
    pub mode: RedisMode,
}

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis (with replicas, or not).
    #[default]
    Single,
    /// A Redis Cluster (Redis 7 or newer): commands are routed by slot, and
    /// notifications travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) to the
    /// shard that owns the node's channel only.
    Cluster,
}

/// What a node's subscription connects to.
#[derive(Debug, Clone)]
pub enum SubscriptionClient {
    /// One Redis: `SUBSCRIBE` on a dedicated connection.
    Single(Box<redis::Client>),
    /// A Redis Cluster: `SSUBSCRIBE` over RESP3, on the shard that owns the
    /// channel (found from the seed nodes that `redis.url` names).
    Cluster(Box<RedisSettings>),
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "replyway".into(),
            ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(2),
            pool_size: 2,
            min_replicas: 0,
            mode: RedisMode::Single,
        }
    }
}

/// Most replicas `redis.min_replicas` may ask for.
pub const MAX_MIN_REPLICAS: u32 = 16;

impl RedisSettings {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let url = self.url.expose();
        if !url.starts_with("redis://")
            && !url.starts_with("rediss://")
            && !url.starts_with("redis+unix://")
        {
            return Err(InvalidSetting::new(
                "redis.url",
                "must start with redis://, rediss:// or redis+unix://",
            ));
        }
        if self.mode == RedisMode::Single && url.contains(',') {
            return Err(InvalidSetting::new(
                "redis.url",
                "names one Redis (several seed nodes, comma-separated, are for redis.mode = \"cluster\")",
            ));
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return Err(InvalidSetting::new(
                "redis.prefix",
                "must be non-empty [A-Za-z0-9._:-]",
            ));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(InvalidSetting::new("redis.ttl", "must be at least 1s"));
        }
        if self.timeout.is_zero() {
            return Err(InvalidSetting::new("redis.timeout", "must be more than 0"));
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            return Err(InvalidSetting::new("redis.pool_size", "must be 1 to 64"));
        }
        for url in self
            .seeds()
            .into_iter()
            .filter(|_| self.mode == RedisMode::Cluster)
        {
            let info = redis::IntoConnectionInfo::into_connection_info(url)
                .map_err(|e| InvalidSetting::new("redis.url", e.to_string()))?;
            if !matches!(
                info.addr(),
                redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
            ) {
                return Err(InvalidSetting::new(
                    "redis.url",
                    "a Redis Cluster is reached over TCP (redis:// or rediss://)",
                ));
            }
            if info.redis_settings().db() != 0 {
                return Err(InvalidSetting::new(
                    "redis.url",
                    "a Redis Cluster has database 0 only",
                ));
            }
        }
        if self.min_replicas > MAX_MIN_REPLICAS {
            return Err(InvalidSetting::new(
                "redis.min_replicas",
                format!("must be 0 to {MAX_MIN_REPLICAS}"),
            ));
        }
        Ok(())
    }

    /// `pool_size` multiplexed connections, made lazily (Redis need not be up
    /// yet) and re-made by themselves after a loss.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the URL cannot be used.
    pub fn connections(&self) -> Result<Vec<redis::aio::ConnectionManager>, InvalidSetting> {
        let client = self.client()?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_max_delay(std::time::Duration::from_secs(1));
        (0..self.pool_size)
            .map(|_| {
                redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(|e| InvalidSetting::new("redis.url", e.to_string()))
            })
            .collect()
    }

    /// The store's connections: `pool_size` to one Redis, or one (routing by
    /// slot) to a Redis Cluster. Made lazily; they reconnect by themselves.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the URL cannot be used.
    pub fn store_connections(&self) -> Result<Vec<crate::store::Connection>, InvalidSetting> {
        match self.mode {
            RedisMode::Single => Ok(self
                .connections()?
                .into_iter()
                .map(crate::store::Connection::Single)
                .collect()),
            RedisMode::Cluster => {
                let client = self
                    .cluster_client()
                    .build()
                    .map_err(|e| InvalidSetting::new("redis.url", e.to_string()))?;
                Ok(vec![crate::store::Connection::Cluster(
                    crate::store::LazyCluster::new(client, self.timeout),
                )])
            }
        }
    }

    /// A Redis Cluster client for the seed nodes of `redis.url` (several,
    /// comma-separated, are tried in turn), each command bounded by
    /// `redis.timeout`, with its retries (after `MOVED`, a lost node) kept
    /// within it: at most 3, 10–250 ms apart.
    pub fn cluster_client(&self) -> redis::cluster::ClusterClientBuilder {
        redis::cluster::ClusterClientBuilder::new(self.seeds())
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(250)
    }

    /// The seed nodes `redis.url` names (one, or several comma-separated).
    pub fn seeds(&self) -> Vec<&str> {
        self.url.expose().split(',').map(str::trim).collect()
    }

    /// What a node's subscription connects to.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the URL cannot be used.
    pub fn subscription_client(&self) -> Result<SubscriptionClient, InvalidSetting> {
        match self.mode {
            RedisMode::Single => Ok(SubscriptionClient::Single(Box::new(self.client()?))),
            RedisMode::Cluster => Ok(SubscriptionClient::Cluster(Box::new(self.clone()))),
        }
    }

    /// A client for dedicated connections (the gateway's subscription).
    ///
    /// # Errors
    /// [`InvalidSetting`] when the URL cannot be used.
    pub fn client(&self) -> Result<redis::Client, InvalidSetting> {
        redis::Client::open(self.url.expose())
            .map_err(|e| InvalidSetting::new("redis.url", e.to_string()))
    }

    /// The URL with any password hidden, for logs.
    pub fn redacted_url(&self) -> String {
        let url = self.url.expose();
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://{REDACTED}{}", &url[..scheme], &url[at..])
            }
            _ => url.to_owned(),
        }
    }
}
