//! The Redis contract: key names, the stored reply format, and the operations the
//! gateway and the collector perform on them.
//!
//! Keys carry a configurable prefix and a `{correlation-id}` hash tag, so that one
//! request's keys share a Redis Cluster slot:
//!
//! | key | type | written by | content |
//! |---|---|---|---|
//! | `<prefix>:{<id>}:pending` | hash | gateway | `route`, `created` (unix ms), `principal`, `topic`, `key`, `cancelled` |
//! | `<prefix>:{<id>}:waiters` | set | gateway | ids of the nodes waiting for the reply |
//! | `<prefix>:{<id>}:reply` | string | collector | the stored reply (see [`encode_reply`]) |
//! | channel `<prefix>:node:<node-id>` | pub/sub | collector | `<id>\n<stored reply>` |
//!
//! The collector stores a reply and notifies the waiting nodes in one script
//! ([`STORE_REPLY_LUA`]), which reads the waiters set atomically with its write: a
//! node that joined the set before the write hears of it; a node that joins after
//! it finds the reply when it reads the key. So a reply is read or heard, never
//! missed.

use std::time::Duration;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::try_join_all;

use crate::record::Reply;

mod callbacks;
mod claims;
mod codec;
mod connection;
mod parts;
mod replies;
mod scripts;
pub use callbacks::{
    CallbackRecord, CallbackStatus, DELIVERY_GROUP, Delivery, DeliveryState, PROMOTE_DUE_LUA,
    RETRY_DELIVERY_LUA,
};
pub use claims::{Claim, RateDecision, RateLimit};
pub use codec::{
    DecodeError, decode_notification, decode_reply, encode_notification, encode_reply,
};
pub use connection::{Connection, LazyCluster};
pub use parts::{PARTS_PER_READ, STORE_PART_LUA};
pub use scripts::*;

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `replyway`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The pending record of a request.
    pub fn pending(&self, id: &str) -> String {
        format!("{}:{{{id}}}:pending", self.prefix)
    }

    /// The set of nodes waiting for a reply.
    pub fn waiters(&self, id: &str) -> String {
        format!("{}:{{{id}}}:waiters", self.prefix)
    }

    /// The stored reply.
    pub fn reply(&self, id: &str) -> String {
        format!("{}:{{{id}}}:reply", self.prefix)
    }

    /// The parts of a streamed reply (a Redis Stream).
    pub fn parts(&self, id: &str) -> String {
        format!("{}:{{{id}}}:parts", self.prefix)
    }

    /// The record of an idempotency key (`scope` is a digest of route and key).
    pub fn idempotency(&self, scope: &str) -> String {
        format!("{}:idem:{{{scope}}}", self.prefix)
    }

    /// The state of a rate limit (`scope` is a digest of route and caller).
    pub fn rate_limit(&self, scope: &str) -> String {
        format!("{}:rl:{{{scope}}}", self.prefix)
    }

    /// Prefix of every node's notification channel.
    pub fn channel_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// A node's notification channel.
    pub fn channel(&self, node: &str) -> String {
        format!("{}{node}", self.channel_prefix())
    }
}

/// A Redis operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A command failed.
    #[error("redis command: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis holds something that is not a stored reply.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A script answered outside its contract.
    #[error("redis answered out of contract: {0}")]
    Malformed(String),
    /// Fewer replicas than `redis.min_replicas` acknowledged the write in
    /// time (it is on the master, and may be lost if the master fails).
    #[error("{acked} of {wanted} replicas acknowledged the write")]
    NotReplicated {
        /// Replicas that did.
        acked: u32,
        /// `redis.min_replicas`.
        wanted: u32,
    },
}

/// What the pending record says of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInfo {
    /// The route it was made on.
    pub route: String,
    /// Who made it, when the route authenticates.
    pub principal: Option<String>,
    /// Whether it was cancelled ([`Store::cancel_pending`]).
    pub cancelled: bool,
}

/// What cancelling a pending request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelPending {
    /// Marked cancelled now: the cancel record goes to `topic` with `key`.
    Cancelled {
        /// The command's topic.
        topic: String,
        /// The command's record key.
        key: Bytes,
    },
    /// Cancelled before.
    Already,
    /// The reply is stored: too late to cancel.
    Answered,
    /// No pending record (never issued, or expired).
    Unknown,
}

/// What Redis knows of a correlation id.
#[derive(Debug)]
pub enum Lookup {
    /// The reply is stored; with the pending record while it lives.
    Reply(Reply, Option<PendingInfo>),
    /// The request is pending: no reply yet.
    Pending(PendingInfo),
    /// Parts of a streamed reply are stored (read them with
    /// [`Store::read_parts`]); with the pending record while it lives.
    Streamed(Option<PendingInfo>),
    /// Never issued, or expired.
    Unknown,
}

/// A new pending record.
#[derive(Debug, Clone, Copy)]
pub struct NewPending<'a> {
    /// What names the request (a route, a topic).
    pub route: &'a str,
    /// When it was made (unix ms).
    pub created_ms: u64,
    /// Who may pick its reply up, when the caller authenticated.
    pub principal: Option<&'a str>,
    /// The command's topic and key (for its cancel record).
    pub topic: &'a str,
    /// The command's record key.
    pub key: &'a [u8],
}

/// One reply to store.
#[derive(Debug)]
pub struct ReplyToStore {
    /// The correlation id.
    pub id: String,
    /// The encoded reply ([`encode_reply`]).
    pub encoded: Vec<u8>,
    /// For a part of a streamed reply: its number, and whether it is the last.
    pub part: Option<(u32, bool)>,
}

/// The Redis operations of the gateway and the collector, over a connection pool.
#[derive(Clone)]
pub struct Store {
    connections: Arc<[Connection]>,
    next: Arc<AtomicUsize>,
    keys: Keys,
    timeout: Duration,
    ttl: Duration,
    store_script: redis::Script,
    /// Replicas that must acknowledge a write (`WAIT`) before it counts.
    min_replicas: u32,
    part_script: redis::Script,
    join_script: redis::Script,
    claim_script: redis::Script,
    produced_script: redis::Script,
    create_script: redis::Script,
    cancel_script: redis::Script,
    rate_script: redis::Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store {
    /// Operations on `connections` under `keys`; each bounded by `timeout`; records kept for `ttl`.
    ///
    /// The connections are multiplexed: concurrent operations share them, with
    /// no checkout round trip; they reconnect by themselves.
    ///
    /// # Panics
    /// When `connections` is empty.
    pub fn new(connections: Vec<Connection>, keys: Keys, timeout: Duration, ttl: Duration) -> Self {
        assert!(!connections.is_empty(), "a store needs a connection");
        Self {
            connections: connections.into(),
            next: Arc::default(),
            keys,
            timeout,
            ttl,
            store_script: redis::Script::new(STORE_REPLY_LUA),
            min_replicas: 0,
            part_script: redis::Script::new(STORE_PART_LUA),
            join_script: redis::Script::new(JOIN_AND_READ_LUA),
            claim_script: redis::Script::new(CLAIM_IDEMPOTENCY_LUA),
            produced_script: redis::Script::new(MARK_PRODUCED_LUA),
            create_script: redis::Script::new(CREATE_PENDING_LUA),
            cancel_script: redis::Script::new(CANCEL_PENDING_LUA),
            rate_script: redis::Script::new(RATE_LIMIT_LUA),
        }
    }

    /// Writes count once `min_replicas` replicas acknowledged them (`WAIT`
    /// within the timeout); see [`Store::replicated`].
    #[must_use]
    pub fn with_min_replicas(mut self, min_replicas: u32) -> Self {
        self.min_replicas = min_replicas;
        self
    }

    /// After writes on `conn`: waits until `min_replicas` replicas have them
    /// (`WAIT` covers every write this connection made before it), for at
    /// most three quarters of the timeout. Nothing to wait for with
    /// `min_replicas = 0`.
    ///
    /// On a cluster, `WAIT` goes to the master of `key`'s slot (the shard that
    /// took the write), or with no key (a batch over many slots) to every
    /// master, counting the fewest acknowledgements.
    ///
    /// # Errors
    /// [`StoreError::NotReplicated`] when fewer replicas acknowledged.
    async fn replicated(&self, mut conn: Connection, key: Option<&str>) -> Result<(), StoreError> {
        if self.min_replicas == 0 {
            return Ok(());
        }
        let within = u64::try_from((self.timeout * 3 / 4).as_millis()).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.min_replicas).arg(within.max(1));
        let acked: i64 = self
            .bounded(async { Ok(conn.query_on(wait, key).await?) })
            .await?;
        let acked = u32::try_from(acked).unwrap_or(0);
        if acked < self.min_replicas {
            return Err(StoreError::NotReplicated {
                acked,
                wanted: self.min_replicas,
            });
        }
        Ok(())
    }

    /// How long replies and pending records are kept: until then a reply can
    /// still be collected, so it is every command's `deadline`.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn connection(&self) -> Connection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn bounded<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// Checks that Redis answers.
    ///
    /// # Errors
    /// [`StoreError`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Records a request as pending; with `waiter`, that node waits for the reply.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn create_pending(
        &self,
        id: &str,
        pending: NewPending<'_>,
        waiter: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut invocation = self.create_script.key(self.keys.pending(id));
        invocation
            .key(self.keys.waiters(id))
            .arg(pending.route)
            .arg(pending.created_ms)
            .arg(ttl_ms(self.ttl))
            .arg(waiter.unwrap_or_default())
            .arg(pending.principal.unwrap_or_default())
            .arg(pending.topic)
            .arg(pending.key);
        let conn = self
            .bounded(async {
                let mut conn = self.connection();
                invocation.invoke_async::<()>(&mut conn).await?;
                Ok(conn)
            })
            .await?;
        self.replicated(conn, Some(&self.keys.pending(id))).await
    }

    /// Marks pending request `id` cancelled ([`CANCEL_PENDING_LUA`]).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer or answers out of contract.
    pub async fn cancel_pending(&self, id: &str) -> Result<CancelPending, StoreError> {
        let mut invocation = self.cancel_script.key(self.keys.pending(id));
        invocation.key(self.keys.reply(id));
        let answer: Vec<redis::Value> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        let bytes = |i: usize| -> Option<Vec<u8>> {
            answer
                .get(i)
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
        };
        match bytes(0).as_deref() {
            Some(b"answered") => Ok(CancelPending::Answered),
            Some(b"unknown") => Ok(CancelPending::Unknown),
            Some(b"already") => Ok(CancelPending::Already),
            Some(b"cancelled") => match (bytes(1).map(String::from_utf8), bytes(2)) {
                (Some(Ok(topic)), Some(key)) => Ok(CancelPending::Cancelled {
                    topic,
                    key: key.into(),
                }),
                _ => Err(StoreError::Malformed("cancel answer".into())),
            },
            _ => Err(StoreError::Malformed("cancel answer".into())),
        }
    }

    /// Removes the cancelled mark of `id` again: its cancel record could not
    /// be produced.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn unmark_cancelled(&self, id: &str) -> Result<(), StoreError> {
        let key = self.keys.pending(id);
        self.bounded(async {
            let mut conn = self.connection();
            redis::cmd("HDEL")
                .arg(&key)
                .arg("cancelled")
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes a pending record whose command could not be produced.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn delete_pending(&self, id: &str) -> Result<(), StoreError> {
        let keys = [self.keys.pending(id), self.keys.waiters(id)];
        self.bounded(async {
            let mut conn = self.connection();
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Reads what Redis knows of `id`; with `waiter`, that node first joins the
    /// waiters of a pending request (join, then read: see the module docs).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer or holds a malformed reply.
    pub async fn lookup(&self, id: &str, waiter: Option<&str>) -> Result<Lookup, StoreError> {
        type Found = (
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
            bool,
        );
        let (reply, route, principal, cancelled, streamed): Found = self
            .bounded(async {
                let mut conn = self.connection();
                if let Some(node) = waiter {
                    let mut invocation = self.join_script.key(self.keys.pending(id));
                    invocation
                        .key(self.keys.waiters(id))
                        .key(self.keys.reply(id))
                        .key(self.keys.parts(id))
                        .arg(node);
                    Ok(invocation.invoke_async(&mut conn).await?)
                } else {
                    let mut pipe = redis::pipe();
                    pipe.get(self.keys.reply(id))
                        .hget(self.keys.pending(id), "route")
                        .hget(self.keys.pending(id), "principal")
                        .hget(self.keys.pending(id), "cancelled")
                        .exists(self.keys.parts(id));
                    Ok(pipe.query_async(&mut conn).await?)
                }
            })
            .await?;
        let pending = route.map(|route| PendingInfo {
            route,
            principal,
            cancelled: cancelled.is_some(),
        });
        Ok(match (reply, pending) {
            (Some(bytes), pending) => Lookup::Reply(decode_reply(&bytes)?, pending),
            (None, pending) if streamed => Lookup::Streamed(pending),
            (None, Some(pending)) => Lookup::Pending(pending),
            (None, None) => Lookup::Unknown,
        })
    }

    /// Makes `node` a waiter of every id in `ids` and reads their replies: after
    /// a lost subscription (Redis may have restarted empty) and for requests
    /// that follow another one (same idempotency key), whose pending record may
    /// not exist yet. Join before read, as always: one pipelined round trip to
    /// one Redis; in a cluster one pipeline per id (a pipeline stays in one
    /// slot), all at once.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn rejoin(
        &self,
        ids: &[String],
        node: &str,
    ) -> Result<Vec<(String, Reply)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = i64::try_from(ttl_ms(self.ttl)).unwrap_or(i64::MAX);
        let join = |pipe: &mut redis::Pipeline, id: &str| {
            let waiters = self.keys.waiters(id);
            pipe.sadd(&waiters, node)
                .ignore()
                .pexpire(&waiters, ttl)
                .ignore()
                .get(self.keys.reply(id));
        };
        let values: Vec<Option<Vec<u8>>> = self
            .bounded(async {
                if self.is_cluster() {
                    Ok(try_join_all(ids.iter().map(|id| async move {
                        let mut pipe = redis::pipe();
                        join(&mut pipe, id);
                        let (value,): (Option<Vec<u8>>,) =
                            pipe.query_async(&mut self.connection()).await?;
                        Ok::<_, StoreError>(value)
                    }))
                    .await?)
                } else {
                    let mut pipe = redis::pipe();
                    for id in ids {
                        join(&mut pipe, id);
                    }
                    Ok(pipe.query_async(&mut self.connection()).await?)
                }
            })
            .await?;
        let mut found = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            if let Some(bytes) = value {
                found.push((id.clone(), decode_reply(&bytes)?));
            }
        }
        Ok(found)
    }

    /// Whether Redis is a cluster (`redis.mode = "cluster"`).
    pub fn is_cluster(&self) -> bool {
        self.connections[0].is_cluster()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let keys = Keys::new("rw");
        assert_eq!(keys.pending("abc"), "rw:{abc}:pending");
        assert_eq!(keys.waiters("abc"), "rw:{abc}:waiters");
        assert_eq!(keys.reply("abc"), "rw:{abc}:reply");
        assert_eq!(keys.channel("n1"), "rw:node:n1");
    }
}
