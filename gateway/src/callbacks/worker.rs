//! Every gateway's delivery worker: reads the stream of deliveries through
//! the workers' consumer group (its consumer name is the node id), POSTs
//! each reply to its callback URL, and acknowledges a delivery only once the
//! receiver answered 2xx or the schedule ran out.
//!
//! Each tick takes at most `batch` deliveries: first the retries that are
//! due (moved back from the due set), then those another worker took and
//! left unfinished for `claim_after` (its gateway died; `XAUTOCLAIM`), then
//! new ones. With nothing to do it sleeps `poll_interval`. A failed attempt
//! puts its delivery in the due set until its retry; a worker that dies
//! mid-attempt leaves it in the stream's pending entries, where another
//! worker takes it over: at least once, with the same `webhook-id`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, header};
use futures::StreamExt as _;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use url::Url;

use replyway_shared::backoff::Backoff;
use replyway_shared::store::{Delivery, DeliveryState, Store, decode_reply};

use crate::metrics::OutcomeLabel;
use crate::routes::Route;
use crate::state::AppState;

use super::config::CallbackSettings;
use super::signing::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, WebhookSecret};
use super::url_safety::{Refused, SafeResolver, UrlPolicy};

/// How one attempt ended.
#[derive(Debug)]
enum Attempted {
    /// The receiver answered with this status.
    Answered(u16),
    /// No answer within `timeout`.
    TimedOut,
    /// The URL's address is refused (now).
    Refused(Refused),
    /// No answer (connection refused, TLS, …).
    Failed(String),
    /// It cannot be delivered, ever (the body is too large, the stored
    /// reply or the URL malformed).
    Impossible(&'static str),
}

impl Attempted {
    /// What happened, for the log.
    fn detail(&self) -> String {
        match self {
            Self::Answered(status) => format!("answered {status}"),
            Self::TimedOut => "no answer in time".to_owned(),
            Self::Refused(refused) => refused.to_string(),
            Self::Failed(e) => e.clone(),
            Self::Impossible(why) => (*why).to_owned(),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Answered(s) if (200..300).contains(s) => "2xx",
            Self::Answered(s) if (300..400).contains(s) => "3xx",
            Self::Answered(s) if (400..500).contains(s) => "4xx",
            Self::Answered(_) => "5xx",
            Self::TimedOut => "timeout",
            Self::Refused(_) | Self::Impossible(_) => "refused",
            Self::Failed(_) => "error",
        }
    }
}

/// The delivery worker of one gateway.
pub struct Worker {
    state: AppState,
    settings: CallbackSettings,
    secret: WebhookSecret,
    /// Resolves through [`SafeResolver`]: global addresses only.
    strict: reqwest::Client,
    /// For routes with `allow_private`.
    open: reqwest::Client,
}

/// Starts the worker of the gateway with `state`, when a route takes
/// callbacks; it runs until `stop` is cancelled (an attempt in flight is
/// then dropped: its delivery is taken over later).
pub fn spawn(state: &AppState, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let settings = state.settings.callbacks.clone();
    if !state.routes.routes().iter().any(|r| r.callbacks.is_some()) {
        return None;
    }
    let secret = match settings.check(true) {
        Ok(Some(secret)) => secret,
        // Checked at start already.
        _ => return None,
    };
    let client = |resolver: Option<SafeResolver>| {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("replyway-gateway/", env!("CARGO_PKG_VERSION")));
        match resolver {
            Some(r) => builder.dns_resolver(Arc::new(r)),
            None => builder,
        }
        .build()
    };
    let within = settings.timeout.min(Duration::from_secs(5));
    let (strict, open) = match (client(Some(SafeResolver { within })), client(None)) {
        (Ok(strict), Ok(open)) => (strict, open),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "the callback client could not be built; no callbacks are delivered");
            return None;
        }
    };
    let worker = Worker {
        state: state.clone(),
        settings,
        secret,
        strict,
        open,
    };
    Some(tokio::spawn(worker.run(stop)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Worker {
    fn store(&self) -> &Store {
        self.state.node.store()
    }

    async fn run(self, stop: CancellationToken) {
        let consumer = self.state.node.id().to_owned();
        let mut backoff = Backoff::default();
        let mut group_ready = false;
        let mut cursor = "0-0".to_owned();
        tracing::info!(consumer = %consumer, "callback delivery worker started");
        while !stop.is_cancelled() {
            let tick = async {
                if !group_ready {
                    self.store().ensure_delivery_group().await?;
                    group_ready = true;
                }
                self.take(&consumer, &mut cursor).await
            };
            let taken = tokio::select! {
                taken = tick => taken,
                () = stop.cancelled() => break,
            };
            let taken = match taken {
                Ok(taken) => {
                    backoff.reset();
                    taken
                }
                Err(e) => {
                    // The stream or its group may be gone (Redis restarted
                    // empty): make sure of it again.
                    group_ready = false;
                    tracing::warn!(error = %e, retry_in = ?backoff.next(), "callback deliveries could not be read");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            let full = taken.len() >= self.settings.batch;
            if taken.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
            let work = futures::stream::iter(taken)
                .for_each_concurrent(self.settings.batch, |delivery| self.deliver(delivery));
            tokio::select! {
                () = work => {}
                () = stop.cancelled() => break,
            }
            if !full {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
        tracing::info!("callback delivery worker stopped");
    }

    /// One tick's deliveries, at most `batch`: due retries go back to the
    /// stream, abandoned ones are taken over, then new ones are read.
    async fn take(
        &self,
        consumer: &str,
        cursor: &mut String,
    ) -> Result<Vec<Delivery>, replyway_shared::store::StoreError> {
        let batch = self.settings.batch;
        self.store().promote_due_deliveries(batch).await?;
        let (mut taken, next) = self
            .store()
            .claim_deliveries(consumer, self.settings.claim_after, cursor, batch)
            .await?;
        *cursor = next;
        for delivery in &taken {
            tracing::info!(correlation_id = %delivery.id, "taking over a callback delivery left unfinished");
        }
        if taken.len() < batch {
            taken.extend(
                self.store()
                    .read_deliveries(consumer, batch - taken.len())
                    .await?,
            );
        }
        Ok(taken)
    }

    fn count(&self, outcome: &'static str) {
        self.state
            .metrics
            .callback_deliveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Makes one attempt of `delivery` and records what came of it.
    async fn deliver(&self, delivery: Delivery) {
        let id = delivery.id.as_str();
        let record = match self.store().callback_record(id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::warn!(correlation_id = %id, "a callback delivery without its record: dropped");
                self.drop_delivery(&delivery).await;
                return;
            }
            Err(e) => {
                tracing::warn!(correlation_id = %id, error = %e, "callback record unreadable; the delivery is taken up again later");
                return;
            }
        };
        let Some(stored) = record.reply else {
            // Finished before (a delivery taken over as its first worker
            // finished it).
            self.drop_delivery(&delivery).await;
            return;
        };
        let attempt = record.attempts + 1;
        let route = self
            .state
            .routes
            .routes()
            .iter()
            .find(|r| r.name == record.route);
        let policy = UrlPolicy {
            allow_private: record.allow_private,
            ..UrlPolicy::default()
        };
        let attempted = self.attempt(id, &record.url, &policy, route, &stored).await;
        self.state
            .metrics
            .callback_attempts
            .get_or_create(&OutcomeLabel {
                outcome: attempted.label(),
            })
            .inc();
        let (state, retry) = match &attempted {
            Attempted::Answered(status) if (200..300).contains(status) => {
                (DeliveryState::Delivered, None)
            }
            Attempted::Impossible(_) => (DeliveryState::Failed, None),
            _ => {
                let retry = self.settings.retry_after(attempt, rand::rng().random());
                match retry {
                    Some(delay) => (DeliveryState::Retrying, Some(delay)),
                    None => (DeliveryState::Failed, None),
                }
            }
        };
        tracing::info!(
            correlation_id = %id,
            attempt,
            result = %attempted.detail(),
            state = state.as_str(),
            retry_in = ?retry,
            "callback attempt"
        );
        match self
            .store()
            .finish_attempt(&delivery, attempt, state, retry)
            .await
        {
            Ok(()) => self.count(match state {
                DeliveryState::Delivered => "delivered",
                DeliveryState::Retrying => "retried",
                DeliveryState::Failed => "failed",
            }),
            Err(e) => {
                tracing::warn!(correlation_id = %id, error = %e, "callback attempt not recorded; the delivery is taken up again later");
            }
        }
    }

    async fn drop_delivery(&self, delivery: &Delivery) {
        match self.store().drop_delivery(delivery).await {
            Ok(()) => self.count("dropped"),
            Err(e) => {
                tracing::warn!(correlation_id = %delivery.id, error = %e, "callback delivery not dropped");
            }
        }
    }

    /// POSTs the reply to `url` (checked against its route's allowlist at
    /// request time; its addresses are checked again here, as `policy`
    /// says), signed. `route`, when this gateway has it, narrows the reply's
    /// headers as its `reply_headers` do.
    async fn attempt(
        &self,
        id: &str,
        url: &str,
        policy: &UrlPolicy,
        route: Option<&Route>,
        stored: &[u8],
    ) -> Attempted {
        let Ok(reply) = decode_reply(stored) else {
            return Attempted::Impossible("the stored reply is malformed");
        };
        let url = match Url::parse(url) {
            Ok(url) => url,
            Err(_) => return Attempted::Impossible("the callback URL is malformed"),
        };
        if let Err(refused) = policy.check_literal(&url) {
            return Attempted::Refused(refused);
        }
        let timestamp = unix_now();
        let body = super::payload::body(id, &reply, route, timestamp);
        if body.len() > self.settings.max_body {
            return Attempted::Impossible("the callback body is over callbacks.max_body");
        }
        let signature = self.secret.sign(id, timestamp, &body);
        let client = if policy.allow_private {
            &self.open
        } else {
            &self.strict
        };
        let sent = client
            .post(url)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(WEBHOOK_ID, id)
            .header(WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(WEBHOOK_SIGNATURE, signature)
            .header(crate::CORRELATION_ID.as_str(), id)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => Attempted::Answered(response.status().as_u16()),
            Err(e) if e.is_timeout() => Attempted::TimedOut,
            Err(e) => match super::url_safety::refused_in(&e) {
                Some(refused) => Attempted::Refused(refused),
                None => Attempted::Failed(error_chain(&e)),
            },
        }
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
