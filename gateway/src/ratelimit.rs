//! Per-caller rate limits on routes, shared by every replica: the configured
//! limit, the caller it counts, the decision (one Redis round trip, in
//! `Store::rate_limit`, a GCRA cell per route and caller) and the `RateLimit`
//! response headers.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use replyway_shared::settings::InvalidSetting;
use replyway_shared::store::{RateDecision, RateLimit, Store, StoreError};

use crate::digest::digest;

/// A route's rate limit: `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per `per`.
    pub requests: u32,
    /// The window of `requests`.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Most requests at once (default `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// The checked limit (`at` names the setting in errors).
    ///
    /// # Errors
    /// [`InvalidSetting`] when the rate is zero, above 1000/s or over more than a day.
    pub fn parse(&self, at: &str) -> Result<RateLimit, InvalidSetting> {
        let burst = self.burst.unwrap_or(self.requests);
        if self.requests == 0 || burst == 0 {
            return Err(InvalidSetting::new(
                at,
                "requests and burst must be at least 1",
            ));
        }
        let interval = self.per / self.requests;
        if interval < Duration::from_micros(1000) || self.per > Duration::from_secs(86_400) {
            return Err(InvalidSetting::new(
                at,
                "at most 1000 requests per second, over at most a day",
            ));
        }
        Ok(RateLimit {
            interval,
            burst,
            window: self.per,
        })
    }
}

/// A rate limit's decision, for the response headers.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    /// What the limit said.
    pub decision: RateDecision,
    /// The limit.
    pub limit: RateLimit,
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateInfo {
    /// `RateLimit` and `RateLimit-Policy` (IETF draft) headers.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        let value = format!(
            "limit={}, remaining={}, reset={}",
            self.limit.burst,
            self.decision.remaining,
            ceil_secs(self.decision.reset)
        );
        let policy = format!("{};w={}", self.limit.burst, ceil_secs(self.limit.window));
        for (name, value) in [("ratelimit", value), ("ratelimit-policy", policy)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }

    /// Seconds until a refused caller may try again (`Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.decision.retry_after)
    }
}

/// Why a request did not pass its rate limit.
#[derive(Debug)]
pub enum Refused {
    /// Over the limit.
    Limited(RateInfo),
    /// Redis did not answer.
    Redis(StoreError),
}

/// Counts one request of `caller` (see [`caller`]) against the limit of the
/// route named `route`: one Redis round trip.
///
/// # Errors
/// [`Refused`].
pub async fn check(
    store: &Store,
    route: &str,
    limit: &RateLimit,
    caller: &str,
) -> Result<RateInfo, Refused> {
    let cell = digest(&[route.as_bytes(), caller.as_bytes()]);
    let decision = store
        .rate_limit(&cell, limit)
        .await
        .map_err(Refused::Redis)?;
    let info = RateInfo {
        decision,
        limit: *limit,
    };
    if decision.allowed {
        Ok(info)
    } else {
        Err(Refused::Limited(info))
    }
}

/// Whom a limit counts: the principal when authenticated, else the client's
/// address — the first address in `client_ip_header` when a trusted proxy sets
/// it, else the connection's peer.
pub fn caller(
    principal: Option<&str>,
    client_ip_header: Option<&str>,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> String {
    if let Some(principal) = principal {
        return format!("principal:{principal}");
    }
    let address = client_ip_header
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_owned)
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_else(|| "unknown".into());
    format!("address:{address}")
}
