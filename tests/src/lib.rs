//! Test harness: a real Kafka-protocol broker (tansu) and a real Redis, each
//! started on free ports by the test that uses them, plus in-process gateways,
//! a collector and the echo service talking to them over the network.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use replyway_gateway::routes::RouteConfig;
use replyway_shared::settings::{KafkaSettings, RedisSettings};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < within {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after {within:?}")
}

/// Logs of the test process, once.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A `redis-server` of the test's own.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    /// TLS only (a self-signed certificate) with this password.
    secure: Option<String>,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            secure: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts one that speaks only TLS (a self-signed certificate made with the
    /// `openssl` tool) and requires `password`.
    pub fn start_secure(password: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl to make a certificate")?;
        anyhow::ensure!(status.success(), "openssl req failed");
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            secure: Some(password.to_owned()),
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        match &self.secure {
            None => command.args(["--port", &port]),
            Some(password) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.path().join("cert.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.path().join("key.pem"))
                .args(["--requirepass", password]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// Stops it (SIGKILL): its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>`, or for a secure one
    /// `rediss://:<password>@127.0.0.1:<port>/#insecure` (the certificate is
    /// self-signed, so it is not verified).
    pub fn url(&self) -> String {
        match &self.secure {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(password) => format!("rediss://:{password}@127.0.0.1:{}/#insecure", self.port),
        }
    }

    /// A client connection.
    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tansu binary: `$TANSU_BIN`, else `tansu` on the PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return bin.into();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cargo/bin/tansu")
}

/// A tansu broker of the test's own, keeping records in memory.
pub struct Broker {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    log: tempfile::NamedTempFile,
    storage: String,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts one on a free port and waits until it answers metadata requests.
    pub fn start() -> anyhow::Result<Self> {
        let mut broker = Self {
            child: None,
            port: free_port(),
            log: tempfile::NamedTempFile::new()?,
            storage: "memory://tansu/".into(),
            _dir: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// Starts one that keeps its records in SQLite, so they survive a restart.
    pub fn start_persistent() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut broker = Self {
            child: None,
            port: free_port(),
            log: tempfile::NamedTempFile::new()?,
            // tansu resolves the SQLite path against its working directory.
            storage: "sqlite://tansu.db".into(),
            _dir: Some(dir),
        };
        broker.restart()?;
        Ok(broker)
    }

    /// Starts it (again) on the same port; in memory, records of a previous run
    /// are gone; in SQLite they are kept.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &self.storage])
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .current_dir(self._dir.as_ref().map_or_else(std::env::temp_dir, |d| d.path().to_owned()))
            .stdout(self.log.reopen()?)
            .stderr(self.log.reopen()?)
            .spawn()
            .context("starting tansu (install it: cargo install tansu --version 0.6.0 --locked --features dynostore,libsql)")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20))
    }

    /// Stops it (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Client settings as Replyway's local configuration has them.
    pub fn kafka_settings(&self) -> KafkaSettings {
        let mut kafka = KafkaSettings {
            brokers: self.bootstrap(),
            ..KafkaSettings::default()
        };
        kafka
            .consumer
            .insert("fetch.wait.max.ms".into(), "1".into());
        kafka
            .producer
            .insert("message.timeout.ms".into(), "3000".into());
        // tansu 0.6 mishandles idempotent producers: its memory engine drops a
        // few acknowledged records under load (8000 acknowledged, about 7985
        // stored; none with idempotence off), and its SQLite engine panics when
        // one re-initialises after a broker restart. Apache Kafka does neither;
        // Replyway's default stays on.
        kafka
            .producer
            .insert("enable.idempotence".into(), "false".into());
        kafka
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// Creates topics with `partitions` partitions each.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context("creating topics")?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        Ok(())
    }

    /// Sum of the high watermarks of a topic's partitions: records ever produced.
    pub fn record_count(&self, topic: &str) -> anyhow::Result<i64> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", "replyway-tests-inspector")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or_default();
        let mut total = 0;
        for p in 0..partitions {
            let (low, high) =
                consumer.fetch_watermarks(topic, i32::try_from(p)?, Duration::from_secs(5))?;
            total += high - low;
        }
        Ok(total)
    }

    /// A producer, to play a backend service.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(self.client_config().create()?)
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Produces a record with the given headers (a hand-made reply or command).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &[u8],
) -> anyhow::Result<()> {
    let mut owned = rdkafka::message::OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(rdkafka::message::Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::to(topic).payload(value).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

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

/// Request topic of the echo service in tests.
pub const ECHO_TOPIC: &str = "echo.requests";
/// Reply topic in tests.
pub const REPLY_TOPIC: &str = "replyway.replies";

/// The routes every test stack serves.
pub fn test_routes() -> Vec<RouteConfig> {
    let route =
        |method: &str, path: &str, key: &str, timeout_ms: u64, body_limit: usize| RouteConfig {
            name: None,
            method: method.into(),
            path: path.into(),
            topic: ECHO_TOPIC.into(),
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

/// A Replyway binary of this workspace, built next to the test executable
/// (`make test` builds them first).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    // A test runs from target/<profile>/deps, a binary (the benchmark) from
    // target/<profile>.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: run `cargo build --workspace --bins` first (make test does)",
            exe.display()
        )
    })
}

/// A Replyway binary running as an OS process, so a test can signal or kill it.
pub struct Proc {
    child: Child,
    log: tempfile::NamedTempFile,
    _config: tempfile::NamedTempFile,
    /// Its HTTP address, for gateways.
    pub addr: Option<SocketAddr>,
}

impl Proc {
    /// Starts binary `name` with `settings` as its TOML file.
    pub fn spawn<S: serde::Serialize>(
        name: &str,
        settings: &S,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let log = std::env::var("REPLYWAY_TEST_LOG").unwrap_or_else(|_| "info".into());
        Self::spawn_with_log(name, settings, addr, &log)
    }

    /// Starts binary `name` with `settings` as its TOML file and `RUST_LOG=log`.
    pub fn spawn_with_log<S: serde::Serialize>(
        name: &str,
        settings: &S,
        addr: Option<SocketAddr>,
        log_filter: &str,
    ) -> anyhow::Result<Self> {
        let mut config = tempfile::Builder::new().suffix(".toml").tempfile()?;
        std::io::Write::write_all(&mut config, toml::to_string(settings)?.as_bytes())?;
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(bin_path(name))
            .arg("--config")
            .arg(config.path())
            .env("RUST_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            log,
            _config: config,
            addr,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, …).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Waits until it exits, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Resident set size in KiB, from `/proc`.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS line")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no VmRSS value")?
            .parse()?)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    pub broker: Broker,
    /// Redis.
    pub redis: RedisServer,
    /// Key prefix of this stack.
    pub prefix: String,
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
    /// HTTP client.
    pub http: reqwest::Client,
    /// The settings the gateways started with.
    pub gateway_settings: replyway_gateway::Settings,
    /// The settings the collectors started with.
    pub collector_settings: replyway_collector::Settings,
}

/// How a test wants its stack.
pub struct StackOptions {
    /// Gateway replicas.
    pub gateways: usize,
    /// Collector replicas.
    pub collectors: usize,
    /// Run gateways and collectors as OS processes (to signal or kill them).
    pub processes: bool,
    /// Keep the broker's records in SQLite, so they survive a broker restart.
    pub persistent_broker: bool,
    /// Bound on waiting requests per gateway.
    pub max_waiting: usize,
    /// Dead-letter topic of the collectors (created with the other topics).
    pub dead_letter_topic: Option<String>,
    /// Redis over TLS only, with this password.
    pub redis_password: Option<String>,
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
            persistent_broker: false,
            max_waiting: 10_000,
            dead_letter_topic: None,
            redis_password: None,
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
        let broker = if options.persistent_broker {
            Broker::start_persistent()?
        } else {
            Broker::start()?
        };
        let redis = match &options.redis_password {
            Some(password) => RedisServer::start_secure(password)?,
            None => RedisServer::start()?,
        };
        let mut topics = vec![ECHO_TOPIC, REPLY_TOPIC];
        if let Some(dlq) = &options.dead_letter_topic {
            topics.push(dlq);
        }
        broker.create_topics(&topics, 3).await?;
        let prefix = format!("rwtest{}", free_port());
        let kafka = broker.kafka_settings();
        let redis_settings = RedisSettings {
            url: redis.url(),
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
            reply_topic: REPLY_TOPIC.into(),
            redis: redis_settings.clone(),
            kafka: kafka.clone(),
            routes: test_routes(),
            ..replyway_gateway::Settings::default()
        };
        (options.gateway)(&mut gateway_settings);
        let mut gateways = Vec::new();
        let mut gateway_admin = Vec::new();
        for _ in 0..options.gateways {
            let admin_listen = format!("127.0.0.1:{}", free_port());
            gateway_admin.push(admin_listen.clone());
            if options.processes {
                let port = free_port();
                let settings = replyway_gateway::Settings {
                    listen: format!("127.0.0.1:{port}"),
                    admin_listen,
                    ..gateway_settings.clone()
                };
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                gateways.push(Node::Process(Proc::spawn(
                    "replyway-gateway",
                    &settings,
                    Some(addr),
                )?));
            } else {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let token = CancellationToken::new();
                let settings = replyway_gateway::Settings {
                    admin_listen,
                    ..gateway_settings.clone()
                };
                let run = replyway_gateway::run(settings, listener, token.clone());
                gateways.push(Node::InProcess(Running::spawn(Some(addr), token, run)));
            }
        }

        let mut collector_settings = replyway_collector::Settings {
            topics: vec![REPLY_TOPIC.into()],
            group_id: format!("{prefix}-collector"),
            dead_letter_topic: options.dead_letter_topic.clone(),
            redis: redis_settings.clone(),
            kafka: kafka.clone(),
            ..replyway_collector::Settings::default()
        };
        (options.collector)(&mut collector_settings);
        let mut collectors = Vec::new();
        let mut collector_admin = Vec::new();
        let mut collector_stats = Arc::default();
        for i in 0..options.collectors {
            let admin_listen = format!("127.0.0.1:{}", free_port());
            collector_admin.push(admin_listen.clone());
            if options.processes {
                let settings = replyway_collector::Settings {
                    admin_listen,
                    ..collector_settings.clone()
                };
                collectors.push(Node::Process(Proc::spawn(
                    "replyway-collector",
                    &settings,
                    None,
                )?));
            } else {
                let collector = replyway_collector::Collector::new(&collector_settings)?;
                if i == 0 {
                    collector_stats = collector.stats();
                }
                let token = CancellationToken::new();
                collectors.push(Node::InProcess(Running::spawn(
                    None,
                    token.clone(),
                    async move { collector.run_with_admin(&admin_listen, token).await },
                )));
            }
        }

        let echo_settings = replyway_echo::Settings {
            topics: vec![ECHO_TOPIC.into()],
            group_id: format!("{prefix}-echo"),
            kafka,
            ..replyway_echo::Settings::default()
        };
        let token = CancellationToken::new();
        let echo = Running::spawn(None, token.clone(), async move {
            replyway_echo::run(&echo_settings, token).await
        });

        let stack = Self {
            broker,
            redis,
            prefix,
            gateways,
            collectors,
            collector_stats,
            gateway_admin,
            collector_admin,
            echo,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(1000)
                .build()?,
            gateway_settings,
            collector_settings,
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
        for gateway in &mut self.gateways {
            gateway.stop().await?;
        }
        let stopped = tokio::time::timeout(Duration::from_secs(20), async {
            for collector in &mut self.collectors {
                collector.stop().await?;
            }
            self.echo.stop().await
        })
        .await;
        stopped.context("collectors and echo did not stop within 20 s")??;
        Ok(())
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

    /// Keys of this stack in Redis matching `pattern` (after the prefix).
    pub async fn redis_keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = self.redis.connection().await?;
        Ok(redis::cmd("KEYS")
            .arg(format!("{}:{pattern}", self.prefix))
            .query_async(&mut conn)
            .await?)
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

/// Every record of `topic`, read with assigned partitions (no consumer group)
/// from the start of each partition to its end. The end is the high watermark,
/// asked again when the read reaches it and whenever a poll comes back empty,
/// so a watermark that lagged when reading began does not cut the read short.
///
/// # Errors
/// When the broker cannot be asked, or a partition stops short of its end
/// for 60 s.
pub fn read_topic_to_end(
    kafka: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka
        .consumer_config(&format!("replyway-tests-reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut records = Vec::new();
    for partition in partitions {
        let (low, mut high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        consumer.assign(&assignment)?;
        let (mut next, deadline) = (low, Instant::now() + Duration::from_secs(60));
        loop {
            if next >= high {
                high = high.max(consumer.fetch_watermarks(topic, partition, timeout)?.1);
                if next >= high {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading {topic}/{partition} got stuck at offset {next} of {high}"
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                high = high.max(consumer.fetch_watermarks(topic, partition, timeout)?.1);
                continue;
            };
            let message = message?;
            next = message.offset() + 1;
            records.push(message.detach());
        }
    }
    Ok(records)
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
