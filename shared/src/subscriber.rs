//! The node's one Redis subscription: replies for this node's waiting requests
//! arrive on its channel and are handed to the [`Waiters`].
//!
//! After a lost subscription the node re-subscribes, waits for the confirmation,
//! and only then re-joins the waiters of every id it still waits for and re-reads
//! their reply keys — in that order, so that no reply stored meanwhile is neither
//! read nor heard, even when Redis came back empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::store::{Store, decode_notification};

use crate::waiters::Waiters;

/// How often the subscription connection is pinged to detect a dead peer.
const PING_EVERY: Duration = Duration::from_secs(2);

/// What the subscription needs.
pub struct Subscriber {
    /// Client for the dedicated connection.
    pub client: redis::Client,
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
            match self.session(&shutdown).await {
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

    /// One subscription, from connect until it is lost. `Ok` when it was live.
    async fn session(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let connect = async {
            let pubsub = self.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        let (mut sink, mut stream) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| "subscribe timed out")??;
        // Subscribed and confirmed: now re-join the waiters of every id we wait
        // for (Redis may have restarted empty) and read what arrived meanwhile.
        let ids = self.waiters.ids();
        for (id, reply) in self.store.rejoin(&ids, &self.node).await? {
            self.waiters.deliver(&id, Arc::new(reply));
        }
        // Parts of streamed replies stored meanwhile were not heard of: their
        // readers read them from Redis.
        self.waiters.touch_all();
        self.live.store(true, Ordering::SeqCst);
        tracing::info!(channel = %self.channel, rechecked = ids.len(), "redis subscription live");
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
                    match decode_notification(message.get_payload_bytes()) {
                        Ok((id, reply)) => {
                            if !self.waiters.deliver(&id, Arc::new(reply)) {
                                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed notification"),
                    }
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
}
