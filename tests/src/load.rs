//! A load that counts every request, for fault tests: each request has a body
//! of its own and an `Idempotency-Key`, and counts as answered only when its
//! client gets that body back, directly or by picking the reply up after a
//! `504` at its `Location`. A `503` or a broken connection is retried with the
//! same key (on the next gateway, when there are several), as a client of an
//! idempotent API does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

/// What became of the requests of a load.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests sent.
    pub sent: usize,
    /// Answered with their own body.
    pub answered: usize,
    /// Answered with another body (never acceptable).
    pub wrong: Vec<String>,
    /// Not answered before their deadline, with the last thing seen.
    pub unanswered: Vec<String>,
    /// Answers by status, every attempt counted (retries and pick-ups too).
    pub statuses: BTreeMap<u16, usize>,
    /// Attempts that failed without an HTTP answer (connection refused or cut).
    pub connection_errors: usize,
}

impl Tally {
    /// Panics with the whole tally unless every request was answered with its
    /// own body.
    ///
    /// # Panics
    /// When a request is unanswered or got another's body.
    pub fn assert_all_answered(&self, context: &str) {
        assert!(
            self.wrong.is_empty() && self.unanswered.is_empty() && self.answered == self.sent,
            "{context}: {} of {} answered, {} wrong, {} unanswered: {:?}; statuses {:?}; connection errors {}",
            self.answered,
            self.sent,
            self.wrong.len(),
            self.unanswered.len(),
            self.wrong
                .iter()
                .chain(&self.unanswered)
                .take(10)
                .collect::<Vec<_>>(),
            self.statuses,
            self.connection_errors,
        );
    }
}

/// How a load runs.
#[derive(Debug, Clone)]
pub struct Load {
    /// Gateway base URLs (`http://addr`); a request starts on `gateways[i % n]`
    /// and moves to the next one after a connection error.
    pub gateways: Vec<String>,
    /// Path of the route (`/echo`).
    pub path: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Longest time one request may take to be answered, retries included.
    pub deadline: Duration,
    /// Prefix of bodies and idempotency keys, unique to the test.
    pub tag: String,
}

/// Sends requests with `load.concurrency` in flight until `stop` is set (or
/// `max` requests were sent), waits for every one of them, and counts.
pub async fn run(http: reqwest::Client, load: Load, stop: Arc<AtomicBool>, max: usize) -> Tally {
    let load = Arc::new(load);
    let outcomes: Vec<Outcome> = futures::stream::iter(0..max)
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)))
        .map(|n| one(http.clone(), Arc::clone(&load), n))
        .buffer_unordered(load.concurrency)
        .collect()
        .await;
    let mut tally = Tally::default();
    for outcome in outcomes {
        tally.sent += 1;
        for (status, count) in outcome.statuses {
            *tally.statuses.entry(status).or_default() += count;
        }
        tally.connection_errors += outcome.connection_errors;
        match outcome.result {
            Answer::Own => tally.answered += 1,
            Answer::Wrong(what) => tally.wrong.push(what),
            Answer::None(what) => tally.unanswered.push(what),
        }
    }
    tally
}

enum Answer {
    Own,
    Wrong(String),
    None(String),
}

struct Outcome {
    result: Answer,
    statuses: BTreeMap<u16, usize>,
    connection_errors: usize,
}

async fn one(http: reqwest::Client, load: Arc<Load>, n: usize) -> Outcome {
    let body = format!("{}-{n}", load.tag);
    let started = Instant::now();
    let mut outcome = Outcome {
        result: Answer::None(format!("{body}: never sent")),
        statuses: BTreeMap::new(),
        connection_errors: 0,
    };
    let mut gateway = n % load.gateways.len();
    let mut pick_up: Option<String> = None;
    while started.elapsed() < load.deadline {
        let left = load.deadline.saturating_sub(started.elapsed());
        let sent = match &pick_up {
            // After a 504: the reply is collected later; ask for it.
            Some(location) => http
                .get(format!("{}{location}", load.gateways[gateway]))
                .header("prefer", format!("wait={}", left.as_secs().clamp(1, 5)))
                .timeout(left.min(Duration::from_secs(10)))
                .send(),
            None => http
                .post(format!("{}{}", load.gateways[gateway], load.path))
                .header("idempotency-key", body.as_str())
                .body(body.clone())
                .timeout(left.min(Duration::from_secs(30)))
                .send(),
        };
        let response = match sent.await {
            Ok(r) => r,
            Err(e) => {
                outcome.connection_errors += 1;
                outcome.result = Answer::None(format!("{body}: {e}"));
                gateway = (gateway + 1) % load.gateways.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        *outcome.statuses.entry(status).or_default() += 1;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        match status {
            200 if text == body => {
                outcome.result = Answer::Own;
                return outcome;
            }
            200 => {
                outcome.result = Answer::Wrong(format!("{body} got {text:?}"));
                return outcome;
            }
            504 if location.is_some() => pick_up = location,
            // Still pending at the pick-up: ask again.
            202 if pick_up.is_some() => {}
            // Gone from Redis (it restarted empty): send it again, same key.
            404 if pick_up.is_some() => pick_up = None,
            503 => {
                // Nothing half-done: retry with the same key (a pick-up that
                // met a 503 asks again too).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => {
                outcome.result = Answer::None(format!("{body}: {status} {text}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        outcome.result = Answer::None(format!("{body}: last {status} {text}"));
    }
    outcome
}
