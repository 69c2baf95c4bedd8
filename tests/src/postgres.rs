//! A PostgreSQL server of a test's own (Debian's `postgresql` 15 binaries),
//! on a free loopback port with its own data directory, `wal_level =
//! logical` for the outbox relay; stopped (and its data deleted) when dropped.
//!
//! `initdb` and `postgres` refuse to run as root: run as root (as CI does),
//! the data directory is given to the `postgres` system user and both run as
//! that user (`runuser -u postgres --`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{free_port, wait_for_port};

/// Where Debian installs PostgreSQL 15's server binaries.
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The unprivileged user a root test process runs the server as.
const SERVER_USER: &str = "postgres";

/// A PostgreSQL server of the test's own.
pub struct Postgres {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Whether commits are flushed to disk (`fsync`).
    durable: bool,
    /// Whether it serves TLS (with the certificates in `<dir>/tls`).
    tls: bool,
}

fn is_root() -> bool {
    // `id -u`: no libc call (unsafe code is forbidden in the workspace).
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program` of PostgreSQL, as the server user when this process is root.
fn server_command(program: &str) -> Command {
    let path = Path::new(BIN_DIR).join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", SERVER_USER, "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

impl Postgres {
    /// Initializes a data directory and starts the server on a free port.
    ///
    /// # Errors
    /// When the binaries are missing (`scripts/install-deps.sh` installs
    /// them), `initdb` fails, or the server does not listen within 30 s.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false, false)
    }

    /// As [`Postgres::start`], serving TLS as well (`ssl = on`) with a
    /// certificate for 127.0.0.1 signed by the CA of [`Postgres::ca_file`];
    /// plain connections are still accepted (the harness's own).
    ///
    /// # Errors
    /// As [`Postgres::start`], or when the certificates cannot be made.
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(false, true)
    }

    /// The CA that signed the server's certificate (a TLS server's only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.tls_dir().join("ca.pem"))
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// As [`Postgres::start`], but with `fsync` on, as a production server
    /// runs: for measurements.
    ///
    /// # Errors
    /// As [`Postgres::start`].
    pub fn start_durable() -> anyhow::Result<Self> {
        Self::start_with(true, false)
    }

    fn start_with(durable: bool, tls: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(BIN_DIR).join("initdb").is_file(),
            "{BIN_DIR}/initdb is missing: install Debian's postgresql package (scripts/install-deps.sh)"
        );
        let dir = tempfile::Builder::new().prefix("replyway-pg").tempdir()?;
        if is_root() {
            let status = Command::new("chown")
                .arg(format!("{SERVER_USER}:"))
                .arg(dir.path())
                .status()
                .context("chown of the data directory")?;
            anyhow::ensure!(
                status.success(),
                "chown {SERVER_USER} of the data directory failed"
            );
        }
        let output = server_command("initdb")
            .arg("-D")
            .arg(data_dir(dir.path()))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("running initdb")?;
        anyhow::ensure!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            durable,
            tls,
        };
        if tls {
            server.make_certificates()?;
        }
        server.restart()?;
        Ok(server)
    }

    /// The CA, the server's certificate and its key in `<dir>/tls`, readable
    /// by the server's user only, as PostgreSQL demands of the key.
    fn make_certificates(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.tls_dir();
        std::fs::create_dir(&dir)?;
        crate::tls::certificates(&dir)?;
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))?;
        if is_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{SERVER_USER}:"))
                .arg(&dir)
                .status()
                .context("chown of the certificates")?;
            anyhow::ensure!(status.success(), "chown of the certificates failed");
        }
        Ok(())
    }

    /// Starts the server (again) on the same port and data.
    ///
    /// # Errors
    /// When it does not listen within 30 s.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        let child = server_command("postgres")
            .arg("-D")
            .arg(data_dir(self.dir.path()))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "wal_level=logical", "-c", "max_replication_slots=8"])
            .args(["-c", "max_wal_senders=8", "-c", "max_connections=200"])
            .args(self.tls_args())
            // A test's server never outlives the machine: skip the disk
            // flushes (unless measuring).
            .arg("-c")
            .arg(if self.durable {
                "fsync=on"
            } else {
                "fsync=off"
            })
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30))
            .with_context(|| format!("postgres did not start:\n{}", self.log()))?;
        // The port opens before the server accepts sessions ("the database
        // system is starting up"): wait for `pg_isready` to say it does.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(Path::new(BIN_DIR).join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "postgres did not accept sessions within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tls_args(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let dir = self.tls_dir();
        vec![
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={}", dir.join("cert.pem").display()),
            "-c".into(),
            format!("ssl_key_file={}", dir.join("key.pem").display()),
        ]
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A client connection, driven in the background.
    ///
    /// # Errors
    /// When the server does not accept it.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .context("connecting to the test's postgres")?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Stops it: a fast shutdown (`pg_ctl stop -m fast`), then the process
    /// is reaped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let stopped = server_command("pg_ctl")
                .arg("-D")
                .arg(data_dir(self.dir.path()))
                .args(["stop", "-m", "fast", "-w", "-t", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
