//! docker-compose.yml against the binaries it runs. No Docker engine is needed:
//! the compose file is parsed, and for each Replyway service (gateway,
//! collector, echo, ledger) its command and environment are given to the
//! binary's real settings loader (`replyway_shared::settings::load`, in a child
//! process, so that the environment is exactly the service's) and validated.
//! Then the binaries run as processes with those commands, files and
//! environment, against a broker and Redis of the test's own instead of the
//! compose services, and a request through each compose route gets its reply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use replyway_tests::{Broker, RedisServer, bin_path, eventually, init_logs};

type TestResult = anyhow::Result<()>;

/// The Replyway services of the compose file and their binaries.
const SERVICES: [(&str, &str); 4] = [
    ("gateway", "replyway-gateway"),
    ("collector", "replyway-collector"),
    ("echo", "replyway-echo"),
    ("ledger", "replyway-ledger"),
];

/// Where the image keeps the settings files (Dockerfile, and the compose mount).
const IMAGE_CONFIG_DIR: &str = "/etc/replyway";
/// Where they are in the repository.
const REPO_CONFIG_DIR: &str = "config/compose";

/// Environment of the child process that loads one service's settings.
const CHILD_SERVICE: &str = "COMPOSE_TEST_LOAD_SERVICE";
const CHILD_CONFIG: &str = "COMPOSE_TEST_LOAD_CONFIG";
/// Prefix of the child's answer on its standard output.
const CHILD_ANSWER: &str = "compose-test-settings:";
/// How long a started binary may take to report its ports.
const START: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(repo().join(path)).with_context(|| format!("reading {path}"))
}

/// One service of the compose file, as much of it as the checks need.
struct Service {
    name: String,
    def: Yaml,
}

impl Service {
    fn get(&self, key: &str) -> Option<&Yaml> {
        self.def.get(key)
    }

    /// `command`, as a list (a string is split on whitespace, as compose does
    /// for a command without quotes).
    fn command(&self) -> anyhow::Result<Vec<String>> {
        match self.get("command") {
            Some(Yaml::Sequence(items)) => items.iter().map(scalar).collect(),
            Some(Yaml::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
            other => bail!("service {}: no command ({other:?})", self.name),
        }
    }

    /// `environment`, as a map (the list form `K=V` too), with the
    /// operator's shell variables unset (`${NAME:-default}` is its default, as
    /// `docker compose` takes it). A variable without a value would come from
    /// the operator's shell: none is expected here.
    fn environment(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.environment_with(&BTreeMap::new())
    }

    /// `environment`, with `${NAME:-default}` taken from `shell` (else its
    /// default).
    fn environment_with(
        &self,
        shell: &BTreeMap<&str, &str>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let env = self.raw_environment()?;
        env.into_iter()
            .map(|(k, v)| Ok((k, interpolate(&v, shell)?)))
            .collect()
    }

    fn raw_environment(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        match self.get("environment") {
            None => {}
            Some(Yaml::Mapping(map)) => {
                for (k, v) in map {
                    let k = scalar(k)?;
                    ensure!(!v.is_null(), "service {}: {k} has no value", self.name);
                    env.insert(k, scalar(v)?);
                }
            }
            Some(Yaml::Sequence(items)) => {
                for item in items {
                    let item = scalar(item)?;
                    let (k, v) = item
                        .split_once('=')
                        .with_context(|| format!("service {}: {item} has no value", self.name))?;
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
            Some(other) => bail!("service {}: environment {other:?}", self.name),
        }
        Ok(env)
    }

    /// `depends_on` as service → condition (`service_started` for the list form).
    fn depends_on(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut deps = BTreeMap::new();
        match self.get("depends_on") {
            None => {}
            Some(Yaml::Sequence(items)) => {
                for item in items {
                    deps.insert(scalar(item)?, "service_started".to_owned());
                }
            }
            Some(Yaml::Mapping(map)) => {
                for (k, v) in map {
                    let condition = v
                        .get("condition")
                        .map(scalar)
                        .transpose()?
                        .unwrap_or_else(|| "service_started".into());
                    deps.insert(scalar(k)?, condition);
                }
            }
            Some(other) => bail!("service {}: depends_on {other:?}", self.name),
        }
        Ok(deps)
    }

    /// The healthcheck's `test`, as one line.
    fn healthcheck(&self) -> anyhow::Result<Option<String>> {
        match self.get("healthcheck").and_then(|h| h.get("test")) {
            None => Ok(None),
            Some(Yaml::Sequence(items)) => Ok(Some(
                items
                    .iter()
                    .map(scalar)
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(" "),
            )),
            Some(other) => Ok(Some(scalar(other)?)),
        }
    }

    /// Short-syntax volumes as (source, target).
    fn volumes(&self) -> anyhow::Result<Vec<(String, String)>> {
        let Some(Yaml::Sequence(items)) = self.get("volumes") else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .map(|v| {
                let v = scalar(v)?;
                let mut parts = v.split(':');
                match (parts.next(), parts.next()) {
                    (Some(s), Some(t)) => Ok((s.to_owned(), t.to_owned())),
                    _ => bail!("service {}: volume {v}", self.name),
                }
            })
            .collect()
    }
}

/// `value` with each `${NAME:-default}` replaced by `shell[NAME]`, else by
/// its default; a `${NAME}` without a default is refused (it would need the
/// operator's shell).
fn interpolate(value: &str, shell: &BTreeMap<&str, &str>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .with_context(|| format!("unclosed ${{ in {value}"))?
            + start;
        let inner = &rest[start + 2..end];
        let (name, default) = inner
            .split_once(":-")
            .with_context(|| format!("{inner} has no default in {value}"))?;
        out.push_str(shell.get(name).copied().unwrap_or(default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn scalar(v: &Yaml) -> anyhow::Result<String> {
    Ok(match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => bail!("not a scalar: {other:?}"),
    })
}

/// The services of docker-compose.yml, with YAML merge keys (`<<: *x`) applied.
fn compose() -> anyhow::Result<BTreeMap<String, Service>> {
    let mut doc: Yaml = serde_yaml_ng::from_str(&read("docker-compose.yml")?)?;
    doc.apply_merge()?;
    let Some(Yaml::Mapping(services)) = doc.get("services") else {
        bail!("docker-compose.yml has no services");
    };
    services
        .iter()
        .map(|(k, v)| {
            let name = scalar(k)?;
            Ok((
                name.clone(),
                Service {
                    name,
                    def: v.clone(),
                },
            ))
        })
        .collect()
}

/// The repository file behind a settings path of the image.
fn repo_config(path: &str) -> anyhow::Result<PathBuf> {
    let rest = path
        .strip_prefix(IMAGE_CONFIG_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .with_context(|| format!("{path} is not under {IMAGE_CONFIG_DIR}"))?;
    let file = repo().join(REPO_CONFIG_DIR).join(rest);
    ensure!(file.is_file(), "{} does not exist", file.display());
    Ok(file)
}

/// The command of a Replyway service with its settings path mapped to the
/// repository: (binary, arguments).
fn native_command(service: &Service) -> anyhow::Result<(String, Vec<String>)> {
    let mut command = service.command()?.into_iter();
    let binary = command.next().context("empty command")?;
    let mut args = Vec::new();
    while let Some(arg) = command.next() {
        if arg == "--config" || arg == "-c" {
            let path = command.next().context("--config without a path")?;
            args.push("--config".to_owned());
            args.push(repo_config(&path)?.display().to_string());
        } else if let Some(path) = arg.strip_prefix("--config=") {
            args.push(format!("--config={}", repo_config(path)?.display()));
        } else {
            args.push(arg);
        }
    }
    Ok((binary, args))
}

/// The settings file a command names.
fn config_arg(args: &[String]) -> Option<PathBuf> {
    args.iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config="))
                .map(PathBuf::from)
        })
}

/// A command whose inherited environment holds no `REPLYWAY_…` variable of
/// this shell: the service sees only its own.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("REPLYWAY_")
        {
            command.env_remove(k);
        }
    }
    command
}

/// The settings the binary of `service` loads from `config` and `env`, by its
/// own loader, in a child process (this test binary, running
/// [`settings_loader_child`]) whose environment is exactly `env`. Returns them
/// as JSON, or the loader's error.
fn load_in_child(
    service: &str,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Result<Json, String>> {
    let exe = std::env::current_exe()?;
    let mut command = clean_command(exe);
    command
        .args([
            "compose::settings_loader_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env)
        .env(CHILD_SERVICE, service)
        .stdin(Stdio::null());
    if let Some(config) = config {
        command.env(CHILD_CONFIG, config);
    }
    let output = command.output().context("running the settings loader")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = stdout
        .lines()
        .find_map(|l| l.split_once(CHILD_ANSWER).map(|(_, answer)| answer))
        .with_context(|| {
            format!(
                "the settings loader of {service} did not answer:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let answer: Json = serde_json::from_str(answer)?;
    Ok(match (answer.get("settings"), answer.get("error")) {
        (Some(settings), _) => Ok(settings.clone()),
        (None, Some(Json::String(e))) => Err(e.clone()),
        _ => bail!("unexpected answer {answer}"),
    })
}

fn answer<T: serde::Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Json {
    match result {
        Ok(settings) => serde_json::json!({ "settings": settings }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// Not a check of its own: the body of the child process that
/// [`load_in_child`] starts. Run by the test harness, it finds no request in
/// its environment and returns at once.
#[test]
fn settings_loader_child() {
    let Ok(service) = std::env::var(CHILD_SERVICE) else {
        return;
    };
    let config = std::env::var_os(CHILD_CONFIG).map(PathBuf::from);
    let config = config.as_deref();
    use replyway_shared::settings::load;
    let json = match service.as_str() {
        "gateway" => answer(load(&replyway_gateway::Settings::default(), config)),
        "collector" => answer(load(&replyway_collector::Settings::default(), config)),
        "echo" => answer(load(&replyway_echo::Settings::default(), config)),
        "ledger" => answer(load(&replyway_ledger::Settings::default(), config)),
        other => serde_json::json!({ "error": format!("unknown service {other}") }),
    };
    println!("{CHILD_ANSWER}{json}");
}

fn typed<T: DeserializeOwned>(service: &str, json: &Json) -> anyhow::Result<T> {
    serde_json::from_value(json.clone())
        .with_context(|| format!("the settings {service} loaded do not read back: {json}"))
}

/// The host part of `host:port`, and the port.
fn host_port(addr: &str) -> anyhow::Result<(&str, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr} has no port"))?;
    Ok((host, port.parse()?))
}

/// Seconds of an nginx directive with a value like `90s` (the first one).
fn nginx_seconds(conf: &str, directive: &str) -> anyhow::Result<u64> {
    let value = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(directive).and_then(|r| r.strip_prefix(' ')))
        .with_context(|| format!("deploy/nginx.conf has no {directive}"))?;
    let value = value.trim().trim_end_matches(';').trim();
    Ok(value
        .strip_suffix('s')
        .with_context(|| format!("{directive} {value}: expected seconds"))?
        .parse()?)
}

/// What the static checks learn, for the native run.
struct Checked {
    services: BTreeMap<String, Service>,
    topics: Vec<String>,
    partitions: i32,
}

/// The compose file's services, topics and settings, checked without running
/// anything.
fn check_compose() -> anyhow::Result<Checked> {
    let services = compose()?;
    let dockerfile = read("Dockerfile")?;
    let nginx = read("deploy/nginx.conf")?;

    // Infrastructure: the names the settings must point at.
    for name in ["kafka", "kafka-init", "redis", "lb"] {
        ensure!(services.contains_key(name), "no service {name}");
    }
    // The broker the tests run is the broker the stack runs.
    let pinned = format!("apache/kafka:{}", replyway_tests::kafka_version());
    for name in ["kafka", "kafka-init"] {
        let image = services[name].get("image").map(scalar).transpose()?;
        ensure!(
            image.as_deref() == Some(pinned.as_str()),
            "{name}: image {image:?}, but the tests run {pinned} (scripts/kafka/pom.xml): move both together"
        );
    }
    let kafka_env = services["kafka"].environment()?;
    let advertised = kafka_env
        .get("KAFKA_ADVERTISED_LISTENERS")
        .context("kafka: KAFKA_ADVERTISED_LISTENERS")?;
    let brokers: Vec<&str> = advertised
        .split(',')
        .filter_map(|l| l.split_once("://").map(|(_, a)| a))
        .collect();
    ensure!(!brokers.is_empty(), "kafka advertises no listener");
    for broker in &brokers {
        let (host, _) = host_port(broker)?;
        ensure!(
            services.contains_key(host),
            "kafka advertises {broker}, which is not a compose service name"
        );
    }
    ensure!(
        services["kafka"].healthcheck()?.is_some(),
        "kafka has no healthcheck"
    );
    ensure!(
        services["redis"].healthcheck()?.is_some(),
        "redis has no healthcheck"
    );

    // kafka-init creates the topics, once the broker is healthy.
    let init = &services["kafka-init"];
    ensure!(
        init.depends_on()?.get("kafka").map(String::as_str) == Some("service_healthy"),
        "kafka-init must wait for a healthy kafka"
    );
    let init_env = init.environment()?;
    let topics: Vec<String> = init_env
        .get("TOPICS")
        .context("kafka-init: TOPICS")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let partitions: i32 = init_env
        .get("PARTITIONS")
        .context("kafka-init: PARTITIONS")?
        .parse()?;
    let script = init.command()?.join(" ");
    for part in [
        "kafka-topics.sh",
        "--create",
        "--if-not-exists",
        "$$TOPICS",
        "$$PARTITIONS",
    ] {
        ensure!(
            script.contains(part),
            "kafka-init's command lacks {part}: {script}"
        );
    }
    ensure!(partitions >= 1, "PARTITIONS {partitions}");

    // Scaling: no fixed container names, and only the lb publishes ports.
    for (name, service) in &services {
        ensure!(
            service.get("container_name").is_none(),
            "{name} has a container_name: it could not be scaled"
        );
        let publishes = matches!(service.get("ports"), Some(Yaml::Sequence(p)) if !p.is_empty());
        ensure!(
            !publishes || name == "lb",
            "{name} publishes a host port: only the lb does"
        );
    }
    let lb = &services["lb"];
    let lb_ports = lb
        .get("ports")
        .map(|p| format!("{p:?}"))
        .unwrap_or_default();
    ensure!(
        lb_ports.contains("8080"),
        "the lb must publish 8080: {lb_ports}"
    );
    ensure!(
        lb.depends_on()?.contains_key("gateway"),
        "the lb must start after the gateways"
    );
    ensure!(
        lb.volumes()?
            .iter()
            .any(|(s, t)| s == "./deploy/nginx.conf" && t == "/etc/nginx/nginx.conf"),
        "the lb must mount deploy/nginx.conf"
    );
    ensure!(
        nginx.contains("resolver 127.0.0.11") && nginx.contains("valid="),
        "nginx must re-resolve the gateways through Docker's DNS"
    );
    ensure!(
        dockerfile.contains(&format!("COPY {REPO_CONFIG_DIR}/ {IMAGE_CONFIG_DIR}/")),
        "the Dockerfile must copy {REPO_CONFIG_DIR}/ to {IMAGE_CONFIG_DIR}/"
    );

    let mut gateway: Option<replyway_gateway::Settings> = None;
    let mut collector: Option<replyway_collector::Settings> = None;
    for (name, binary) in SERVICES {
        let service = services
            .get(name)
            .with_context(|| format!("no service {name}"))?;
        let context = format!("service {name}");

        // The command: the binary, with a settings file of the image that is
        // in the repository (mounted there by compose, copied by the Dockerfile).
        let (bin, args) = native_command(service).context(context.clone())?;
        ensure!(bin == binary, "{context}: runs {bin}, not {binary}");
        ensure!(
            dockerfile.contains(binary),
            "{context}: the Dockerfile does not build {binary}"
        );
        let config = config_arg(&args).with_context(|| format!("{context}: no --config"))?;
        ensure!(
            service.volumes()?.iter().all(|(s, t)| t != IMAGE_CONFIG_DIR
                || s.trim_start_matches("./").trim_end_matches('/') == REPO_CONFIG_DIR),
            "{context}: {IMAGE_CONFIG_DIR} must be {REPO_CONFIG_DIR}"
        );

        // Startup order.
        let deps = service.depends_on()?;
        ensure!(
            deps.get("kafka-init").map(String::as_str) == Some("service_completed_successfully"),
            "{context}: must start after kafka-init completed successfully"
        );

        // The settings, by the binary's own loader, from its file and environment.
        let env = service.environment()?;
        for (k, v) in &env {
            ensure!(
                !v.contains('$'),
                "{context}: {k}={v}: this test does not interpolate"
            );
        }
        ensure!(
            !env.keys()
                .any(|k| k.eq_ignore_ascii_case("REPLYWAY_NODE_ID")),
            "{context}: a fixed node id would be shared by every replica"
        );
        let json = load_in_child(name, Some(&config), &env)?
            .map_err(|e| anyhow::anyhow!("{context}: its settings do not load: {e}"))?;
        let kafka: replyway_shared::settings::KafkaSettings = typed(name, &json["kafka"])?;
        ensure!(
            brokers.contains(&kafka.brokers.as_str()),
            "{context}: kafka.brokers = {} is not kafka's advertised listener {advertised}",
            kafka.brokers
        );
        // The product's client defaults, as every test runs them.
        ensure!(
            kafka
                .producer
                .get("enable.idempotence")
                .is_none_or(|v| v == "true"),
            "{context}: idempotence must stay on against Apache Kafka"
        );
        ensure!(
            !kafka.consumer.contains_key("fetch.wait.max.ms"),
            "{context}: fetch.wait.max.ms overrides the product default"
        );
        if let Some(redis) = json.get("redis") {
            let redis: replyway_shared::settings::RedisSettings = typed(name, redis)?;
            redis.validate().context(context.clone())?;
            let (host, _) = host_port(
                redis
                    .url
                    .expose()
                    .strip_prefix("redis://")
                    .with_context(|| format!("{context}: redis.url {}", redis.redacted_url()))?,
            )?;
            ensure!(
                host == "redis",
                "{context}: redis.url {} is not the redis service",
                redis.redacted_url()
            );
            ensure!(
                deps.get("redis").map(String::as_str) == Some("service_healthy"),
                "{context}: must start after redis is healthy"
            );
        }
        if let Some(json_log) = env.get("REPLYWAY_LOG__JSON") {
            ensure!(
                json["log"]["json"] == Json::Bool(json_log == "true"),
                "{context}: REPLYWAY_LOG__JSON={json_log} not applied"
            );
        }

        // The admin port, where the binary has one.
        if matches!(name, "gateway" | "collector") {
            match (json.get("admin_listen"), env.get("REPLYWAY_ADMIN_LISTEN")) {
                (Some(Json::String(loaded)), Some(wanted)) => {
                    ensure!(
                        loaded == wanted,
                        "{context}: admin_listen {loaded}, not {wanted}"
                    );
                    let (_, port) = host_port(wanted)?;
                    let check = service
                        .healthcheck()?
                        .with_context(|| format!("{context}: no healthcheck"))?;
                    ensure!(
                        check.contains(&format!("http://127.0.0.1:{port}/readyz")),
                        "{context}: the healthcheck must ask the admin port's /readyz: {check}"
                    );
                }
                (None, _) => bail!("{context}: the settings have no admin_listen"),
                (Some(loaded), None) => bail!(
                    "{context}: set REPLYWAY_ADMIN_LISTEN (admin_listen would stay {loaded}, \
                     out of reach of other containers)"
                ),
                (Some(loaded), Some(wanted)) => {
                    bail!("{context}: admin_listen {loaded}, not {wanted}")
                }
            }
        }

        let missing = |t: &String| !topics.contains(t);
        match name {
            "gateway" => {
                let settings: replyway_gateway::Settings = typed(name, &json)?;
                let routes = settings.route_table().context(context.clone())?;
                ensure!(settings.node_id.is_none(), "{context}: node_id is fixed");
                ensure!(
                    !missing(&settings.reply_topic),
                    "{context}: reply_topic {} is not created by kafka-init",
                    settings.reply_topic
                );
                for route in routes.routes() {
                    ensure!(
                        !missing(&route.topic),
                        "{context}: route {} goes to {}, which kafka-init does not create",
                        route.name,
                        route.topic
                    );
                }
                let (_, port) = host_port(&settings.listen)?;
                ensure!(
                    nginx.contains(&format!("server gateway:{port}")),
                    "nginx must proxy to the gateway's port {port}"
                );
                // The lb waits longer than any wait at the gateway.
                let longest = settings
                    .routes
                    .iter()
                    .map(|r| r.timeout)
                    .chain([settings.max_poll_wait])
                    .max()
                    .unwrap_or_default();
                for directive in ["proxy_read_timeout", "proxy_send_timeout"] {
                    let lb = Duration::from_secs(nginx_seconds(&nginx, directive)?);
                    ensure!(
                        lb > longest,
                        "nginx {directive} {lb:?} must exceed the longest wait {longest:?}"
                    );
                }
                ensure!(
                    settings.client_id_header.as_deref() == Some("x-client-id"),
                    "{context}: client_id_header"
                );
                gateway = Some(settings);
            }
            "collector" => {
                let settings: replyway_collector::Settings = typed(name, &json)?;
                settings.validate().context(context.clone())?;
                for topic in &settings.topics {
                    ensure!(!missing(topic), "{context}: {topic} is not created");
                }
                collector = Some(settings);
            }
            "echo" => {
                let settings: replyway_echo::Settings = typed(name, &json)?;
                for topic in &settings.topics {
                    ensure!(!missing(topic), "{context}: {topic} is not created");
                }
            }
            "ledger" => {
                let settings: replyway_ledger::Settings = typed(name, &json)?;
                settings.validate().context(context.clone())?;
                for topic in settings.topics.iter().chain([&settings.events_topic]) {
                    ensure!(!missing(topic), "{context}: {topic} is not created");
                }
            }
            _ => unreachable!(),
        }
    }
    let (gateway, collector) = (
        gateway.context("no gateway")?,
        collector.context("no collector")?,
    );
    ensure!(
        collector.topics.contains(&gateway.reply_topic),
        "the collector does not consume the gateway's reply topic {}",
        gateway.reply_topic
    );
    ensure!(
        collector.redis.prefix == gateway.redis.prefix,
        "gateway and collector must share the Redis key prefix"
    );

    // The child reports the loader's errors as well (here a malformed
    // variable), so the successes above are the loader's own.
    let bad = load_in_child(
        "gateway",
        None,
        &BTreeMap::from([("REPLYWAY_MAX_WAITING".to_owned(), "lots".to_owned())]),
    )?;
    ensure!(bad.is_err(), "a malformed variable must not load: {bad:?}");

    Ok(Checked {
        services,
        topics,
        partitions,
    })
}

#[test]
fn the_redis_cluster_profile_forms_a_cluster_the_gateways_and_collectors_use() -> TestResult {
    let services = compose()?;
    let in_profile = |s: &Service| {
        s.get("profiles")
            .and_then(Yaml::as_sequence)
            .is_some_and(|p| p.iter().any(|v| v.as_str() == Some("redis-cluster")))
    };
    let nodes: Vec<&Service> = services
        .values()
        .filter(|s| in_profile(s) && s.name.starts_with("redis-node-"))
        .collect();
    ensure!(nodes.len() == 6, "six nodes: 3 masters, 3 replicas");
    for node in &nodes {
        let command = node.command()?;
        ensure!(
            command
                .windows(2)
                .any(|w| w == ["--cluster-enabled", "yes"]),
            "{}: not cluster-enabled: {command:?}",
            node.name
        );
        ensure!(
            node.healthcheck()?.is_some(),
            "{}: no healthcheck",
            node.name
        );
    }
    let init = services
        .get("redis-cluster-init")
        .context("no redis-cluster-init")?;
    ensure!(in_profile(init), "redis-cluster-init outside the profile");
    let script = init.command()?.join(" ");
    ensure!(
        script.contains("--cluster create")
            && script.contains("--cluster-replicas 1")
            && script.contains("for n in 1 2 3 4 5 6"),
        "redis-cluster-init does not create the cluster of the six nodes: {script}"
    );
    for node in &nodes {
        ensure!(
            init.depends_on()?.get(&node.name).map(String::as_str) == Some("service_healthy"),
            "redis-cluster-init must wait for a healthy {}",
            node.name
        );
    }
    // The documented switch: the gateways' and collectors' Redis settings.
    let shell = BTreeMap::from([
        ("REPLYWAY_REDIS_MODE", "cluster"),
        ("REPLYWAY_REDIS_URL", "redis://redis-node-1:6379"),
    ]);
    for name in ["gateway", "collector"] {
        let env = services[name].environment_with(&shell)?;
        ensure!(env.get("REPLYWAY_REDIS__MODE").map(String::as_str) == Some("cluster"));
        let url = env.get("REPLYWAY_REDIS__URL").context("no redis url")?;
        let mut settings = replyway_shared::settings::RedisSettings {
            url: url.as_str().into(),
            mode: replyway_shared::settings::RedisMode::Cluster,
            ..Default::default()
        };
        settings.validate()?;
        let host = url
            .trim_start_matches("redis://")
            .split(':')
            .next()
            .unwrap_or_default();
        ensure!(
            services.contains_key(host),
            "{name}: {url} names no service"
        );
        settings.min_replicas = 1;
        settings.validate()?;
    }
    let header = read("docker-compose.yml")?;
    ensure!(
        header.contains("REPLYWAY_REDIS_MODE=cluster REPLYWAY_REDIS_URL=redis://redis-node-1:6379"),
        "the file's header shows how to run on the cluster"
    );
    Ok(())
}

#[test]
fn compose_services_load_and_validate_their_settings() -> TestResult {
    let checked = check_compose()?;
    eprintln!(
        "checked {} services; kafka-init creates {:?} with {} partitions",
        checked.services.len(),
        checked.topics,
        checked.partitions,
    );
    Ok(())
}

/// A binary of the workspace running as a process, killed when dropped.
struct Running {
    name: String,
    child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The address it reported as `field=`.
    async fn reported_addr(&mut self, field: &str) -> anyhow::Result<std::net::SocketAddr> {
        replyway_tests::reported_addr(self.log.path(), &mut self.child, field, START).await
    }

    /// SIGTERM, then the exit status within `within`.
    async fn terminate(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {}", self.name);
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not exit within {within:?} of SIGTERM", self.name)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a compose service's command natively: the binary built next to this
/// test, its settings file from the repository, its environment, and `extra`
/// on top (the test's broker and Redis, local addresses).
fn start_service(service: &Service, extra: &BTreeMap<String, String>) -> anyhow::Result<Running> {
    let (binary, args) = native_command(service)?;
    let log = tempfile::NamedTempFile::new()?;
    let child = clean_command(bin_path(&binary))
        .args(&args)
        .envs(service.environment()?)
        .envs(extra)
        .env(
            "RUST_LOG",
            std::env::var("REPLYWAY_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.reopen()?)
        .stderr(log.reopen()?)
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    Ok(Running {
        name: service.name.clone(),
        child,
        log,
    })
}

async fn get_ok(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_commands_serve_requests_end_to_end() -> TestResult {
    init_logs();
    let checked = check_compose()?;
    let broker = Broker::shared();
    let redis = RedisServer::start()?;
    let topics: Vec<&str> = checked.topics.iter().map(String::as_str).collect();
    broker.create_topics(&topics, checked.partitions).await?;

    // The compose environment, with the test's broker and Redis for the
    // compose services, and local ports for the ones the gateway listens on.
    let common = BTreeMap::from([
        ("REPLYWAY_KAFKA__BROKERS".to_owned(), broker.bootstrap()),
        ("REPLYWAY_REDIS__URL".to_owned(), redis.url()),
    ]);

    // Port 0: each binary binds its ports and reports them.
    let any = "127.0.0.1:0";
    let with = |pairs: &[(&str, &str)]| {
        let mut env = common.clone();
        for (k, v) in pairs {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    };
    let services = &checked.services;
    let mut running = vec![
        start_service(
            &services["collector"],
            &with(&[("REPLYWAY_ADMIN_LISTEN", any)]),
        )?,
        start_service(&services["echo"], &common)?,
        start_service(&services["ledger"], &common)?,
        start_service(
            &services["gateway"],
            &with(&[("REPLYWAY_LISTEN", any), ("REPLYWAY_ADMIN_LISTEN", any)]),
        )?,
    ];
    let collector_admin = running[0].reported_addr("admin").await?;
    let api = running[3].reported_addr("listen").await?;
    let gateway_admin = running[3].reported_addr("admin").await?;
    let logs = |running: &[Running]| {
        running
            .iter()
            .map(|r| format!("--- {}:\n{}", r.name, r.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = |path: &str| format!("http://{api}{path}");

    let ready = format!("http://{gateway_admin}/readyz");
    if !eventually(Duration::from_secs(60), || get_ok(&http, &ready)).await {
        bail!("the gateway did not become ready\n{}", logs(&running));
    }
    for admin in [&gateway_admin, &collector_admin] {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let target = format!("http://{admin}{path}");
            ensure!(
                eventually(Duration::from_secs(30), || get_ok(&http, &target)).await,
                "GET {target} did not answer 2xx\n{}",
                logs(&running)
            );
        }
    }

    // The consumer groups join: the first echo round trip may take a while.
    let warmed = eventually(Duration::from_secs(60), || {
        let (http, target) = (http.clone(), url("/echo"));
        async move {
            let r = http
                .post(target)
                .header("prefer", "wait=2")
                .body("warm-up")
                .send()
                .await;
            r.is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    ensure!(
        warmed,
        "no echo reply through the compose routes\n{}",
        logs(&running)
    );

    // POST /echo: the reply is the body, with the service's header.
    let r = http
        .post(url("/echo"))
        .header("content-type", "application/json")
        .body(r#"{"hello":"compose"}"#)
        .send()
        .await?;
    ensure!(r.status() == 200, "POST /echo: {}", r.status());
    ensure!(
        r.headers().contains_key("correlation-id"),
        "no correlation-id"
    );
    ensure!(
        r.headers().get("x-echo-path").and_then(|v| v.to_str().ok()) == Some("/echo"),
        "x-echo-path: {:?}",
        r.headers().get("x-echo-path")
    );
    ensure!(
        r.text().await? == r#"{"hello":"compose"}"#,
        "POST /echo body"
    );

    // POST /echo/{key} with a status asked of the service.
    let r = http
        .post(url("/echo/k-1"))
        .body(r#"{"status":409}"#)
        .send()
        .await?;
    ensure!(r.status() == 409, "POST /echo/k-1: {}", r.status());

    // Asynchronous, then fetched by id.
    let r = http
        .post(url("/echo"))
        .header("prefer", "respond-async")
        .body("later")
        .send()
        .await?;
    ensure!(r.status() == 202, "async: {}", r.status());
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("no location")?
        .to_owned();
    let r = http
        .get(url(&location))
        .header("prefer", "wait=10")
        .send()
        .await?;
    ensure!(r.status() == 200, "GET {location}: {}", r.status());
    ensure!(r.text().await? == "later", "GET {location} body");

    // The ledger routes: a balance, a transfer, the new balance.
    let r = http
        .get(url("/ledger/accounts/alice"))
        .header("prefer", "wait=5")
        .send()
        .await?;
    ensure!(
        r.status() == 200,
        "GET /ledger/accounts/alice: {}",
        r.status()
    );
    let balance: Json = r.json().await?;
    ensure!(balance["balance"] == 10_000, "alice: {balance}");
    let r = http
        .post(url("/ledger/transfers"))
        .header("content-type", "application/json")
        .header("x-client-id", "compose-test")
        .body(r#"{"from":"alice","to":"bob","amount":250}"#)
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    ensure!(
        status.is_success(),
        "POST /ledger/transfers: {status} {body}"
    );
    let r = http.get(url("/ledger/accounts/bob")).send().await?;
    let balance: Json = r.json().await?;
    ensure!(balance["balance"] == 750, "bob: {balance}");

    // Stopped as compose stops them (SIGTERM): the gateway first, each exits 0.
    running.rotate_right(1);
    for service in &mut running {
        let status = service.terminate(Duration::from_secs(30)).await?;
        ensure!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            service.name,
            service.log()
        );
    }
    Ok(())
}
