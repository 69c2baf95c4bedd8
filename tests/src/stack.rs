//! A whole Replyway stack for one test: gateways, collectors and the echo
//! service on a broker (the binary's shared one, or the test's own) and a Redis
//! of the test's own. Every stack names its topics, consumer groups and Redis
//! keys after a prefix of its own, so stacks on one broker never share state.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::Consumer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use replyway_gateway::routes::RouteConfig;
use replyway_shared::settings::{RedisMode, RedisSettings};

use crate::{Broker, Proc, RedisCluster, RedisServer, eventually, free_port, init_logs};

/// How long a binary started as a process may take to report its ports.
const REPORTED: Duration = Duration::from_secs(60);

/// A component running in this process.
pub struct Running {
    /// Its HTTP address, for gateways.
    pub addr: Option<SocketAddr>,
    token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn spawn<F>(addr: Option<SocketAddr>, token: CancellationToken, future: F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            addr,
            token,
            handle: Some(tokio::spawn(future)),
        }
    }

    /// Stops it and waits until it has.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.handle.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The routes every test stack serves, producing to `topic`.
pub fn test_routes(topic: &str) -> Vec<RouteConfig> {
    let route =
        |method: &str, path: &str, key: &str, timeout_ms: u64, body_limit: usize| RouteConfig {
            name: None,
            method: method.into(),
            path: path.into(),
            topic: topic.into(),
            key: key.into(),
            timeout: Duration::from_millis(timeout_ms),
            body_limit,
            forward_headers: vec!["x-request-id".into()],
            ..RouteConfig::default()
        };
    vec![
        route("POST", "/echo", "{correlation_id}", 10_000, 64 * 1024),
        route("POST", "/slow", "{correlation_id}", 1_000, 64 * 1024),
        route("POST", "/orders/{id}", "order-{param.id}", 10_000, 1024),
    ]
}

/// A gateway or collector: in this process, or an OS process of its own.
pub enum Node {
    /// A task in the test's runtime.
    InProcess(Running),
    /// A child process.
    Process(Proc),
}

impl Node {
    /// `http://addr{path}` for a gateway.
    pub fn url(&self, path: &str) -> String {
        let addr = match self {
            Self::InProcess(r) => r.addr,
            Self::Process(p) => p.addr,
        };
        format!("http://{}{path}", addr.expect("a gateway has an address"))
    }

    /// Stops it gracefully (cancel, or SIGTERM) and waits.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(r) => r.stop().await,
            Self::Process(p) => {
                if p.child.try_wait()?.is_none() {
                    p.signal("TERM")?;
                    p.wait_exit(Duration::from_secs(20))
                        .await
                        .context("did not exit after SIGTERM")?;
                }
                Ok(())
            }
        }
    }

    /// The process, to read its log or `/proc` from a shared borrow.
    pub fn process_ref(&self) -> &Proc {
        match self {
            Self::Process(p) => p,
            Self::InProcess(_) => panic!("this node runs in the test process"),
        }
    }

    /// The process, for signals and `/proc`.
    pub fn process(&mut self) -> &mut Proc {
        match self {
            Self::Process(p) => p,
            Self::InProcess(_) => panic!("this node runs in the test process"),
        }
    }
}

/// A whole Replyway stack for one test: broker, Redis, gateways, collectors
/// and the echo service.
pub struct Stack {
    /// The broker.
    pub broker: BrokerRef,
    /// Redis (unused when the stack runs on a Redis Cluster).
    pub redis: RedisServer,
    /// Key prefix of this stack (Redis keys, topics and consumer groups).
    pub prefix: String,
    /// The echo service's request topic, `<prefix>.echo.requests`.
    pub echo_topic: String,
    /// The reply topic, `<prefix>.replies`.
    pub reply_topic: String,
    /// The collectors' dead-letter topic, when they have one.
    pub dead_letter_topic: Option<String>,
    /// Gateways.
    pub gateways: Vec<Node>,
    /// Collectors.
    pub collectors: Vec<Node>,
    /// Counters of the first collector, when it runs in this process.
    pub collector_stats: Arc<replyway_collector::Stats>,
    /// Admin address of each gateway (`/healthz`, `/readyz`, `/metrics`).
    pub gateway_admin: Vec<String>,
    /// Admin address of each collector.
    pub collector_admin: Vec<String>,
    /// Echo service.
    pub echo: Running,
    /// Admin address of the echo service (`/healthz`, `/metrics`).
    pub echo_admin: SocketAddr,
    /// The echo service's settings (its consumer group is `<prefix>-echo`).
    pub echo_settings: replyway_echo::Settings,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The settings the gateways started with.
    pub gateway_settings: replyway_gateway::Settings,
    /// The settings the collectors started with.
    pub collector_settings: replyway_collector::Settings,
    /// The Redis Cluster the stack runs on, when [`StackOptions::redis_cluster`]
    /// asks for one (last: dropped after the gateways and collectors).
    pub cluster: Option<RedisCluster>,
}

/// How a test wants its stack.
pub struct StackOptions {
    /// Gateway replicas.
    pub gateways: usize,
    /// Collector replicas.
    pub collectors: usize,
    /// Run gateways and collectors as OS processes (to signal or kill them).
    pub processes: bool,
    /// Which broker the stack runs on.
    pub broker: BrokerChoice,
    /// Bound on waiting requests per gateway.
    pub max_waiting: usize,
    /// Give the collectors a dead-letter topic, `<prefix>.dead-letters`.
    pub dead_letters: bool,
    /// Create the stack's topics with one partition each, led by this node
    /// (the rest of the cluster's nodes follow), so that a fault test knows
    /// which node to kill; unset: three partitions, leaders as Kafka places them.
    pub leader: Option<u32>,
    /// Redis over TLS only, with this password.
    pub redis_password: Option<String>,
    /// Run on a Redis Cluster of this many masters with this many replicas
    /// each (`redis.mode = "cluster"`) instead of one Redis.
    pub redis_cluster: Option<(usize, usize)>,
    /// Changes to the gateway settings.
    pub gateway: fn(&mut replyway_gateway::Settings),
    /// Changes to the collector settings.
    pub collector: fn(&mut replyway_collector::Settings),
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            gateways: 1,
            collectors: 1,
            processes: false,
            broker: BrokerChoice::Shared,
            max_waiting: 10_000,
            dead_letters: false,
            leader: None,
            redis_password: None,
            redis_cluster: None,
            gateway: |_| {},
            collector: |_| {},
        }
    }
}

impl Stack {
    /// Starts broker, Redis, topics, gateways, collectors and echo, and waits
    /// until a request makes the whole round trip on every gateway.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        init_logs();
        let broker = match options.broker {
            BrokerChoice::Shared => BrokerRef::Shared(Broker::shared()),
            BrokerChoice::Own => BrokerRef::Own(Broker::start()?),
            BrokerChoice::Cluster(nodes) => BrokerRef::Own(Broker::start_cluster(nodes)?),
        };
        let redis = match &options.redis_password {
            Some(password) => RedisServer::start_secure(password)?,
            None => RedisServer::start()?,
        };
        let prefix = unique_prefix();
        let echo_topic = format!("{prefix}.echo.requests");
        let reply_topic = format!("{prefix}.replies");
        let dead_letter_topic = options
            .dead_letters
            .then(|| format!("{prefix}.dead-letters"));
        let mut topics = vec![echo_topic.as_str(), reply_topic.as_str()];
        topics.extend(dead_letter_topic.as_deref());
        match options.leader {
            Some(leader) => {
                let mut replicas = vec![leader];
                replicas.extend(broker.node_ids().into_iter().filter(|n| *n != leader));
                broker.create_topics_led_by(&topics, &replicas).await?;
            }
            None => broker.create_topics(&topics, 3).await?,
        }
        let kafka = broker.kafka_settings();
        let cluster = match options.redis_cluster {
            Some((masters, replicas)) => Some(RedisCluster::start(masters, replicas).await?),
            None => None,
        };
        let redis_settings = RedisSettings {
            url: cluster
                .as_ref()
                .map_or_else(|| redis.url(), RedisCluster::url)
                .into(),
            mode: if cluster.is_some() {
                RedisMode::Cluster
            } else {
                RedisMode::Single
            },
            prefix: prefix.clone(),
            ttl: Duration::from_secs(120),
            timeout: Duration::from_secs(1),
            ..RedisSettings::default()
        };

        let mut gateway_settings = replyway_gateway::Settings {
            max_waiting: options.max_waiting,
            max_poll_wait: Duration::from_secs(30),
            produce_timeout: Duration::from_secs(2),
            idempotency_ttl: Some(Duration::from_secs(60)),
            reply_topic: reply_topic.clone(),
            redis: redis_settings.clone(),
            kafka: kafka.clone(),
            routes: test_routes(&echo_topic),
            ..replyway_gateway::Settings::default()
        };
        (options.gateway)(&mut gateway_settings);
        let mut gateways = Vec::new();
        let mut gateway_admin = Vec::new();
        for _ in 0..options.gateways {
            if options.processes {
                // Port 0: the gateway binds its ports and reports them.
                let settings = replyway_gateway::Settings {
                    listen: "127.0.0.1:0".into(),
                    admin_listen: "127.0.0.1:0".into(),
                    ..gateway_settings.clone()
                };
                let mut gateway = Proc::spawn("replyway-gateway", &settings, None)?;
                gateway.addr = Some(gateway.reported_addr("listen", REPORTED).await?);
                gateway_admin.push(gateway.reported_addr("admin", REPORTED).await?.to_string());
                gateways.push(Node::Process(gateway));
            } else {
                // Bound here and handed over, as the binary's main does.
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                gateway_admin.push(admin.local_addr()?.to_string());
                let token = CancellationToken::new();
                let config = gateway_settings.clone().build()?;
                let run = replyway_gateway::run(config, listener, Some(admin), token.clone());
                gateways.push(Node::InProcess(Running::spawn(Some(addr), token, run)));
            }
        }

        let mut collector_settings = replyway_collector::Settings {
            topics: vec![reply_topic.clone()],
            group_id: format!("{prefix}-collector"),
            dead_letter_topic: dead_letter_topic.clone(),
            redis: redis_settings.clone(),
            kafka: kafka.clone(),
            ..replyway_collector::Settings::default()
        };
        (options.collector)(&mut collector_settings);
        let mut collectors = Vec::new();
        let mut collector_admin = Vec::new();
        let mut collector_stats = Arc::default();
        for i in 0..options.collectors {
            if options.processes {
                let settings = replyway_collector::Settings {
                    admin_listen: "127.0.0.1:0".into(),
                    ..collector_settings.clone()
                };
                let mut collector = Proc::spawn("replyway-collector", &settings, None)?;
                collector_admin.push(
                    collector
                        .reported_addr("admin", REPORTED)
                        .await?
                        .to_string(),
                );
                collectors.push(Node::Process(collector));
            } else {
                let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                collector_admin.push(admin.local_addr()?.to_string());
                let collector = replyway_collector::Collector::new(&collector_settings)?;
                if i == 0 {
                    collector_stats = collector.stats();
                }
                let token = CancellationToken::new();
                collectors.push(Node::InProcess(Running::spawn(
                    None,
                    token.clone(),
                    async move { collector.run_with_admin(Some(admin), token).await },
                )));
            }
        }

        let echo_settings = replyway_echo::Settings {
            topics: vec![echo_topic.clone()],
            group_id: format!("{prefix}-echo"),
            kafka,
            ..replyway_echo::Settings::default()
        };
        let echo_admin_port = std::net::TcpListener::bind("127.0.0.1:0")?;
        let echo_admin = echo_admin_port.local_addr()?;
        let echo = start_echo(echo_settings.clone(), Some(echo_admin_port));

        let stack = Self {
            broker,
            redis,
            prefix,
            echo_topic,
            reply_topic,
            dead_letter_topic,
            gateways,
            collectors,
            collector_stats,
            gateway_admin,
            collector_admin,
            echo,
            echo_admin,
            echo_settings,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(1000)
                .build()?,
            gateway_settings,
            collector_settings,
            cluster,
        };
        stack.wait_until_ready().await?;
        Ok(stack)
    }

    /// Waits until every gateway is ready and answers a request end to end
    /// (consumer groups have joined).
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        for gateway in &self.gateways {
            loop {
                let ready = self
                    .http
                    .get(gateway.url("/readyz"))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ready {
                    let r = self
                        .http
                        .post(gateway.url("/echo"))
                        .header("prefer", "wait=2")
                        .body("warm-up")
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 200) {
                        break;
                    }
                }
                if started.elapsed() > Duration::from_secs(60) {
                    let logs: Vec<String> = self
                        .gateways
                        .iter()
                        .chain(&self.collectors)
                        .filter_map(|n| match n {
                            Node::Process(p) => Some(p.log()),
                            Node::InProcess(_) => None,
                        })
                        .collect();
                    bail!(
                        "the stack did not become ready within 60 s; broker log:\n{}\nprocess logs:\n{}",
                        self.broker.log(),
                        logs.join("\n---\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Stops gateways, collectors and echo (each commits and leaves its group),
    /// then the broker and Redis. Ends a test: stopping the broker first would
    /// leave the consumers waiting for a coordinator that is gone.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for (i, gateway) in self.gateways.iter_mut().enumerate() {
            gateway
                .stop()
                .await
                .with_context(|| format!("stopping gateway {i}"))?;
        }
        let stopped = tokio::time::timeout(Duration::from_secs(20), async {
            for (i, collector) in self.collectors.iter_mut().enumerate() {
                collector
                    .stop()
                    .await
                    .with_context(|| format!("stopping collector {i}"))?;
            }
            self.echo.stop().await.context("stopping the echo service")
        })
        .await;
        stopped.context("collectors and echo did not stop within 20 s")??;
        Ok(())
    }

    /// Starts the echo service again (after `echo.stop()`), with its settings
    /// and, when it is still free, its admin address (else a new one, in
    /// `echo_admin`).
    pub fn restart_echo(&mut self) {
        let admin = std::net::TcpListener::bind(self.echo_admin)
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .ok();
        if let Some(addr) = admin.as_ref().and_then(|a| a.local_addr().ok()) {
            self.echo_admin = addr;
        }
        self.echo = start_echo(self.echo_settings.clone(), admin);
    }

    /// Whether gateway `i` answers an echo request end to end within `within`
    /// (each try waits at most `per_try` for the reply).
    pub async fn answers_within(&self, i: usize, within: Duration, per_try: u32) -> bool {
        let (http, url) = (self.http.clone(), self.url(i, "/echo"));
        eventually(within, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let sent = http
                    .post(url)
                    .header("prefer", format!("wait={per_try}"))
                    .body("after")
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "after"),
                    _ => false,
                }
            }
        })
        .await
    }

    /// URL on gateway `i`.
    pub fn url(&self, i: usize, path: &str) -> String {
        self.gateways[i].url(path)
    }

    /// The sum of the samples of metric `name` (as the page writes it, e.g.
    /// `replyway_gateway_requests_total`) whose labels include every
    /// `key="value"` of `labels`, on the `/metrics` page of the admin address
    /// `admin`; `None` when the page cannot be fetched.
    pub async fn metric_sum(
        &self,
        admin: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        let page = self
            .http
            .get(format!("http://{admin}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(sum_samples(&page, name, labels))
    }

    /// Requests waiting for a reply on gateway `i`: its
    /// `replyway_gateway_waiting_requests` gauge.
    pub async fn waiting(&self, i: usize) -> Option<u64> {
        let waiting = self
            .metric_sum(
                &self.gateway_admin[i],
                "replyway_gateway_waiting_requests",
                &[],
            )
            .await?;
        Some(waiting as u64)
    }

    /// Waits (at most `within`) until at least `n` requests wait for a reply
    /// on gateway `i`.
    pub async fn until_waiting(&self, i: usize, n: u64, within: Duration) -> bool {
        eventually(within, || async {
            self.waiting(i).await.is_some_and(|w| w >= n)
        })
        .await
    }

    /// Keys of this stack in Redis matching `pattern` (after the prefix).
    pub async fn redis_keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = self.redis.connection().await?;
        Ok(redis::cmd("KEYS")
            .arg(format!("{}:{pattern}", self.prefix))
            .query_async(&mut conn)
            .await?)
    }

    /// Keys matching `pattern` now that are not among `before` (an earlier
    /// [`Stack::redis_keys`]): what a step added, whatever expired meanwhile.
    pub async fn new_redis_keys(
        &self,
        pattern: &str,
        before: &[String],
    ) -> anyhow::Result<Vec<String>> {
        Ok(self
            .redis_keys(pattern)
            .await?
            .into_iter()
            .filter(|k| !before.contains(k))
            .collect())
    }

    /// Records of `topic` read from the start by a fresh consumer group, until
    /// `done` says enough or `within` passes.
    pub async fn read_topic<F>(
        &self,
        topic: &str,
        within: Duration,
        mut done: F,
    ) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>>
    where
        F: FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
    {
        use rdkafka::consumer::StreamConsumer;
        let group = format!("{}-reader-{}", self.prefix, free_port());
        let consumer: StreamConsumer = self
            .broker
            .kafka_settings()
            .consumer_config(&group)
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut records = Vec::new();
        let deadline = Instant::now() + within;
        while !done(&records) {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "read {} records of {topic} before the deadline",
                records.len()
            );
            if let Ok(message) = tokio::time::timeout(left, consumer.recv()).await {
                records.push(message?.detach());
            }
        }
        Ok(records)
    }
}

/// The sum of the samples of `name` on a metrics page whose labels include
/// every `key="value"` of `labels`.
fn sum_samples(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let wanted = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            wanted.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Which broker a stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerChoice {
    /// The test binary's shared single-node broker ([`Broker::shared`]).
    Shared,
    /// A single node of the test's own, to stop or restart.
    Own,
    /// A KRaft cluster of this many nodes of the test's own.
    Cluster(usize),
}

/// The broker a stack runs on: shared (read-only) or its own.
pub enum BrokerRef {
    /// The test binary's shared broker.
    Shared(&'static Broker),
    /// The test's own.
    Own(Broker),
}

impl Deref for BrokerRef {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        match self {
            Self::Shared(broker) => broker,
            Self::Own(broker) => broker,
        }
    }
}

impl DerefMut for BrokerRef {
    fn deref_mut(&mut self) -> &mut Broker {
        match self {
            Self::Shared(_) => panic!(
                "this stack shares the test binary's broker: start it with \
                 StackOptions {{ broker: BrokerChoice::Own, .. }} to stop or restart a broker"
            ),
            Self::Own(broker) => broker,
        }
    }
}

/// A prefix no other stack of this process (or another test process) has.
fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "rwtest{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The echo service, in this process, with its admin port on `admin` (bound
/// here and handed over, as a binary's main does).
fn start_echo(settings: replyway_echo::Settings, admin: Option<std::net::TcpListener>) -> Running {
    let token = CancellationToken::new();
    Running::spawn(None, token.clone(), async move {
        let admin = match admin {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                Some(tokio::net::TcpListener::from_std(listener)?)
            }
            None => None,
        };
        replyway_echo::run_with_admin(&settings, admin, token).await
    })
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn sums_the_samples_whose_labels_include_those_asked_for() {
        let page = "# TYPE replyway_gateway_requests counter
replyway_gateway_requests_total{route=\"a\",status=\"200\"} 3
replyway_gateway_requests_total{route=\"b\",status=\"200\"} 4
replyway_gateway_requests_total{route=\"b\",status=\"2000\"} 100
replyway_gateway_requests_total_other{status=\"200\"} 100
replyway_gateway_waiting_requests 7
";
        let requests = "replyway_gateway_requests_total";
        assert!((sum_samples(page, requests, &[("status", "200")]) - 7.0).abs() < f64::EPSILON);
        assert!((sum_samples(page, requests, &[]) - 107.0).abs() < f64::EPSILON);
        let waiting = sum_samples(page, "replyway_gateway_waiting_requests", &[]);
        assert!((waiting - 7.0).abs() < f64::EPSILON);
        assert!(sum_samples(page, "missing", &[]).abs() < f64::EPSILON);
    }
}
