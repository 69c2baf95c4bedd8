//! The Redis side of callbacks (webhooks): a request's callback record, the
//! stream of deliveries every gateway's worker reads through one consumer
//! group, and the sorted set of deliveries waiting for their retry.
//!
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>:{<id>}:callback` | hash | `url`, `route`, `created`, `private`; once the reply is stored, `reply`, `state`, `attempts` |
//! | `<prefix>:{callbacks}:deliveries` | stream | entries `id <correlation id>`, read by group [`DELIVERY_GROUP`] |
//! | `<prefix>:{callbacks}:due` | sorted set | correlation ids of deliveries waiting for a retry, scored by when it is due (unix ms) |
//!
//! [`STORE_REPLY_LUA`](super::STORE_REPLY_LUA) adds the delivery to the
//! stream in the same step as it stores the reply, when the callback record
//! exists: a reply is never stored without its delivery.

use std::collections::HashMap;
use std::time::Duration;

use super::{Keys, Store, StoreError, ttl_ms};

/// The consumer group of the delivery workers (a consumer per gateway node).
pub const DELIVERY_GROUP: &str = "replyway-callbacks";

/// Puts a failed delivery aside until its retry is due, and takes it off the
/// stream, in one step: it is either in the stream's pending entries or in
/// the due set, never lost between them.
///
/// KEYS: deliveries, due. ARGV: group, entry id, correlation id, delay in ms.
pub const RETRY_DELIVERY_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// Moves up to ARGV[1] deliveries whose retry is due (by Redis's clock) from
/// the due set back to the stream, in one step.
///
/// KEYS: due, deliveries. ARGV: most to move. Returns how many moved.
pub const PROMOTE_DUE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
";

impl Keys {
    /// A request's callback record.
    pub fn callback(&self, id: &str) -> String {
        format!("{}:{{{id}}}:callback", self.prefix)
    }

    /// The stream of deliveries.
    pub fn deliveries(&self) -> String {
        format!("{}:{{callbacks}}:deliveries", self.prefix)
    }

    /// The deliveries waiting for a retry.
    pub fn due_deliveries(&self) -> String {
        format!("{}:{{callbacks}}:due", self.prefix)
    }
}

/// One entry of the stream of deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry's id (to acknowledge it).
    pub entry: String,
    /// The request's correlation id (the callback record's).
    pub id: String,
}

/// What a delivery needs of its callback record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRecord {
    /// Where to POST.
    pub url: String,
    /// The route's name (its URL policy).
    pub route: String,
    /// The stored reply ([`super::encode_reply`]), until the delivery ends.
    pub reply: Option<Vec<u8>>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Whether the URL may reach non-global addresses (its route's
    /// `allow_private`).
    pub allow_private: bool,
}

/// Where a delivery stands, as `GET /v1/replies/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackStatus {
    /// `pending`, `retrying`, `delivered` or `failed`; `None` before the
    /// reply is stored.
    pub state: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// A delivery's state after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// The receiver answered 2xx: done.
    Delivered,
    /// Failed; a retry is due later.
    Retrying,
    /// Failed, and the schedule ran out (or it cannot be delivered): done.
    Failed,
}

impl DeliveryState {
    /// Its name in the callback record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// The entries of an `XREADGROUP` or `XAUTOCLAIM` answer.
type Entries = Vec<(String, HashMap<String, String>)>;

fn deliveries(entries: Entries) -> Vec<Delivery> {
    entries
        .into_iter()
        .filter_map(|(entry, mut fields)| {
            Some(Delivery {
                entry,
                id: fields.remove("id")?,
            })
        })
        .collect()
}

impl Store {
    /// Records that request `id` (on route `route`) wants its reply POSTed
    /// to `url` (`allow_private`: its route lets it reach non-global
    /// addresses); kept for `redis.ttl`, like the pending record. Written
    /// before the command is produced. The record carries all a delivery
    /// needs, so that any gateway's worker can make it.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn create_callback(
        &self,
        id: &str,
        url: &str,
        route: &str,
        created_ms: u64,
        allow_private: bool,
    ) -> Result<(), StoreError> {
        let key = self.keys.callback(id);
        let ttl = i64::try_from(ttl_ms(self.ttl)).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            &key,
            &[
                ("url", url),
                ("route", route),
                ("created", &created_ms.to_string()),
                ("private", if allow_private { "1" } else { "0" }),
            ],
        )
        .ignore()
        .pexpire(&key, ttl)
        .ignore();
        self.bounded(async {
            let mut conn = self.connection();
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Creates the workers' consumer group (and the stream) unless it exists.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn ensure_delivery_group(&self) -> Result<(), StoreError> {
        let stream = self.keys.deliveries();
        self.bounded(async {
            let mut conn = self.connection();
            let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(DELIVERY_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => Ok(other?),
            }
        })
        .await
    }

    /// Moves up to `max` deliveries whose retry is due back to the stream
    /// ([`PROMOTE_DUE_LUA`]); returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn promote_due_deliveries(&self, max: usize) -> Result<usize, StoreError> {
        let script = redis::Script::new(PROMOTE_DUE_LUA);
        let mut invocation = script.key(self.keys.due_deliveries());
        invocation.key(self.keys.deliveries()).arg(max);
        self.bounded(async {
            let mut conn = self.connection();
            Ok(invocation.invoke_async::<usize>(&mut conn).await?)
        })
        .await
    }

    /// Up to `count` new deliveries for `consumer` (this node).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn read_deliveries(
        &self,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let stream = self.keys.deliveries();
        let read: Option<Vec<(String, Entries)>> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(DELIVERY_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(read
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| deliveries(entries))
            .collect())
    }

    /// Takes over up to `count` deliveries that another consumer took and
    /// left unfinished for `idle` (its gateway died), scanning the stream's
    /// pending entries from `cursor`; returns them and the next cursor
    /// (`0-0` once the scan went round).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer or answers out of contract.
    pub async fn claim_deliveries(
        &self,
        consumer: &str,
        idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(Vec<Delivery>, String), StoreError> {
        let stream = self.keys.deliveries();
        let answer: Vec<redis::Value> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(DELIVERY_GROUP)
                    .arg(consumer)
                    .arg(ttl_ms(idle))
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let mut parts = answer.into_iter();
        let malformed = || StoreError::Malformed("XAUTOCLAIM answer".into());
        let next: String = parts
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(malformed)?;
        let entries: Entries = parts
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(malformed)?;
        Ok((deliveries(entries), next))
    }

    /// The callback record of `id`, when it lives.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn callback_record(&self, id: &str) -> Result<Option<CallbackRecord>, StoreError> {
        let key = self.keys.callback(id);
        type Found = (
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            Option<u32>,
            Option<String>,
        );
        let (url, route, reply, attempts, private): Found = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("HMGET")
                    .arg(&key)
                    .arg("url")
                    .arg("route")
                    .arg("reply")
                    .arg("attempts")
                    .arg("private")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(match (url, route) {
            (Some(url), Some(route)) => Some(CallbackRecord {
                url,
                route,
                reply,
                attempts: attempts.unwrap_or(0),
                allow_private: private.as_deref() == Some("1"),
            }),
            _ => None,
        })
    }

    /// Where the delivery of `id`'s reply stands, when it has a callback.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn callback_status(&self, id: &str) -> Result<Option<CallbackStatus>, StoreError> {
        let key = self.keys.callback(id);
        let (url, state, attempts): (Option<String>, Option<String>, Option<u32>) = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("HMGET")
                    .arg(&key)
                    .arg("url")
                    .arg("state")
                    .arg("attempts")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(url.map(|_| CallbackStatus {
            state,
            attempts: attempts.unwrap_or(0),
        }))
    }

    /// Acknowledges and deletes a delivery that has nothing left to do (its
    /// callback record is gone, or it was finished before).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn drop_delivery(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let stream = self.keys.deliveries();
        let mut pipe = redis::pipe();
        ack_and_delete(&mut pipe, &stream, &delivery.entry);
        self.bounded(async {
            let mut conn = self.connection();
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Records the outcome of attempt `attempts` of `id`'s delivery, then
    /// finishes its stream entry: acknowledged and deleted when it is
    /// done, put in the due set for `retry` otherwise
    /// ([`RETRY_DELIVERY_LUA`]). A finished record drops its copy of the
    /// reply and is kept `redis.ttl` longer, for `GET /v1/replies/{id}`.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge: the entry stays with
    /// this consumer and is taken over later (at least once).
    pub async fn finish_attempt(
        &self,
        delivery: &Delivery,
        attempts: u32,
        state: DeliveryState,
        retry: Option<Duration>,
    ) -> Result<(), StoreError> {
        let key = self.keys.callback(&delivery.id);
        let stream = self.keys.deliveries();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("state")
            .arg(state.as_str())
            .arg("attempts")
            .arg(attempts)
            .ignore();
        match (state, retry) {
            (DeliveryState::Retrying, Some(delay)) => {
                // Sent as EVAL in the pipeline: no NOSCRIPT to handle.
                pipe.cmd("EVAL")
                    .arg(RETRY_DELIVERY_LUA)
                    .arg(2)
                    .arg(&stream)
                    .arg(self.keys.due_deliveries())
                    .arg(DELIVERY_GROUP)
                    .arg(&delivery.entry)
                    .arg(&delivery.id)
                    .arg(ttl_ms(delay))
                    .ignore();
            }
            _ => {
                let ttl = i64::try_from(ttl_ms(self.ttl)).unwrap_or(i64::MAX);
                pipe.hdel(&key, "reply")
                    .ignore()
                    .pexpire(&key, ttl)
                    .ignore();
                ack_and_delete(&mut pipe, &stream, &delivery.entry);
            }
        }
        self.bounded(async {
            let mut conn = self.connection();
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }
}

/// Adds to `pipe` the end of a delivery's stream entry: acknowledged for
/// the group, then deleted.
fn ack_and_delete(pipe: &mut redis::Pipeline, stream: &str, entry: &str) {
    pipe.cmd("XACK")
        .arg(stream)
        .arg(DELIVERY_GROUP)
        .arg(entry)
        .ignore()
        .cmd("XDEL")
        .arg(stream)
        .arg(entry)
        .ignore();
}
