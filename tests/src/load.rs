//! A load that counts every request, for fault tests: each request has a body
//! of its own and an `Idempotency-Key`, and counts as answered only when its
//! client gets that body back, directly or by picking the reply up after a
//! `504` at its `Location`. A `503` or a broken connection is retried with the
//! same key (on the next gateway, when there are several), as a client of an
//! idempotent API does. Every answer that is not the reply is kept by its
//! problem type and how long it took, so that a test can check each failure
//! is of the documented kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::{Stack, eventually};

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
    /// Answers other than `200`, `202` and `404` at a pick-up, by status and
    /// problem type (`"503 urn:replyway:problem:broker-unavailable"`; the
    /// status alone when the body is not a problem).
    pub problems: BTreeMap<String, usize>,
    /// The longest any attempt took, by the status it was answered with.
    pub slowest: BTreeMap<u16, Duration>,
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

    /// Panics with the whole tally unless every answer other than the reply
    /// (and a pick-up's `202` or `404`) is one of `allowed`, each given as
    /// `(status, problem type URI, bound)`, and no attempt answered with that
    /// status took its bound or longer.
    ///
    /// # Panics
    /// When an answer of another kind, or a slow one, was seen.
    pub fn assert_failures_only(&self, allowed: &[(u16, &str, Duration)], context: &str) {
        let kinds: Vec<String> = allowed.iter().map(|(s, t, _)| format!("{s} {t}")).collect();
        let other: Vec<&String> = self
            .problems
            .keys()
            .filter(|p| !kinds.contains(p))
            .collect();
        assert!(
            other.is_empty(),
            "{context}: answers of an undocumented kind {other:?}; problems {:?}; statuses {:?}",
            self.problems,
            self.statuses,
        );
        for (status, _, bound) in allowed {
            if let Some(took) = self.slowest.get(status) {
                assert!(
                    took < bound,
                    "{context}: a {status} took {took:?} (bound {bound:?}); slowest {:?}",
                    self.slowest
                );
            }
        }
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

impl Load {
    /// `/echo` on every gateway of `stack`, 90 s per request, bodies and keys
    /// tagged with the stack's prefix and `tag`.
    pub fn on(stack: &Stack, tag: &str, concurrency: usize) -> Self {
        Self {
            gateways: (0..stack.gateways.len())
                .map(|i| stack.url(i, ""))
                .collect(),
            path: "/echo".into(),
            concurrency,
            deadline: Duration::from_secs(90),
            tag: format!("{}-{tag}", stack.prefix),
        }
    }

    /// Runs this load in the background until [`Background::finish`].
    pub fn spawn(self, http: reqwest::Client) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn(run(http, self, Arc::clone(&stop), 1_000_000));
        Background { stop, handle }
    }
}

/// A load running in the background.
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Tally>,
}

impl Background {
    /// Sends no more requests, waits for those in flight and counts.
    ///
    /// # Errors
    /// When the load's task panicked.
    pub async fn finish(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.handle.await?)
    }
}

/// `200` answers gateway `i` of `stack` has given so far (any route), from
/// its `/metrics`; `None` while the page cannot be read.
pub async fn answers(stack: &Stack, i: usize) -> Option<u64> {
    let total = stack
        .metric_sum(
            &stack.gateway_admin[i],
            "replyway_gateway_requests_total",
            &[("status", "200")],
        )
        .await?;
    // A counter: a whole number.
    Some(total as u64)
}

/// Waits (at most 60 s) until gateway `i` has given `n` more `200` answers
/// than `since` (a value of [`answers`]).
pub async fn answers_grow(stack: &Stack, i: usize, since: u64, n: u64) -> bool {
    eventually(Duration::from_secs(60), || async {
        answers(stack, i).await.is_some_and(|now| now >= since + n)
    })
    .await
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
        for (problem, count) in outcome.problems {
            *tally.problems.entry(problem).or_default() += count;
        }
        for (status, took) in outcome.slowest {
            let slowest = tally.slowest.entry(status).or_default();
            *slowest = (*slowest).max(took);
        }
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
    problems: BTreeMap<String, usize>,
    slowest: BTreeMap<u16, Duration>,
}

async fn one(http: reqwest::Client, load: Arc<Load>, n: usize) -> Outcome {
    let body = format!("{}-{n}", load.tag);
    let started = Instant::now();
    let mut outcome = Outcome {
        result: Answer::None(format!("{body}: never sent")),
        statuses: BTreeMap::new(),
        connection_errors: 0,
        problems: BTreeMap::new(),
        slowest: BTreeMap::new(),
    };
    let mut gateway = n % load.gateways.len();
    let mut pick_up: Option<String> = None;
    while started.elapsed() < load.deadline {
        let left = load.deadline.saturating_sub(started.elapsed());
        let attempt = Instant::now();
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
        let slowest = outcome.slowest.entry(status).or_default();
        *slowest = (*slowest).max(attempt.elapsed());
        let expected = matches!(status, 200) || (pick_up.is_some() && matches!(status, 202 | 404));
        if !expected {
            let kind = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|p| p["type"].as_str().map(str::to_owned));
            let problem = match kind {
                Some(kind) => format!("{status} {kind}"),
                None => status.to_string(),
            };
            *outcome.problems.entry(problem).or_default() += 1;
        }
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
