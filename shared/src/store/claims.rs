//! Idempotency claims and rate limits: a request's claim on its
//! `Idempotency-Key`, and a caller's GCRA cell, each one script on Redis's
//! clock.

use std::time::Duration;

use super::{Store, StoreError, ttl_ms};

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's now.
    Claimed,
    /// An earlier request's claim whose command was never marked produced
    /// within its lease, with the same body: this request produces it again,
    /// under that request's correlation id.
    TookOver(String),
    /// An earlier request holds the key.
    First {
        /// Its correlation id.
        id: String,
        /// Its body's fingerprint.
        fingerprint: String,
        /// How long it may still produce its command; `None` once produced.
        lease_left: Option<Duration>,
    },
}

/// A rate limit (GCRA): one request per `interval`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Time per request at the sustained rate.
    pub interval: Duration,
    /// Most requests at once.
    pub burst: u32,
    /// The configured window (for the `RateLimit-Policy` header).
    pub window: Duration,
}

/// A rate limit's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests still allowed at once after this one.
    pub remaining: u32,
    /// When refused: how long until one is allowed.
    pub retry_after: Duration,
    /// How long until the full burst is available again.
    pub reset: Duration,
}

impl Store {
    /// Claims idempotency record `scope` for request `id` with body
    /// `fingerprint`, for `ttl`; the claimer has `lease` to produce its command
    /// and mark it ([`Store::mark_produced`]) before a retry may take over.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer or answers out of contract.
    pub async fn claim_idempotency(
        &self,
        scope: &str,
        id: &str,
        fingerprint: &str,
        ttl: Duration,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let (answer, conn): (Vec<redis::Value>, _) = self
            .bounded(async {
                let mut conn = self.connection();
                let mut invocation = self.claim_script.key(self.keys.idempotency(scope));
                invocation
                    .arg(id)
                    .arg(fingerprint)
                    .arg(ttl_ms(ttl))
                    .arg(ttl_ms(lease));
                Ok((invocation.invoke_async(&mut conn).await?, conn))
            })
            .await?;
        // A claim a failover could lose would let a retry produce again.
        self.replicated(conn, Some(&self.keys.idempotency(scope)))
            .await?;
        let text = |i: usize| -> Option<String> {
            answer
                .get(i)
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
        };
        let out_of_contract = || StoreError::Malformed("idempotency claim answer".into());
        match text(0).as_deref() {
            Some("claimed") => Ok(Claim::Claimed),
            Some("took-over") => text(1).map(Claim::TookOver).ok_or_else(out_of_contract),
            Some("first") => {
                let record = text(1).ok_or_else(out_of_contract)?;
                let left: i64 = answer
                    .get(2)
                    .and_then(|v| redis::from_redis_value(v.clone()).ok())
                    .ok_or_else(out_of_contract)?;
                let mut parts = record.splitn(3, ' ');
                let id = parts.next().unwrap_or_default().to_owned();
                let fingerprint = parts.next().unwrap_or_default().to_owned();
                Ok(Claim::First {
                    id,
                    fingerprint,
                    lease_left: u64::try_from(left).ok().map(Duration::from_millis),
                })
            }
            _ => Err(out_of_contract()),
        }
    }

    /// Marks the command of idempotency record `scope` produced (by request
    /// `id`): from now on no retry takes it over.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn mark_produced(&self, scope: &str, id: &str) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.connection();
            let mut invocation = self.produced_script.key(self.keys.idempotency(scope));
            invocation.arg(id);
            invocation.invoke_async::<i64>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Counts a request against rate limit `scope` (one round trip).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn rate_limit(
        &self,
        scope: &str,
        limit: &RateLimit,
    ) -> Result<RateDecision, StoreError> {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let interval = micros(limit.interval).max(1);
        let tolerance = interval.saturating_mul(u64::from(limit.burst.saturating_sub(1)));
        let (allowed, remaining, retry_after, reset): (i64, i64, i64, i64) = self
            .bounded(async {
                let mut conn = self.connection();
                let mut invocation = self.rate_script.key(self.keys.rate_limit(scope));
                invocation.arg(interval).arg(tolerance);
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        let duration = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: duration(retry_after),
            reset: duration(reset),
        })
    }

    /// Releases an idempotency claim whose request was not produced, so that a
    /// retry can go through.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn release_idempotency(&self, scope: &str) -> Result<(), StoreError> {
        let key = self.keys.idempotency(scope);
        self.bounded(async {
            let mut conn = self.connection();
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }
}
