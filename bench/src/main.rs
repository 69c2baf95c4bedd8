//! `replyway-bench`: Replyway's cost over a raw Kafka request–reply round trip,
//! measured side by side against the same broker in the same run.
//!
//! * **raw** — the floor: this process produces each request to a request topic
//!   with `reply-to`, the echo service replies, and this process consumes the
//!   reply topic itself (rdkafka, the same client settings as Replyway);
//! * **replyway** — HTTP → gateway → Kafka → echo → Kafka → collector → Redis →
//!   gateway → HTTP, with one and with two gateway processes.
//!
//! The broker is Apache Kafka (the version the project pins, one KRaft node
//! with the heap of Kafka's own start script) and every client runs with
//! Replyway's default settings. Every run gets fresh topics. Every answer must
//! carry its own request's body: a wrong or missing answer fails the run.

mod chart;
mod measure;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::oneshot;

use replyway_gateway::routes::RouteConfig;
use replyway_shared::Request;
use replyway_shared::record::reply_from_message;
use replyway_shared::settings::{KafkaSettings, RedisSettings};
use replyway_tests::{Broker, Proc, RedisServer, free_port};

use crate::measure::{Latencies, ProcStats, redis_calls};

/// Measures Replyway against a raw Kafka request–reply round trip.
#[derive(Parser, Clone)]
struct Args {
    /// Concurrency levels (requests in flight at once).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Measured requests per mode and concurrency.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Unmeasured requests before each run.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Requests held waiting at once for the memory measurement (0: skip).
    #[arg(long, default_value_t = 10_000)]
    waiting: usize,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Where the table (results.md) and the chart (latency.png) go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Tiny counts, correctness only (CI).
    #[arg(long)]
    smoke: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// `raw`, `replyway x1`, `replyway x2`.
    pub mode: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Measured requests.
    pub requests: usize,
    /// Wall time of the measured requests.
    pub elapsed: Duration,
    /// Round-trip latencies.
    pub latencies: Latencies,
    /// Redis commands per request, all of them (replyway only).
    pub redis_per_request: Option<f64>,
    /// Redis calls sent per request (a script counts once; an upper bound on round trips).
    pub redis_calls_per_request: Option<f64>,
    /// Gateway CPU seconds per 1000 requests (all gateways).
    pub gateway_cpu_per_1k: Option<f64>,
    /// Collector CPU seconds per 1000 requests.
    pub collector_cpu_per_1k: Option<f64>,
    /// CPU seconds per 1000 requests of the broker, the echo service and the
    /// benchmark's own client: where the cores went.
    pub others_cpu_per_1k: Option<(f64, f64, f64, f64)>,
    /// Peak RSS of the largest gateway, MiB.
    pub gateway_peak_mib: Option<f64>,
    /// Peak RSS of the collector, MiB.
    pub collector_peak_mib: Option<f64>,
}

impl RunResult {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

const ROUTE: &str = "/bench";

/// Most Redis calls a request may cost.
const MAX_REDIS_CALLS_PER_REQUEST: f64 = 2.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.concurrency = vec![1, 4];
        args.requests = 20;
        args.warmup = 5;
        args.waiting = 50;
    }
    // The services log at warn: one line per request would be measured too.
    let env_log = std::env::var("REPLYWAY_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let broker = Broker::start_for_benchmark().context("starting Apache Kafka")?;
    let redis = RedisServer::start().context("starting redis-server")?;
    eprintln!(
        "Apache Kafka {} at {} (ready after {:.1} s), redis 127.0.0.1:{}",
        replyway_tests::kafka_version(),
        broker.bootstrap(),
        broker.startup.as_secs_f64(),
        redis.port
    );
    let bench = Bench {
        args: args.clone(),
        broker,
        redis,
        log: env_log,
    };

    let mut results = Vec::new();
    for &c in &args.concurrency {
        results.push(bench.run_raw(c).await?);
        for gateways in [1, 2] {
            results.push(bench.run_replyway(c, gateways).await?);
        }
    }
    let mut waiting = Vec::new();
    if args.waiting > 0 {
        for http2 in [false, true] {
            waiting.push(bench.waiting_memory(args.waiting, http2).await?);
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let table = report(&results, &waiting, &args);
    // The claim of docs/benchmark.md: at most two Redis calls per request
    // (create the pending record; store the reply and notify). Checked on
    // every run, the smoke run in `make test` included.
    for r in &results {
        if let Some(calls) = r.redis_calls_per_request {
            anyhow::ensure!(
                calls <= MAX_REDIS_CALLS_PER_REQUEST,
                "{} at concurrency {}: {calls:.2} Redis calls per request, more than {MAX_REDIS_CALLS_PER_REQUEST}\n{table}",
                r.mode,
                r.concurrency
            );
        }
    }
    std::fs::write(args.out.join("results.md"), &table)?;
    println!("{table}");
    match chart::draw(&results, &args.out.join("latency.png")) {
        Ok(()) => eprintln!(
            "chart written to {}",
            args.out.join("latency.png").display()
        ),
        Err(e) => eprintln!("no chart: {e:#}"),
    }
    Ok(())
}

struct Bench {
    args: Args,
    broker: Broker,
    redis: RedisServer,
    log: String,
}

/// Where records keyed by, or carrying the `correlation-id` header, `id` are
/// in `topic`.
fn find_records(kafka: &KafkaSettings, topic: &str, id: &str) -> anyhow::Result<Vec<String>> {
    use rdkafka::message::{Headers, Message};
    Ok(replyway_tests::read_topic_to_end(kafka, topic)?
        .iter()
        .filter(|message| {
            message.key() == Some(id.as_bytes())
                || message.headers().is_some_and(|headers| {
                    headers
                        .iter()
                        .any(|h| h.key == "correlation-id" && h.value == Some(id.as_bytes()))
                })
        })
        .map(|m| format!("partition {} offset {}", m.partition(), m.offset()))
        .collect())
}

fn body_for(run: &str, i: usize, size: usize) -> String {
    let mut body = format!("{{\"run\":\"{run}\",\"i\":{i},\"pad\":\"");
    while body.len() + 2 < size {
        body.push('x');
    }
    body.push_str("\"}");
    body
}

impl Bench {
    /// Replyway's default client settings.
    fn kafka(&self) -> KafkaSettings {
        self.broker.kafka_settings()
    }

    fn redis_settings(&self, prefix: &str) -> RedisSettings {
        RedisSettings {
            url: self.redis.url().into(),
            prefix: prefix.into(),
            ttl: Duration::from_secs(300),
            ..RedisSettings::default()
        }
    }

    fn spawn<S: serde::Serialize>(
        &self,
        name: &str,
        settings: &S,
        addr: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Proc> {
        Proc::spawn_with_log(name, settings, addr, &self.log)
    }

    /// CPU seconds so far of the broker, `echo`, this process and Redis.
    fn others(&self, echo: u32) -> anyhow::Result<(f64, f64, f64, f64)> {
        let broker = self.broker.pid().context("the broker is not running")?;
        let redis = self.redis.pid().context("redis is not running")?;
        let cpu = |pid: u32| ProcStats::of(pid).map(|s| s.cpu_seconds);
        Ok((
            cpu(broker)?,
            cpu(echo)?,
            cpu(std::process::id())?,
            cpu(redis)?,
        ))
    }

    fn others_per_1k(
        &self,
        before: (f64, f64, f64, f64),
        echo: u32,
    ) -> anyhow::Result<(f64, f64, f64, f64)> {
        let after = self.others(echo)?;
        let k = 1000.0 / self.args.requests as f64;
        Ok((
            (after.0 - before.0) * k,
            (after.1 - before.1) * k,
            (after.2 - before.2) * k,
            (after.3 - before.3) * k,
        ))
    }

    /// Fresh topics for one run.
    async fn topics(&self, run: &str) -> anyhow::Result<(String, String)> {
        let (requests, replies) = (format!("{run}.requests"), format!("{run}.replies"));
        self.broker.create_topics(&[&requests, &replies], 3).await?;
        Ok((requests, replies))
    }

    fn echo(&self, run: &str, topic: &str, max_in_flight: usize) -> anyhow::Result<Proc> {
        let settings = replyway_echo::Settings {
            topics: vec![topic.into()],
            group_id: format!("{run}-echo"),
            max_in_flight,
            kafka: self.kafka(),
            ..replyway_echo::Settings::default()
        };
        self.spawn("replyway-echo", &settings, None)
    }

    async fn run_raw(&self, concurrency: usize) -> anyhow::Result<RunResult> {
        let run = format!("raw-c{concurrency}-{}", free_port());
        let (requests, replies) = self.topics(&run).await?;
        let echo = self.echo(&run, &requests, 1000)?;
        let client = RawClient::start(&self.kafka(), &run, requests, replies)?;
        let client = Arc::new(client);
        wait_until(|| {
            let client = Arc::clone(&client);
            async move {
                client
                    .request(Bytes::from_static(b"ready"), Duration::from_secs(2))
                    .await
                    .is_ok()
            }
        })
        .await
        .context("the raw round trip never completed")?;
        let call = |body: String| {
            let client = Arc::clone(&client);
            async move {
                let reply = client
                    .request(Bytes::from(body.clone()), Duration::from_secs(30))
                    .await?;
                ensure!(
                    reply == body.as_bytes(),
                    "raw: a reply carried another request's body"
                );
                Ok(())
            }
        };
        self.drive_indexed("raw", &run, concurrency, self.args.warmup, |_, body| {
            call(body)
        })
        .await?;
        let others = self.others(echo.pid())?;
        let (elapsed, latencies) = self
            .drive_indexed("raw", &run, concurrency, self.args.requests, |_, body| {
                call(body)
            })
            .await?;
        let others = self.others_per_1k(others, echo.pid())?;
        Ok(RunResult {
            mode: "raw".into(),
            concurrency,
            requests: self.args.requests,
            elapsed,
            latencies,
            redis_per_request: None,
            redis_calls_per_request: None,
            gateway_cpu_per_1k: None,
            collector_cpu_per_1k: None,
            others_cpu_per_1k: Some(others),
            gateway_peak_mib: None,
            collector_peak_mib: None,
        })
    }

    fn replyway_settings(
        &self,
        run: &str,
        requests: &str,
        replies: &str,
        max_waiting: usize,
    ) -> (replyway_gateway::Settings, replyway_collector::Settings) {
        let redis = self.redis_settings(run);
        // No admin ports: several gateways run on one host (metrics are still
        // counted, so their cost is measured).
        let gateway = replyway_gateway::Settings {
            admin_listen: String::new(),
            max_waiting,
            reply_topic: replies.into(),
            redis: redis.clone(),
            kafka: self.kafka(),
            routes: vec![RouteConfig {
                name: Some("bench".into()),
                method: "POST".into(),
                path: ROUTE.into(),
                topic: requests.into(),
                key: "{correlation_id}".into(),
                timeout: Duration::from_secs(60),
                body_limit: 1024 * 1024,
                forward_headers: vec![],
                ..RouteConfig::default()
            }],
            ..replyway_gateway::Settings::default()
        };
        let collector = replyway_collector::Settings {
            admin_listen: String::new(),
            topics: vec![replies.into()],
            group_id: format!("{run}-collector"),
            redis,
            kafka: self.kafka(),
            ..replyway_collector::Settings::default()
        };
        (gateway, collector)
    }

    async fn start_replyway(
        &self,
        run: &str,
        gateways: usize,
        max_waiting: usize,
        echo_in_flight: usize,
    ) -> anyhow::Result<Stack> {
        let (requests, replies) = self.topics(run).await?;
        let echo = self.echo(run, &requests, echo_in_flight)?;
        let (gateway, collector) = self.replyway_settings(run, &requests, &replies, max_waiting);
        let collector = self.spawn("replyway-collector", &collector, None)?;
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..gateways {
            let port = free_port();
            let settings = replyway_gateway::Settings {
                listen: format!("127.0.0.1:{port}"),
                ..gateway.clone()
            };
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            procs.push(self.spawn("replyway-gateway", &settings, Some(addr))?);
            urls.push(format!("http://{addr}{ROUTE}"));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(20_000)
            .timeout(Duration::from_secs(90))
            .build()?;
        for url in &urls {
            let (http, url) = (http.clone(), url.clone());
            wait_until(|| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    match http
                        .post(&url)
                        .header("prefer", "wait=2")
                        .body("ready")
                        .send()
                        .await
                    {
                        Ok(r) => r.status() == 200,
                        Err(_) => false,
                    }
                }
            })
            .await
            .with_context(|| {
                let logs: Vec<String> = procs
                    .iter()
                    .chain([&collector, &echo])
                    .map(Proc::log)
                    .collect();
                format!(
                    "gateway {url} never answered; logs:\n{}",
                    logs.join("\n---\n")
                )
            })?;
        }
        Ok(Stack {
            echo,
            collector,
            gateways: procs,
            urls,
            http,
        })
    }

    async fn run_replyway(&self, concurrency: usize, gateways: usize) -> anyhow::Result<RunResult> {
        let mode = format!("replyway x{gateways}");
        let run = format!("rw{gateways}-c{concurrency}-{}", free_port());
        let stack = self.start_replyway(&run, gateways, 10_000, 1000).await?;
        let call = |i: usize, body: String| {
            let (http, url) = (stack.http.clone(), stack.urls[i % stack.urls.len()].clone());
            let run = run.as_str();
            async move {
                let response = http.post(url).body(body.clone()).send().await?;
                if response.status() != 200 {
                    let status = response.status();
                    let id = response
                        .headers()
                        .get("correlation-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    anyhow::bail!(
                        "replyway: status {status} for request {i} (correlation id {id}); {}",
                        self.where_is(run, &id).await
                    );
                }
                let text = response.bytes().await?;
                ensure!(
                    text == body.as_bytes(),
                    "replyway: a reply carried another request's body"
                );
                Ok(())
            }
        };
        // Warm-up, then the measured run with CPU and Redis counted around it.
        self.drive_indexed(&mode, &run, concurrency, self.args.warmup, call)
            .await?;
        let redis_before = redis_calls(&self.redis).await?;
        let others = self.others(stack.echo.pid())?;
        let cpu_before: Vec<f64> = stack
            .gateways
            .iter()
            .chain([&stack.collector])
            .map(|p| ProcStats::of(p.pid()).map(|s| s.cpu_seconds))
            .collect::<Result<_, _>>()?;
        let (elapsed, latencies) = self
            .drive_indexed(&mode, &run, concurrency, self.args.requests, call)
            .await?;
        let redis_after = redis_calls(&self.redis).await?;
        let others = self.others_per_1k(others, stack.echo.pid())?;
        let after: Vec<ProcStats> = stack
            .gateways
            .iter()
            .chain([&stack.collector])
            .map(|p| ProcStats::of(p.pid()))
            .collect::<Result<_, _>>()?;
        let per_1k = |cpu: f64| cpu * 1000.0 / self.args.requests as f64;
        let gateway_cpu: f64 = after[..gateways]
            .iter()
            .zip(&cpu_before)
            .map(|(a, b)| a.cpu_seconds - b)
            .sum();
        let collector_cpu = after[gateways].cpu_seconds - cpu_before[gateways];
        Ok(RunResult {
            mode,
            concurrency,
            requests: self.args.requests,
            elapsed,
            latencies,
            // The INFO call that reads the counters is one command itself.
            redis_per_request: Some(
                (redis_after.0 - redis_before.0 - 1) as f64 / self.args.requests as f64,
            ),
            redis_calls_per_request: Some(
                (redis_after.1 - redis_before.1 - 1) as f64 / self.args.requests as f64,
            ),
            gateway_cpu_per_1k: Some(per_1k(gateway_cpu)),
            collector_cpu_per_1k: Some(per_1k(collector_cpu)),
            others_cpu_per_1k: Some(others),
            gateway_peak_mib: after[..gateways]
                .iter()
                .map(|s| s.peak_rss_kib as f64 / 1024.0)
                .reduce(f64::max),
            collector_peak_mib: Some(after[gateways].peak_rss_kib as f64 / 1024.0),
        })
    }

    /// What Redis holds of a request that got no reply: tells a reply lost on
    /// its way through Kafka from one that reached Redis but not its waiter.
    async fn where_is(&self, run: &str, id: &str) -> String {
        let keys = replyway_shared::store::Keys::new(run);
        let look = async {
            let mut conn = self.redis.connection().await?;
            let (reply, pending): (bool, bool) = redis::pipe()
                .exists(keys.reply(id))
                .exists(keys.pending(id))
                .query_async(&mut conn)
                .await?;
            anyhow::Ok((reply, pending))
        };
        let redis = match look.await {
            Ok((true, _)) => {
                "its reply is in Redis: it reached Redis but not the waiting request".into()
            }
            Ok((false, true)) => "pending in Redis, no reply".into(),
            Ok((false, false)) => "neither pending nor replied in Redis".into(),
            Err(e) => format!("Redis could not be read: {e:#}"),
        };
        let mut found = vec![redis];
        for (what, topic) in [
            ("command", format!("{run}.requests")),
            ("reply", format!("{run}.replies")),
        ] {
            let (kafka, id, topic2) = (self.kafka(), id.to_owned(), topic.clone());
            let records =
                tokio::task::spawn_blocking(move || find_records(&kafka, &topic2, &id)).await;
            found.push(match records {
                Ok(Ok(at)) if at.is_empty() => format!("no {what} in {topic}"),
                Ok(Ok(at)) => format!("{what} in {topic} at {}", at.join(", ")),
                Ok(Err(e)) => format!("{topic} could not be read: {e:#}"),
                Err(e) => format!("{topic} could not be read: {e}"),
            });
        }
        found.join("; ")
    }

    /// Holds `n` requests waiting at one gateway: over HTTP/1.1, one connection
    /// each; over HTTP/2 (h2c), 10 connections of `n / 10` requests each.
    async fn waiting_memory(&self, n: usize, http2: bool) -> anyhow::Result<Waiting> {
        let run = format!("wait-{}", free_port());
        eprintln!(
            "[waiting] {n} requests held at once (HTTP/{}) ...",
            if http2 { 2 } else { 1 }
        );
        let stack = self.start_replyway(&run, 1, n + 10, n + 10).await?;
        let h2_clients: Vec<reqwest::Client> = (0..10)
            .map(|_| {
                reqwest::Client::builder()
                    .http2_prior_knowledge()
                    .timeout(Duration::from_secs(90))
                    .build()
            })
            .collect::<Result<_, _>>()?;
        let gateway = &stack.gateways[0];
        // First the cost of the connections alone: n idle TCP connections.
        let base = ProcStats::of(gateway.pid())?.rss_kib;
        let addr = stack.urls[0]
            .trim_start_matches("http://")
            .trim_end_matches(ROUTE)
            .to_owned();
        let mut idle = Vec::with_capacity(n);
        for _ in 0..if http2 { 0 } else { n } {
            idle.push(tokio::net::TcpStream::connect(&addr).await?);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let with_idle = ProcStats::of(gateway.pid())?.rss_kib;
        drop(idle);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = ProcStats::of(gateway.pid())?.rss_kib;
        let hold_ms = 8000;
        let started = Instant::now();
        let requests: Vec<_> = (0..n)
            .map(|i| {
                let http = if http2 {
                    h2_clients[i % h2_clients.len()].clone()
                } else {
                    stack.http.clone()
                };
                let url = stack.urls[0].clone();
                tokio::spawn(async move {
                    let body = format!("{{\"sleep_ms\":{hold_ms},\"i\":{i}}}");
                    let response = http.post(url).body(body.clone()).send().await?;
                    ensure!(
                        response.status() == 200,
                        "waiting: status {}",
                        response.status()
                    );
                    ensure!(
                        response.bytes().await? == body.as_bytes(),
                        "waiting: wrong body"
                    );
                    anyhow::Ok(())
                })
            })
            .collect();
        // Sample while they wait (all are sent within the first seconds).
        let mut peak = before;
        while started.elapsed() < Duration::from_millis(hold_ms - 1000) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            peak = peak.max(ProcStats::of(gateway.pid())?.rss_kib);
        }
        for r in futures::future::join_all(requests).await {
            r??;
        }
        Ok(Waiting {
            n,
            http2,
            base,
            with_idle,
            before,
            peak,
        })
    }

    /// Runs `count` calls with `concurrency` in flight; returns wall time and latencies.
    async fn drive_indexed<F, Fut>(
        &self,
        mode: &str,
        run: &str,
        concurrency: usize,
        count: usize,
        call: F,
    ) -> anyhow::Result<(Duration, Latencies)>
    where
        F: Fn(usize, String) -> Fut + Sync,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let started = Instant::now();
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "[{mode} c={concurrency}] {}/{count}",
                    done.load(Ordering::Relaxed)
                );
            }
        };
        let workers = futures::future::join_all((0..concurrency).map(|_| async {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                call(i, body_for(run, i, self.args.body_bytes)).await?;
                latencies.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
        let results = tokio::select! {
            r = workers => r,
            () = progress => unreachable!("progress never ends"),
        };
        let elapsed = started.elapsed();
        let mut all = Vec::with_capacity(count);
        for r in results {
            all.extend(r?);
        }
        eprintln!(
            "[{mode} c={concurrency}] {count} requests in {:.2}s",
            elapsed.as_secs_f64()
        );
        Ok((elapsed, Latencies::new(all)))
    }
}

struct Stack {
    echo: Proc,
    collector: Proc,
    gateways: Vec<Proc>,
    urls: Vec<String>,
    http: reqwest::Client,
}

async fn wait_until<F, Fut>(mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("not ready within 60 s")
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>;

/// The floor: a requester that consumes its replies itself.
struct RawClient {
    producer: FutureProducer,
    pending: Pending,
    requests: String,
    replies: String,
    _consumer: tokio::task::JoinHandle<()>,
}

impl RawClient {
    fn start(
        kafka: &KafkaSettings,
        run: &str,
        requests: String,
        replies: String,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = kafka.producer_config().create()?;
        let consumer: StreamConsumer = kafka
            .consumer_config(&format!("{run}-requester"))
            .create()?;
        consumer.subscribe(&[&replies])?;
        let pending: Pending = Arc::default();
        let map = Arc::clone(&pending);
        let task = tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(message) = stream.next().await {
                let Ok(message) = message else { continue };
                if let Ok((id, reply)) = reply_from_message(&message, usize::MAX) {
                    let waiter = map.lock().ok().and_then(|mut m| m.remove(&id));
                    if let Some(tx) = waiter {
                        let _ = tx.send(reply.body);
                    }
                }
            }
        });
        Ok(Self {
            producer,
            pending,
            requests,
            replies,
            _consumer: task,
        })
    }

    async fn request(&self, body: Bytes, timeout: Duration) -> anyhow::Result<Bytes> {
        let request = Request::new(self.replies.clone(), body);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(request.correlation_id.clone(), tx);
        let record = FutureRecord::to(&self.requests)
            .key(&request.correlation_id)
            .payload(&request.body[..])
            .headers(request.record_headers());
        let sent = self.producer.send(record, Duration::from_secs(5)).await;
        let answer = match sent {
            Ok(_) => tokio::time::timeout(timeout, rx).await,
            Err((e, _)) => {
                self.forget(&request.correlation_id);
                bail!("produce: {e}");
            }
        };
        match answer {
            Ok(Ok(body)) => Ok(body),
            _ => {
                self.forget(&request.correlation_id);
                bail!("no reply within {timeout:?}")
            }
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut m) = self.pending.lock() {
            m.remove(id);
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!(
        "{cores} cores ({cpu}), {mem} GiB; Apache Kafka {} (one KRaft node, 1 GiB heap, Replyway's default client settings), redis-server on loopback",
        replyway_tests::kafka_version()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// Gateway RSS (KiB) around holding `n` requests.
struct Waiting {
    n: usize,
    http2: bool,
    /// Before opening idle connections.
    base: u64,
    /// With `n` idle TCP connections open.
    with_idle: u64,
    /// Before the requests.
    before: u64,
    /// Highest while the requests waited.
    peak: u64,
}

fn report(results: &[RunResult], waiting: &[Waiting], args: &Args) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}  ", machine());
    let _ = writeln!(
        out,
        "Requests per run: {} ({} B bodies, after {} warm-up requests)\n",
        args.requests, args.body_bytes, args.warmup
    );
    let _ = writeln!(
        out,
        "| mode | conc. | req/s | p50 ms | p90 ms | p99 ms | max ms | p50 − raw | p99 − raw | req/s ÷ raw | Redis calls/req | Redis cmds/req | gateway CPU s/1k | collector CPU s/1k | gateway peak RSS MiB | collector peak RSS MiB |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let raw = results
            .iter()
            .find(|x| x.mode == "raw" && x.concurrency == r.concurrency);
        let (d50, d99, ratio) = match raw.filter(|_| r.mode != "raw") {
            Some(raw) => (
                format!(
                    "{:+.2}",
                    ms(r.latencies.p(50.0)) - ms(raw.latencies.p(50.0))
                ),
                format!(
                    "{:+.2}",
                    ms(r.latencies.p(99.0)) - ms(raw.latencies.p(99.0))
                ),
                format!("{:.2}", r.throughput() / raw.throughput()),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {d50} | {d99} | {ratio} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.concurrency,
            r.throughput(),
            ms(r.latencies.p(50.0)),
            ms(r.latencies.p(90.0)),
            ms(r.latencies.p(99.0)),
            ms(r.latencies.max()),
            opt(r.redis_calls_per_request, 2),
            opt(r.redis_per_request, 2),
            opt(r.gateway_cpu_per_1k, 3),
            opt(r.collector_cpu_per_1k, 3),
            opt(r.gateway_peak_mib, 1),
            opt(r.collector_peak_mib, 1),
        );
    }
    let _ = writeln!(
        out,
        "\nCPU seconds per 1000 requests of every process on the machine (2 cores are 2 CPU seconds per second):\n"
    );
    let _ = writeln!(
        out,
        "| mode | conc. | gateway(s) | collector | echo service | broker | Redis | benchmark client | total | total ÷ wall time (cores busy) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        if let Some((broker, echo, client, redis)) = r.others_cpu_per_1k {
            let own = r.gateway_cpu_per_1k.unwrap_or_default()
                + r.collector_cpu_per_1k.unwrap_or_default();
            let total = own + broker + echo + client + redis;
            let busy = total * r.requests as f64 / 1000.0 / r.elapsed.as_secs_f64();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {echo:.3} | {broker:.3} | {redis:.3} | {client:.3} | {total:.3} | {busy:.2} |",
                r.mode,
                r.concurrency,
                opt(r.gateway_cpu_per_1k, 3),
                opt(r.collector_cpu_per_1k, 3)
            );
        }
    }
    for w in waiting {
        let per = |kib: u64| kib as f64 * 1024.0 / w.n as f64;
        let how = if w.http2 {
            "HTTP/2 (10 connections)"
        } else {
            "HTTP/1.1 (a connection each)"
        };
        let _ = write!(
            out,
            "\n{} requests waiting at once on one gateway over {how}: RSS {:.1} MiB before, {:.1} MiB while waiting: {:.0} bytes per waiting request.",
            w.n,
            w.before as f64 / 1024.0,
            w.peak as f64 / 1024.0,
            per(w.peak.saturating_sub(w.before)),
        );
        if !w.http2 {
            let _ = write!(
                out,
                " For comparison, {} idle TCP connections alone: {:.0} bytes each.",
                w.n,
                per(w.with_idle.saturating_sub(w.base))
            );
        }
        let _ = writeln!(out);
    }
    out
}
