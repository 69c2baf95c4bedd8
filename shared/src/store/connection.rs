//! One Redis connection for the store, to a single Redis or to a Redis Cluster.
//!
//! Both kinds are multiplexed (concurrent commands share them) and reconnect
//! by themselves. A cluster connection routes each command, script or
//! pipeline by the slot of its keys and follows `MOVED`/`ASK` redirections; a
//! pipeline must stay within one slot (the store splits its batches so).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

/// A cluster connection made on first use (a gateway starts while Redis is
/// still down, as with a single Redis), then kept: it reconnects by itself.
#[derive(Clone)]
pub struct LazyCluster {
    client: ClusterClient,
    connection: Arc<OnceCell<ClusterConnection>>,
    timeout: Duration,
}

impl LazyCluster {
    /// A connection to the cluster `client` names, connected on first use
    /// within `timeout`.
    pub fn new(client: ClusterClient, timeout: Duration) -> Self {
        Self {
            client,
            connection: Arc::default(),
            timeout,
        }
    }

    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let connect = || async {
            tokio::time::timeout(self.timeout, self.client.get_async_connection())
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "connecting to the Redis Cluster timed out",
                    )))
                })
        };
        self.connection.get_or_try_init(connect).await.cloned()
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
    /// the cluster routes it.
    ///
    /// # Errors
    /// When Redis answers with an error or not at all.
    pub async fn query_on<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        key: Option<&str>,
    ) -> redis::RedisResult<T> {
        match (self, key) {
            (Self::Cluster(lazy), Some(key)) => {
                let shard = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_slot(Slot::for_key(key), SlotAddr::Master),
                ));
                let value = lazy.get().await?.route_command(cmd, shard).await?;
                Ok(redis::from_redis_value(value)?)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_command(cmd).await
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
                let mut conn = lazy.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
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
