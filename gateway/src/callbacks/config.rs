//! The settings of callbacks: the gateway's `[callbacks]` section (secret,
//! retry schedule, bounds of an attempt, the delivery worker's pace) and a
//! route's `callbacks` option (who may be called back), both checked once at
//! start.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use replyway_shared::settings::{InvalidSetting, Secret};

use super::signing::WebhookSecret;
use super::url_safety::{HostPattern, UrlPolicy};

/// The gateway's `[callbacks]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackSettings {
    /// The signing secret, `whsec_<base64>` (Standard Webhooks); required as
    /// soon as a route takes callbacks. Receivers verify with the same.
    pub secret: Option<Secret>,
    /// The pauses before each retry after a failed attempt (the first attempt
    /// is made at once); each drawn within ±`jitter` of its value. Past the
    /// last one, the delivery has failed.
    #[serde(with = "durations")]
    pub schedule: Vec<Duration>,
    /// Fraction (0 to 1) by which each pause of `schedule` is drawn longer or
    /// shorter, so that receivers that came back are not hit all at once.
    pub jitter: f64,
    /// Longest time one attempt may take (connect, send, the receiver's
    /// answer).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest POSTed body in bytes; a reply whose callback body is larger
    /// fails without an attempt.
    pub max_body: usize,
    /// How long a delivery may stay with a worker that took it without being
    /// finished before another worker takes it over (its gateway died): must
    /// exceed `timeout`.
    #[serde(with = "humantime_serde")]
    pub claim_after: Duration,
    /// How often each gateway's worker looks for new, due and abandoned
    /// deliveries.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most deliveries a worker takes at a time (and attempts at once).
    pub batch: usize,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            secret: None,
            schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(5 * 60),
                Duration::from_secs(30 * 60),
            ],
            jitter: 0.1,
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
            claim_after: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            batch: 16,
        }
    }
}

/// A list of durations as humantime strings (`["5s", "30s"]`).
mod durations {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let wrapped: Vec<Serde<Duration>> = list.iter().copied().map(Serde::from).collect();
        wrapped.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let wrapped = Vec::<Serde<Duration>>::deserialize(d)?;
        Ok(wrapped.into_iter().map(Serde::into_inner).collect())
    }
}

impl CallbackSettings {
    /// Checks the section; `needed` when a route takes callbacks (then the
    /// secret must be set). Returns the parsed secret.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the bad setting.
    pub fn check(&self, needed: bool) -> Result<Option<WebhookSecret>, InvalidSetting> {
        let secret = match &self.secret {
            Some(s) => Some(
                WebhookSecret::parse(s.expose())
                    .map_err(|reason| InvalidSetting::new("callbacks.secret", reason))?,
            ),
            None if needed => {
                return Err(InvalidSetting::new(
                    "callbacks.secret",
                    "must be set (whsec_<base64>) when a route has callbacks",
                ));
            }
            None => None,
        };
        if self.schedule.len() > 20 || self.schedule.iter().any(Duration::is_zero) {
            return Err(InvalidSetting::new(
                "callbacks.schedule",
                "at most 20 pauses, each more than 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(InvalidSetting::new(
                "callbacks.jitter",
                "must be from 0 to 1",
            ));
        }
        if self.timeout.is_zero() {
            return Err(InvalidSetting::new(
                "callbacks.timeout",
                "must be more than 0",
            ));
        }
        if self.claim_after <= self.timeout {
            return Err(InvalidSetting::new(
                "callbacks.claim_after",
                "must exceed callbacks.timeout: an attempt in flight is not taken over",
            ));
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(InvalidSetting::new(
                "callbacks.poll_interval",
                "must be at least 10ms",
            ));
        }
        if !(1..=1000).contains(&self.batch) {
            return Err(InvalidSetting::new("callbacks.batch", "must be 1 to 1000"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body) {
            return Err(InvalidSetting::new(
                "callbacks.max_body",
                "must be 1 KiB to 64 MiB",
            ));
        }
        Ok(secret)
    }

    /// The pause before the retry that follows failed attempt `attempt`
    /// (1-based), drawn within the jitter; `None` once the schedule ran out.
    /// `draw` is a number in `0..1`.
    pub fn retry_after(&self, attempt: u32, draw: f64) -> Option<Duration> {
        let base = *self
            .schedule
            .get(usize::try_from(attempt).ok()?.checked_sub(1)?)?;
        let factor = 1.0 + self.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }
}

/// A route's `callbacks` option: present, the route delivers replies of
/// `Prefer: respond-async` requests to a callback URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCallbacksConfig {
    /// A fixed callback URL for every `respond-async` request of the route;
    /// then a client's `Callback-URL` is refused. Unset: the client names it.
    #[serde(default)]
    pub url: Option<String>,
    /// Hosts a client's `Callback-URL` may name: exact names (or IP
    /// literals) and `*.example.org` for any subdomain of `example.org`.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Also plain `http` URLs (for local runs); default `https` only.
    #[serde(default)]
    pub allow_http: bool,
    /// Also private, loopback, link-local and other non-global addresses
    /// (for local runs); default refused.
    #[serde(default)]
    pub allow_private: bool,
}

/// A route's callbacks, checked.
#[derive(Debug, Clone)]
pub struct RouteCallbacks {
    /// The fixed URL, when the route has one.
    pub url: Option<url::Url>,
    /// Who may be called back.
    pub policy: UrlPolicy,
}

impl RouteCallbacksConfig {
    /// Checks the option (`at` names its fields in errors).
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the bad field.
    pub fn parse(&self, at: &dyn Fn(&str) -> String) -> Result<RouteCallbacks, InvalidSetting> {
        let mut allow_hosts = Vec::new();
        for host in &self.allow_hosts {
            allow_hosts.push(HostPattern::parse(host).map_err(|reason| {
                InvalidSetting::new(at("callbacks.allow_hosts"), format!("{host:?}: {reason}"))
            })?);
        }
        let policy = UrlPolicy {
            allow_hosts,
            allow_http: self.allow_http,
            allow_private: self.allow_private,
        };
        let url = match &self.url {
            Some(url) => Some(
                policy
                    .check_fixed(url)
                    .map_err(|e| InvalidSetting::new(at("callbacks.url"), e.to_string()))?,
            ),
            None if policy.allow_hosts.is_empty() => {
                return Err(InvalidSetting::new(
                    at("callbacks.allow_hosts"),
                    "must name at least one host when callbacks has no url",
                ));
            }
            None => None,
        };
        Ok(RouteCallbacks { url, policy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_runs_out_after_its_last_pause() {
        let settings = CallbackSettings {
            jitter: 0.0,
            ..CallbackSettings::default()
        };
        assert_eq!(settings.retry_after(0, 0.5), None);
        assert_eq!(settings.retry_after(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(settings.retry_after(2, 0.9), Some(Duration::from_secs(30)));
        assert_eq!(
            settings.retry_after(4, 0.1),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(settings.retry_after(5, 0.5), None);
    }

    #[test]
    fn jitter_keeps_each_pause_within_its_fraction() {
        let settings = CallbackSettings::default();
        let low = settings.retry_after(2, 0.0).unwrap();
        let mid = settings.retry_after(2, 0.5).unwrap();
        let high = settings.retry_after(2, 1.0).unwrap();
        assert_eq!(low, Duration::from_secs(27));
        assert_eq!(mid, Duration::from_secs(30));
        assert_eq!(high, Duration::from_secs(33));
    }

    #[test]
    fn defaults_check_and_a_needed_secret_is_required() {
        assert!(CallbackSettings::default().check(false).unwrap().is_none());
        let e = CallbackSettings::default().check(true).unwrap_err();
        assert_eq!(e.setting, "callbacks.secret");
        let bad = CallbackSettings {
            claim_after: Duration::from_secs(5),
            ..CallbackSettings::default()
        };
        assert_eq!(
            bad.check(false).unwrap_err().setting,
            "callbacks.claim_after"
        );
    }

    #[test]
    fn make_runs_echo_route_takes_loopback_callbacks() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/local/gateway.toml");
        let settings: crate::Settings =
            replyway_shared::settings::load(&crate::Settings::default(), Some(file.as_ref()))
                .unwrap();
        assert!(settings.callbacks.check(true).unwrap().is_some());
        // The route alone: the file's schema paths are relative to the
        // directory `make run` starts in.
        let (i, config) = settings
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.method == "POST" && r.path == "/echo")
            .unwrap();
        let echo = crate::routes::Route::from_config(i, config).unwrap();
        let callbacks = echo.callbacks.as_ref().expect("POST /echo takes callbacks");
        assert!(callbacks.policy.check("http://127.0.0.1:9999/hook").is_ok());
        assert!(callbacks.policy.check("http://localhost:9999/hook").is_ok());
        assert!(callbacks.policy.check("http://example.com/hook").is_err());
    }

    #[test]
    fn a_route_without_url_needs_hosts() {
        let at = |f: &str| format!("routes[0].{f}");
        let none = RouteCallbacksConfig::default();
        assert_eq!(
            none.parse(&at).unwrap_err().setting,
            "routes[0].callbacks.allow_hosts"
        );
        let fixed = RouteCallbacksConfig {
            url: Some("http://hooks.example.com/x".into()),
            ..RouteCallbacksConfig::default()
        };
        assert_eq!(
            fixed.parse(&at).unwrap_err().setting,
            "routes[0].callbacks.url"
        );
        let ok = RouteCallbacksConfig {
            allow_hosts: vec!["hooks.example.com".into(), "*.example.org".into()],
            ..RouteCallbacksConfig::default()
        };
        assert_eq!(ok.parse(&at).unwrap().policy.allow_hosts.len(), 2);
    }
}
