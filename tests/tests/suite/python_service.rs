//! A backend service written in Python (`examples/python/greeter.py`, on
//! confluent-kafka from PyPI, no Replyway code) serves a gateway route through
//! the documented record contract alone: HTTP → gateway → Kafka → Python →
//! Kafka → collector → Redis → gateway → HTTP.
//!
//! The interpreter is `$REPLYWAY_PYTHON`, else `$REPLYWAY_PYTHON_VENV/bin/python`,
//! else `<workspace>/.venv/bin/python`, as `scripts/install-python.sh` makes it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::join_all;
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use replyway_gateway::routes::RouteConfig;
use replyway_tests::{Stack, StackOptions, eventually, produce};

type TestResult = anyhow::Result<()>;

/// Request topic of the Python service.
/// The Python service's topic of the stack with key prefix `prefix`.
fn py_topic(prefix: &str) -> String {
    format!("{prefix}.py.requests")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .to_owned()
}

/// The Python interpreter with confluent-kafka installed.
fn python() -> anyhow::Result<PathBuf> {
    if let Some(python) = std::env::var_os("REPLYWAY_PYTHON") {
        return Ok(python.into());
    }
    let venv = std::env::var_os("REPLYWAY_PYTHON_VENV")
        .map_or_else(|| workspace_root().join(".venv"), PathBuf::from);
    let python = venv.join("bin/python");
    anyhow::ensure!(
        python.is_file(),
        "no Python interpreter at {}: run scripts/install-python.sh \
         (or set REPLYWAY_PYTHON to a python with confluent-kafka)",
        python.display()
    );
    Ok(python)
}

/// `POST /greet/{lang}` → the Python service's topic, as a configuration file
/// would have it (fields left out take their defaults).
fn python_route(settings: &mut replyway_gateway::Settings) {
    let route: RouteConfig = serde_json::from_value(json!({
        "method": "POST",
        "path": "/greet/{lang}",
        "topic": py_topic(&settings.redis.prefix),
        "timeout": "20s",
        "body_limit": 64 * 1024,
        "forward_headers": ["x-request-id"],
    }))
    .expect("a valid route");
    settings.routes.push(route);
}

/// `examples/python/greeter.py` as a child process, killed when dropped.
struct PythonService {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    log: tempfile::NamedTempFile,
}

impl PythonService {
    /// Starts it against the stack's broker and waits for its "ready" line
    /// (printed once it has joined its consumer group).
    async fn start(stack: &Stack) -> anyhow::Result<Self> {
        let python = python()?;
        let log = tempfile::NamedTempFile::new()?;
        let mut child = Command::new(&python)
            .arg(workspace_root().join("examples/python/greeter.py"))
            .args(["--bootstrap-servers", &stack.broker.bootstrap()])
            .args(["--topic", &py_topic(&stack.prefix)])
            .args(["--group-id", &format!("{}-python", stack.prefix)])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen()?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut service = Self {
            child,
            stdout: BufReader::new(stdout).lines(),
            log,
        };
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = service.stdout.next_line().await? {
                if line.trim() == "ready" {
                    return anyhow::Ok(true);
                }
            }
            Ok(false) // stdout closed: the process ended
        })
        .await;
        match ready {
            Ok(Ok(true)) => Ok(service),
            Ok(Ok(false)) => {
                let status = service.child.wait().await?;
                bail!(
                    "the Python service exited ({status}) before it was ready; its log:\n{}",
                    service.log()
                )
            }
            Ok(Err(e)) => Err(e),
            Err(_) => bail!(
                "the Python service was not ready within 60 s; its log:\n{}\nbroker log:\n{}",
                service.log(),
                stack.broker.log()
            ),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, then waits for it to exit (it closes its consumer first).
    async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let pid = self
            .child
            .id()
            .context("the Python service already exited")?;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(killed.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the Python service did not exit within 20 s of SIGTERM; its log:\n{}",
                    self.log()
                )
            })??;
        Ok(status)
    }
}

/// A stack with the Python route and its topic, and the Python service on it.
async fn start() -> anyhow::Result<(Stack, PythonService)> {
    // Fail before starting anything when the interpreter is missing.
    python()?;
    let stack = Stack::start(StackOptions {
        gateway: python_route,
        ..StackOptions::default()
    })
    .await?;
    stack
        .broker
        .create_topics(&[&py_topic(&stack.prefix)], 3)
        .await?;
    let service = PythonService::start(&stack).await?;
    Ok((stack, service))
}

/// Stops the Python service (it must exit cleanly), then the stack.
async fn finish(stack: Stack, service: PythonService) -> TestResult {
    let log = service.log();
    let status = service.stop().await?;
    assert!(
        status.success(),
        "the Python service exited with {status} after SIGTERM; its log:\n{log}"
    );
    stack.shutdown().await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn record_header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_service_answers_a_greeting_through_the_record_contract() -> TestResult {
    let (stack, service) = start().await?;

    // A record that is no command (no correlation-id, no reply-to) is skipped
    // and does not stop the service.
    let producer = stack.broker.producer()?;
    produce(
        &producer,
        &py_topic(&stack.prefix),
        None,
        &[],
        br#"{"name":"nobody"}"#,
    )
    .await?;

    let response = stack
        .http
        .post(stack.url(0, "/greet/fr"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-42")
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .with_context(|| format!("POST /greet/fr; Python log:\n{}", service.log()))?;
    assert_eq!(response.status(), 200, "Python log:\n{}", service.log());
    assert_eq!(header(&response, "content-type"), "application/json");
    // header-x-served-by on the reply record → x-served-by on the response.
    assert_eq!(header(&response, "x-served-by"), "python");
    let id = header(&response, "correlation-id").to_owned();
    assert!(!id.is_empty(), "no correlation-id header");
    let body: Value = response.json().await?;
    assert_eq!(
        body,
        json!({
            "greeting": "Hello, Ada!",
            "served_by": "python",
            "correlation_id": id,
            // param-lang and the forwarded header-x-request-id reached Python.
            "lang": "fr",
            "request_id": "req-42",
        })
    );

    // The reply record as Python produced it: key and headers of the contract.
    let replies = stack
        .read_topic(&stack.reply_topic, Duration::from_secs(20), |r| {
            r.iter()
                .any(|m| record_header(m, "correlation-id").as_deref() == Some(&id))
        })
        .await?;
    let reply = replies
        .iter()
        .find(|m| record_header(m, "correlation-id").as_deref() == Some(&id))
        .context("the reply record")?;
    assert_eq!(reply.key(), Some(id.as_bytes()));
    assert_eq!(record_header(reply, "status").as_deref(), Some("200"));
    assert_eq!(
        record_header(reply, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        record_header(reply, "header-x-served-by").as_deref(),
        Some("python")
    );

    assert!(
        eventually(Duration::from_secs(5), || async {
            service
                .log()
                .contains("no correlation-id and no reply-to header")
        })
        .await,
        "the record without headers was not logged as skipped; log:\n{}",
        service.log()
    );
    finish(stack, service).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_service_bad_bodies_answer_400_problems() -> TestResult {
    let (stack, service) = start().await?;
    for bad in [
        r#"{"nom":"Ada"}"#,
        r#"{"name":5}"#,
        r#"["Ada"]"#,
        "not json",
    ] {
        let response = stack
            .http
            .post(stack.url(0, "/greet/en"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .with_context(|| format!("POST {bad}; Python log:\n{}", service.log()))?;
        assert_eq!(
            response.status(),
            400,
            "body {bad}; log:\n{}",
            service.log()
        );
        assert_eq!(
            header(&response, "content-type"),
            "application/problem+json",
            "body {bad}"
        );
        assert_eq!(header(&response, "x-served-by"), "python");
        let id = header(&response, "correlation-id").to_owned();
        let problem: Value = response.json().await?;
        assert_eq!(problem["status"], 400, "body {bad}: {problem}");
        assert_eq!(problem["title"], "Bad Request");
        assert_eq!(problem["correlation_id"], id.as_str());
        assert!(
            problem["type"].as_str().is_some_and(|t| !t.is_empty()),
            "body {bad}: {problem}"
        );
        assert!(problem["detail"].is_string(), "body {bad}: {problem}");
    }
    finish(stack, service).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_service_answers_50_concurrent_requests_each_its_own() -> TestResult {
    let (stack, service) = start().await?;
    let requests = (0..50).map(|n| {
        let url = stack.url(0, "/greet/en");
        let http = stack.http.clone();
        async move {
            let name = format!("guest-{n}");
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(json!({ "name": name }).to_string())
                .send()
                .await?;
            let status = response.status();
            let id = header(&response, "correlation-id").to_owned();
            let body = response.text().await?;
            anyhow::Ok((name, status, id, body))
        }
    });
    let mut ids = HashSet::new();
    for result in join_all(requests).await {
        let (name, status, id, body) =
            result.with_context(|| format!("Python log:\n{}", service.log()))?;
        assert_eq!(status, 200, "{name}: {body}; log:\n{}", service.log());
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!(
            body["greeting"],
            format!("Hello, {name}!"),
            "{name} got another request's reply"
        );
        assert_eq!(body["served_by"], "python");
        assert_eq!(body["correlation_id"], id.as_str(), "{name}");
        assert!(ids.insert(id), "{name}: correlation id reused");
    }
    assert_eq!(ids.len(), 50);
    finish(stack, service).await
}
