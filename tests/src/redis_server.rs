//! A `redis-server` of a test's own, on a free port, that the test can stop and
//! restart.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::{free_port, wait_for_port};

/// A `redis-server` of the test's own.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    /// TLS only (a self-signed certificate) with this password.
    secure: Option<String>,
    /// A replica of the server on this port.
    replica_of: Option<u16>,
    /// More arguments for `redis-server`.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts one on a free port with more `redis-server` arguments.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            secure: None,
            replica_of: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts a replica of `master` on a free port (its data arrives by
    /// Redis's replication; see [`RedisServer::replicas_online`]).
    pub fn start_replica_of(master: &Self) -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            secure: None,
            replica_of: Some(master.port),
            args: Vec::new(),
        };
        server.restart()?;
        Ok(server)
    }

    /// How many replicas are connected to this server and in sync (`INFO
    /// replication`: `state=online`).
    pub async fn replicas_online(&self) -> anyhow::Result<usize> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        Ok(info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count())
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
            replica_of: None,
            args: Vec::new(),
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
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
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

    /// CPU time (user + system) it has used so far, in clock ticks
    /// (`/proc/<pid>/stat`), while it runs.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // After the command name (which may hold spaces): utime and stime are
        // the 14th and 15th fields of the line.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
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
