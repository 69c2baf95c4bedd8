//! One Redis connection for the store, to a single Redis or to a Redis Cluster.
//!
//! Both kinds are multiplexed (concurrent commands share them) and reconnect
//! by themselves. A cluster connection routes each command, script or
//! pipeline by the slot of its keys and follows `MOVED`/`ASK` redirections; a
//! pipeline must stay within one slot (the store splits its batches so).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Mutex;

/// A cluster connection made on first use (a gateway starts while Redis is
/// still down, as with a single Redis), then kept while it answers.
///
/// A command that times out or has its connection dropped drops it: the next one
/// makes a new connection, which reads the cluster's layout afresh from the
/// seed nodes. (In the suite's failover test, the connection the collector
/// had kept went on timing out every command for over a minute after the
/// killed master's replica had taken over, while new connections answered.)
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    connection: Arc<Mutex<Option<(u64, ClusterConnection)>>>,
    made: Arc<AtomicU64>,
    timeout: Duration,
}

impl LazyCluster {
    /// A connection to the cluster `client` names, connected on first use
    /// within `timeout`.
    pub fn new(client: ClusterClient, timeout: Duration) -> Self {
        Self {
            client: Arc::new(client),
            connection: Arc::default(),
            made: Arc::default(),
            timeout,
        }
    }

    /// The connection, and which one it is (for [`LazyCluster::failed`]).
    async fn get(&self) -> redis::RedisResult<(u64, ClusterConnection)> {
        let mut slot = self.connection.lock().await;
        if let Some(kept) = slot.as_ref() {
            return Ok(kept.clone());
        }
        let connection = tokio::time::timeout(self.timeout, self.client.get_async_connection())
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connecting to the Redis Cluster timed out",
                )))
            })?;
        let kept = (self.made.fetch_add(1, Ordering::Relaxed), connection);
        *slot = Some(kept.clone());
        Ok(kept)
    }

    /// Drops connection `which` after `error`, when it says the connection
    /// is in doubt (a timeout, a connection dropped under a command), unless
    /// a newer one was made. A node that refuses connections (it died; its
    /// replica is about to take over) is left to the connection's own
    /// refresh of the cluster's layout: a new connection would meet it too.
    async fn failed(&self, which: u64, error: &redis::RedisError) {
        if error.is_timeout() || error.is_connection_dropped() {
            let mut slot = self.connection.lock().await;
            if slot.as_ref().is_some_and(|(made, _)| *made == which) {
                tracing::warn!(%error, "dropping the Redis Cluster connection; the next command makes a new one");
                *slot = None;
            }
        }
    }

    /// Runs `op` on the connection, dropping it when `op` found it in doubt.
    async fn with<T, F, Fut>(&self, op: F) -> redis::RedisResult<T>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (which, connection) = self.get().await?;
        let result = op(connection).await;
        if let Err(e) = &result {
            self.failed(which, e).await;
        }
        result
    }
}

/// A store connection.
#[derive(Clone)]
pub enum Connection {
    /// To one Redis (`redis.mode = "single"`).
    Single(ConnectionManager),
    /// To a Redis Cluster (`redis.mode = "cluster"`).
    Cluster(LazyCluster),
}

impl Connection {
    /// Whether this connection routes by slot (pipelines must stay in one).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl Connection {
    /// Sends `cmd`; on a cluster to the master of `key`'s slot when given
    /// (for a command with no key of its own, such as `WAIT`), else where
    /// the cluster routes it. Boxed: it is awaited inside a request's
    /// submission, whose future every waiting request holds
    /// (`a_requests_futures_stay_small` in `gateway/tests/router.rs`).
    ///
    /// # Errors
    /// When Redis answers with an error or not at all.
    pub fn query_on<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a mut self,
        cmd: Cmd,
        key: Option<&'a str>,
    ) -> RedisFuture<'a, T> {
        Box::pin(async move {
            let value = match (&*self, key) {
                (Self::Cluster(lazy), Some(key)) => {
                    let shard = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::with_slot(Slot::for_key(key), SlotAddr::Master),
                    ));
                    lazy.with(|mut conn| async move { conn.route_command(cmd, shard).await })
                        .await?
                }
                _ => self.req_packed_command(&cmd).await?,
            };
            Ok(redis::from_redis_value(value)?)
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move {
                lazy.with(|mut conn| async move { conn.req_packed_command(cmd).await })
                    .await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(lazy) => Box::pin(async move {
                lazy.with(|mut conn| async move {
                    conn.req_packed_commands(pipeline, offset, count).await
                })
                .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}
