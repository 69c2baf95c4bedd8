//! The node's one Redis subscription: replies for this node's waiting requests
//! arrive on its channel and are handed to the [`Waiters`].
//!
//! After a lost subscription the node re-subscribes, waits for the confirmation,
//! and only then re-joins the waiters of every id it still waits for and re-reads
//! their reply keys — in that order, so that no reply stored meanwhile is neither
//! read nor heard, even when Redis came back empty.
//!
//! On a Redis Cluster the channel is a shard channel (`SSUBSCRIBE`, RESP3): it
//! lives on the shard that owns its slot, and one subscription per node still
//! suffices. When the slot moves (resharding, a failover), that shard drops
//! the subscription (`sunsubscribe`) or the connection: the node subscribes
//! again, to the channel's new owner, and re-joins and re-reads as above once
//! that is confirmed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{PushKind, Value};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::settings::{RedisSettings, SubscriptionClient};
use crate::store::{Store, decode_notification};

use crate::waiters::Waiters;

/// How often the subscription connection is pinged to detect a dead peer.
const PING_EVERY: Duration = Duration::from_secs(2);

/// What the subscription needs.
pub struct Subscriber {
    /// What the dedicated connection connects to.
    pub client: SubscriptionClient,
    /// This node's id.
    pub node: String,
    /// This node's channel.
    pub channel: String,
    /// Where replies go.
    pub waiters: Arc<Waiters>,
    /// For re-reading replies after a reconnect.
    pub store: Store,
    /// Bound on connecting and subscribing.
    pub timeout: Duration,
    /// Whether the subscription is live (readiness).
    pub live: Arc<AtomicBool>,
    /// Notifications for ids nobody waits for here any more (late replies).
    pub unclaimed: Arc<AtomicU64>,
}

impl Subscriber {
    /// Keeps the subscription alive until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let session = match &self.client {
                SubscriptionClient::Single(client) => self.session(client, &shutdown).await,
                SubscriptionClient::Cluster(redis) => self.sharded_session(redis, &shutdown).await,
            };
            match session {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, channel = %self.channel, "redis subscription failed; retrying")
                }
            }
            self.live.store(false, Ordering::SeqCst);
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
    }

    /// Subscribed and confirmed: re-joins the waiters of every id we wait for
    /// (Redis may have restarted empty, or the channel moved) and reads what
    /// arrived meanwhile; then the subscription is live.
    async fn confirmed(&self) -> Result<(), crate::store::StoreError> {
        let ids = self.waiters.ids();
        for (id, reply) in self.store.rejoin(&ids, &self.node).await? {
            self.waiters.deliver(&id, Arc::new(reply));
        }
        // Parts of streamed replies stored meanwhile were not heard of: their
        // readers read them from Redis.
        self.waiters.touch_all();
        self.live.store(true, Ordering::SeqCst);
        tracing::info!(channel = %self.channel, rechecked = ids.len(), "redis subscription live");
        Ok(())
    }

    /// Hands a notification to the waiters.
    fn notified(&self, payload: &[u8]) {
        match decode_notification(payload) {
            Ok((id, reply)) => {
                if !self.waiters.deliver(&id, Arc::new(reply)) {
                    self.unclaimed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed notification"),
        }
    }

    /// One subscription to one Redis, from connect until it is lost. `Ok`
    /// when it was live.
    async fn session(
        &self,
        client: &redis::Client,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let connect = async {
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        let (mut sink, mut stream) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| "subscribe timed out")??;
        // Subscribed and confirmed.
        self.confirmed().await?;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::warn!(channel = %self.channel, "redis subscription lost");
                        return Ok(());
                    };
                    self.notified(message.get_payload_bytes());
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => { tracing::warn!(error = %e, "redis subscription ping failed"); return Ok(()); }
                        Err(_) => { tracing::warn!("redis subscription ping timed out"); return Ok(()); }
                    }
                }
            }
        }
    }

    /// One subscription to a Redis Cluster's shard channel, until the
    /// connection to the cluster fails. `Ok` when it was live.
    ///
    /// Confirmations and messages arrive as RESP3 pushes. The channel's
    /// shard is pinged (routed by the channel's slot) to find a dead peer;
    /// while the subscription is not confirmed (its shard went away, its slot
    /// moved), it is asked for again on every ping: the cluster connection
    /// then finds the slot's owner anew.
    async fn sharded_session(
        &self,
        redis: &RedisSettings,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // Unbounded, as redis' own pub/sub stream is: what arrives here is
        // this node's notifications, at most one per stored reply or part of
        // a request it waits for, read at once below.
        let (pushes, mut pushed) = tokio::sync::mpsc::unbounded_channel();
        let client = redis
            .cluster_client()
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()?;
        let mut conn = tokio::time::timeout(self.timeout, client.get_async_connection())
            .await
            .map_err(|_| "connecting timed out")??;
        let subscribe = |mut conn: redis::cluster_async::ClusterConnection| async move {
            tokio::time::timeout(self.timeout, conn.ssubscribe(&self.channel))
                .await
                .map_err(|_| "subscribe timed out")?
                .map_err(|e| format!("subscribe: {e}"))
        };
        subscribe(conn.clone()).await?;
        let shard = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
            Slot::for_key(&self.channel),
            SlotAddr::Master,
        )));
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                push = pushed.recv() => {
                    let Some(push) = push else { return Err("push channel closed".into()) };
                    let ours = push.data.first().is_some_and(|c| is_channel(c, &self.channel));
                    match push.kind {
                        PushKind::SMessage if ours => {
                            if let Some(Value::BulkString(payload)) = push.data.get(1) {
                                self.notified(payload);
                            }
                        }
                        PushKind::SSubscribe if ours => self.confirmed().await?,
                        PushKind::SUnsubscribe if ours => {
                            // Its slot moved: the shard dropped the channel.
                            self.live.store(false, Ordering::SeqCst);
                            tracing::warn!(channel = %self.channel, "shard channel moved; subscribing again");
                            if let Err(e) = subscribe(conn.clone()).await {
                                tracing::warn!(error = %e, "subscribing again failed; retrying on the next ping");
                            }
                        }
                        PushKind::Disconnection => {
                            self.live.store(false, Ordering::SeqCst);
                            tracing::warn!(channel = %self.channel, "a Redis Cluster connection was lost");
                        }
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    if self.live.load(Ordering::SeqCst) {
                        let pinged = tokio::time::timeout(
                            self.timeout,
                            conn.route_command(redis::cmd("PING"), shard.clone()),
                        )
                        .await;
                        if !matches!(pinged, Ok(Ok(_))) {
                            self.live.store(false, Ordering::SeqCst);
                            tracing::warn!(channel = %self.channel, "the channel's shard did not answer a ping");
                        }
                    }
                    if !self.live.load(Ordering::SeqCst)
                        && let Err(e) = subscribe(conn.clone()).await
                    {
                        tracing::warn!(error = %e, "subscribing again failed; retrying on the next ping");
                    }
                }
            }
        }
    }
}

/// Whether a push names `channel`.
fn is_channel(value: &Value, channel: &str) -> bool {
    matches!(value, Value::BulkString(name) if name == channel.as_bytes())
}
