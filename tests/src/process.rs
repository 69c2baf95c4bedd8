//! Replyway binaries run as OS processes, so a test can signal or kill them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

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
    pub(crate) child: Child,
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
