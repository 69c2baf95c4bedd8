//! Apache Kafka for tests, the benchmark and `make run`'s peers: KRaft nodes
//! (combined broker and controller) started from the jars that
//! `scripts/install-kafka.sh` put in its cache (or `$KAFKA_HOME/libs`), on free
//! loopback ports, with data on disk so a node can be killed and restarted.
//!
//! A JVM broker takes seconds to start, so a test binary shares one
//! ([`Broker::shared`]) among the tests that only need topics and group ids of
//! their own; a test that stops or restarts a broker starts its own
//! ([`Broker::start`], [`Broker::start_cluster`]).
//!
//! Brokers are always stopped: [`Drop`] kills them, and because the shared
//! broker lives in a `static` (never dropped), every broker also has a watchdog
//! process that kills its nodes and removes its data when the test process
//! exits in any way (its end of a pipe closes).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

use replyway_shared::settings::KafkaSettings;

use crate::{free_port, wait_for_port};

/// The Apache Kafka version the project pins: `kafka.version` of
/// `scripts/kafka/pom.xml`, the one file that names it (the compose file's
/// image tag is checked against it by the compose tests).
pub fn kafka_version() -> &'static str {
    const POM: &str = include_str!("../../scripts/kafka/pom.xml");
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(version, _)| version.trim())
        .expect("scripts/kafka/pom.xml names kafka.version")
}

/// The broker's class path folder: `$KAFKA_HOME/libs` where `KAFKA_HOME` names
/// an Apache Kafka distribution, else the cache `scripts/install-kafka.sh`
/// fills (`$REPLYWAY_CACHE`, default `$XDG_CACHE_HOME/replyway` or
/// `~/.cache/replyway`, then `kafka-<version>/libs`).
pub fn kafka_libs() -> PathBuf {
    if let Some(home) = std::env::var_os("KAFKA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join("libs");
    }
    let cache = std::env::var_os("REPLYWAY_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|c| !c.is_empty())
                .map(|c| PathBuf::from(c).join("replyway"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/replyway")
        });
    cache
        .join(format!("kafka-{}", kafka_version()))
        .join("libs")
}

/// The broker's log4j2 configuration: warnings and errors to the node's log.
const LOG4J2: &str = "Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: \"[%d] %p %m (%c)%n\"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaServer
        level: INFO
";

/// One KRaft node of a [`Broker`].
struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn properties(&self, voters: &str, replication: usize) -> String {
        let (port, cport, dir) = (self.port, self.controller_port, self.dir.display());
        let min_isr = replication.min(2);
        format!(
            "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={dir}/data
num.partitions=3
default.replication.factor={replication}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=3
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
server.max.startup.time.ms=60000
",
            id = self.id,
        )
    }
}

/// Apache Kafka of a test's own (one node, or a cluster), or the test binary's
/// shared one.
pub struct Broker {
    nodes: Vec<Node>,
    dir: Dir,
    heap: &'static str,
    watchdog: Option<(Child, ChildStdin)>,
    /// How long the last start took until every node's client port was open.
    pub startup: Duration,
}

impl Broker {
    /// One KRaft node on free ports, formatted and ready.
    ///
    /// # Errors
    /// When the jars are missing (run `scripts/install-deps.sh`) or the broker
    /// does not open its port within a minute.
    pub fn start() -> anyhow::Result<Self> {
        Self::launch(1, "-Xms512m -Xmx512m", Dir::temp()?, None)
    }

    /// One node keeping its data in `dir` across runs (formatted on first
    /// start), on `port` (clients) and `controller_port`, with the heap of
    /// Kafka's own start script: `make run`'s broker.
    ///
    /// # Errors
    /// As [`Broker::start`].
    pub fn start_kept(dir: &Path, port: u16, controller_port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::launch(
            1,
            "-Xms1g -Xmx1g",
            Dir::Kept(dir.to_owned()),
            Some((port, controller_port)),
        )
    }

    /// A cluster of `nodes` KRaft nodes (each broker and controller), topics
    /// with replication factor `min(nodes, 3)` and `min.insync.replicas` 2.
    ///
    /// # Errors
    /// As [`Broker::start`].
    pub fn start_cluster(nodes: usize) -> anyhow::Result<Self> {
        Self::launch(nodes, "-Xms384m -Xmx384m", Dir::temp()?, None)
    }

    /// A broker with the heap of Kafka's own start script (1 GiB), for the
    /// benchmark.
    ///
    /// # Errors
    /// As [`Broker::start`].
    pub fn start_for_benchmark() -> anyhow::Result<Self> {
        Self::launch(1, "-Xms1g -Xmx1g", Dir::temp()?, None)
    }

    /// The test binary's shared broker, started on first use. Tests using it
    /// create topics and consumer groups named after their own prefix.
    ///
    /// # Panics
    /// When it cannot start (the message says why).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| match Self::start() {
            Ok(broker) => broker,
            Err(e) => panic!("the shared Apache Kafka broker did not start: {e:#}"),
        })
    }

    fn launch(
        count: usize,
        heap: &'static str,
        dir: Dir,
        ports: Option<(u16, u16)>,
    ) -> anyhow::Result<Self> {
        let libs = kafka_libs();
        anyhow::ensure!(
            libs.join("kafka_2.13-".to_owned() + kafka_version() + ".jar")
                .is_file()
                || std::env::var_os("KAFKA_HOME").is_some(),
            "Apache Kafka {} is not installed in {}: run scripts/install-deps.sh",
            kafka_version(),
            libs.display()
        );
        let nodes: Vec<Node> = (1..=count)
            .map(|i| Node {
                id: u32::try_from(i).unwrap_or(u32::MAX),
                port: ports.map_or_else(free_port, |p| p.0),
                controller_port: ports.map_or_else(free_port, |p| p.1),
                dir: dir.path().join(format!("node-{i}")),
                child: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(dir.path().join("log4j2.yaml"), LOG4J2)?;
        let cluster_id = cluster_id();
        // Formatting is a JVM start each: the nodes are formatted at once.
        // A kept data folder is formatted once.
        let formats: Vec<_> = nodes
            .iter()
            .filter(|node| !node.dir.join("data/meta.properties").is_file())
            .map(|node| {
                std::fs::create_dir_all(&node.dir)?;
                let properties = node.dir.join("server.properties");
                std::fs::write(&properties, node.properties(&voters, count.min(3)))?;
                let format = storage_tool(&libs, &["format", "-t", &cluster_id, "-c"], &properties);
                format.map(|f| (node.id, f))
            })
            .collect::<anyhow::Result<_>>()?;
        for (id, format) in formats {
            let output = format.wait_with_output()?;
            anyhow::ensure!(
                output.status.success(),
                "formatting Kafka node {id}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut broker = Self {
            nodes,
            dir,
            heap,
            watchdog: None,
            startup: Duration::ZERO,
        };
        broker.watchdog = Some(broker.spawn_watchdog()?);
        let started = Instant::now();
        for i in 0..count {
            broker.spawn_node(i)?;
        }
        for i in 0..count {
            broker.wait_node(i)?;
        }
        broker.startup = started.elapsed();
        Ok(broker)
    }

    /// A `sh` that waits for the end of its standard input (this process's end
    /// of the pipe closes when it exits, however it exits), then kills the pids
    /// listed in `pids` and removes a temporary data folder.
    fn spawn_watchdog(&self) -> anyhow::Result<(Child, ChildStdin)> {
        let script = match self.dir {
            Dir::Temp(_) => {
                r#"cat >/dev/null; kill -9 $(cat "$1/pids" 2>/dev/null) 2>/dev/null; rm -rf "$1""#
            }
            Dir::Kept(_) => r#"cat >/dev/null; kill -9 $(cat "$1/pids" 2>/dev/null) 2>/dev/null"#,
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("replyway-kafka-watchdog")
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the broker's watchdog (sh)")?;
        let stdin = child.stdin.take().context("the watchdog's stdin")?;
        Ok((child, stdin))
    }

    fn write_pids(&self) -> anyhow::Result<()> {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let mut file = std::fs::File::create(self.dir.path().join("pids"))?;
        file.write_all(pids.join(" ").as_bytes())?;
        Ok(())
    }

    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let log4j = self.dir.path().join("log4j2.yaml");
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("broker.log"))?;
        let child = Command::new("java")
            .args(self.heap.split_whitespace())
            .args([
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(format!("{}/*", kafka_libs().display()))
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the Apache Kafka broker (java; is Java 17 installed?)")?;
        node.child = Some(child);
        self.write_pids()
    }

    fn wait_node(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.nodes[i].port;
        if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
            bail!(
                "{e}: Apache Kafka node {} did not open its client port; its log:\n{}",
                self.nodes[i].id,
                self.node_log(i)
            );
        }
        Ok(())
    }

    /// Node ids, in start order.
    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn index(&self, id: u32) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no Kafka node {id}"))
    }

    /// SIGKILLs node `id` (its data stays on disk).
    pub fn kill_node(&mut self, id: u32) {
        let i = self.index(id);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `id` again on its ports with its data, and waits until its
    /// client port is open.
    ///
    /// # Errors
    /// When it does not come back within a minute.
    pub fn restart_node(&mut self, id: u32) -> anyhow::Result<()> {
        let i = self.index(id);
        self.kill_node(id);
        self.spawn_node(i)?;
        self.wait_node(i)
    }

    /// SIGKILLs every node (data kept on disk).
    pub fn stop(&mut self) {
        for id in self.node_ids() {
            self.kill_node(id);
        }
    }

    /// Stops every node with SIGTERM (a controlled shutdown), waiting at most
    /// `within` for each before it is killed.
    pub fn terminate(&mut self, within: Duration) {
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + within;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts every node again with its data.
    ///
    /// # Errors
    /// As [`Broker::restart_node`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let started = Instant::now();
        for i in 0..self.nodes.len() {
            self.spawn_node(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_node(i)?;
        }
        self.startup = started.elapsed();
        Ok(())
    }

    /// The process id of node `id`, while it runs.
    pub fn node_pid(&self, id: u32) -> Option<u32> {
        self.nodes[self.index(id)].child.as_ref().map(Child::id)
    }

    /// The process id of the first node, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.nodes
            .first()
            .and_then(|n| n.child.as_ref().map(Child::id))
    }

    /// `bootstrap.servers`: every node.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client settings as a user gets them by default: only the broker list is
    /// set.
    pub fn kafka_settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.bootstrap(),
            ..KafkaSettings::default()
        }
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// Creates topics with `partitions` partitions each (replication factor:
    /// up to three nodes) and waits until every node knows their leaders.
    ///
    /// # Errors
    /// When the admin API refuses, or the leaders are not known within 30 s.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let replication = i32::try_from(self.nodes.len().min(3))?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
            .collect();
        self.create(&new, false).await?;
        self.wait_for_leaders(topics, partitions).await
    }

    /// Creates those of `topics` that do not exist yet, as
    /// [`Broker::create_topics`] does.
    ///
    /// # Errors
    /// As [`Broker::create_topics`].
    pub async fn ensure_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let replication = i32::try_from(self.nodes.len().min(3))?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
            .collect();
        self.create(&new, true).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for topic in topics {
            while !self
                .leaders(topic)
                .is_ok_and(|l| !l.is_empty() && l.iter().all(Option::is_some))
            {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "topic {topic} has no leaders after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Creates single-partition topics whose replicas are `replicas`, the first
    /// the preferred leader (a fault test knows which node to kill).
    ///
    /// # Errors
    /// As [`Broker::create_topics`].
    pub async fn create_topics_led_by(
        &self,
        topics: &[&str],
        replicas: &[u32],
    ) -> anyhow::Result<()> {
        let ids: Vec<i32> = replicas
            .iter()
            .map(|r| i32::try_from(*r))
            .collect::<Result<_, _>>()?;
        let assignment = [ids.as_slice()];
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Variable(&assignment)))
            .collect();
        self.create(&new, false).await?;
        self.wait_for_leaders(topics, 1).await
    }

    async fn create(&self, new: &[NewTopic<'_>], existing_ok: bool) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let results = admin
            .create_topics(
                new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await
            .context("creating topics")?;
        for result in results {
            match result {
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if existing_ok => {}
                Err((topic, code)) => bail!("creating topic {topic}: {code}"),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    async fn wait_for_leaders(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for topic in topics {
            loop {
                let led = self
                    .leaders(topic)
                    .map(|l| {
                        l.len() == usize::try_from(partitions).unwrap_or(0)
                            && l.iter().all(|x| x.is_some())
                    })
                    .unwrap_or(false);
                if led {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "topic {topic} has no leaders after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The leader node of each partition of `topic` (`None` while it has none),
    /// as the cluster's metadata says now.
    ///
    /// # Errors
    /// When no node answers.
    pub fn leaders(&self, topic: &str) -> anyhow::Result<Vec<Option<u32>>> {
        let consumer: BaseConsumer = self.client_config().create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let Some(t) = metadata.topics().first() else {
            return Ok(Vec::new());
        };
        if t.error().is_some() {
            return Ok(Vec::new());
        }
        let mut leaders: Vec<(i32, Option<u32>)> = t
            .partitions()
            .iter()
            .map(|p| (p.id(), u32::try_from(p.leader()).ok()))
            .collect();
        leaders.sort_unstable();
        Ok(leaders.into_iter().map(|(_, l)| l).collect())
    }

    /// Records of `topic`, counted by reading every partition from its start
    /// to its end ([`crate::read_topic_to_end`]), not from the broker's
    /// offsets.
    ///
    /// # Errors
    /// As [`crate::read_topic_to_end`].
    pub fn record_count(&self, topic: &str) -> anyhow::Result<i64> {
        Ok(i64::try_from(
            crate::read_topic_to_end(&self.kafka_settings(), topic)?.len(),
        )?)
    }

    /// A producer with the product's producer settings, to play a backend
    /// service.
    ///
    /// # Errors
    /// When librdkafka refuses the settings.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(self.kafka_settings().producer_config().create()?)
    }

    fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("broker.log")).unwrap_or_default()
    }

    /// The nodes' logs so far (for failure messages).
    pub fn log(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- Kafka node {} ---\n{}",
                    self.nodes[i].id,
                    self.node_log(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The data folder of every node.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Starts `kafka.tools.StorageTool` with `args` and then `file`.
fn storage_tool(libs: &Path, args: &[&str], file: &Path) -> anyhow::Result<Child> {
    Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .arg("kafka.tools.StorageTool")
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running Kafka's StorageTool (java; is Java 17 installed?)")
}

/// A KRaft cluster id as `StorageTool random-uuid` makes one: 16 random bytes
/// in URL-safe base64 without padding, never starting with `-` (which a
/// command line would read as an option).
fn cluster_id() -> String {
    use base64::Engine as _;
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// Where a broker keeps its data.
enum Dir {
    /// Removed when the broker goes.
    Temp(tempfile::TempDir),
    /// Kept across runs.
    Kept(PathBuf),
}

impl Dir {
    fn temp() -> anyhow::Result<Self> {
        Ok(Self::Temp(
            tempfile::Builder::new()
                .prefix("replyway-kafka")
                .tempdir()?,
        ))
    }

    fn path(&self) -> &Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(dir) => dir,
        }
    }
}
