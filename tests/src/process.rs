//! Replyway binaries (and other programs, such as a JVM running a Spring
//! application) run as OS processes, so a test can signal or kill them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// A Replyway binary (or another program) running as an OS process, so a
/// test can signal or kill it; killed when dropped.
pub struct Proc {
    pub(crate) child: Child,
    log: tempfile::NamedTempFile,
    _config: Option<tempfile::NamedTempFile>,
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
            _config: Some(config),
            addr,
        })
    }

    /// Starts `command`, a program of its own (not one of this workspace's
    /// binaries), with its standard output and error both in its log.
    pub fn spawn_program(mut command: Command) -> anyhow::Result<Self> {
        let log = tempfile::NamedTempFile::new()?;
        // One open file for both streams: their lines interleave, neither
        // overwrites the other.
        let out = log.reopen()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Self {
            child,
            log,
            _config: None,
            addr: None,
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

    /// The address it reported in its log as `field=` (see [`reported_addr`]).
    ///
    /// # Errors
    /// When it exits or does not report the address in time.
    pub async fn reported_addr(
        &mut self,
        field: &str,
        within: Duration,
    ) -> anyhow::Result<SocketAddr> {
        reported_addr(self.log.path(), &mut self.child, field, within).await
    }

    /// Waits until a line of its log contains `text` (a program's "started"
    /// line), at most `within`.
    ///
    /// # Errors
    /// When it exits or does not log the line in time.
    pub async fn logged(&mut self, text: &str, within: Duration) -> anyhow::Result<()> {
        until_logged(self.log.path(), &mut self.child, text, within, |log| {
            log.lines().any(|line| line.contains(text)).then_some(())
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address `child` reported in its log file as `field=` (a gateway's
/// `listen`, the admin port's `admin`), waiting up to `within` for the line.
/// A binary given port 0 binds a free port itself and reports it: no port is
/// guessed beforehand that another process could take in between.
///
/// # Errors
/// When the child exits or does not report the address in time.
pub async fn reported_addr(
    log_file: &Path,
    child: &mut Child,
    field: &str,
    within: Duration,
) -> anyhow::Result<SocketAddr> {
    let value = until_logged(log_file, child, field, within, |log| {
        logged_field(log, field)
    })
    .await?;
    value
        .parse()
        .with_context(|| format!("{field}={value} is not an address"))
}

/// What `find` finds in `child`'s log file, waiting up to `within` for it
/// (`what` names it in the error).
async fn until_logged<T>(
    log_file: &Path,
    child: &mut Child,
    what: &str,
    within: Duration,
    find: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(log_file).unwrap_or_default();
        if let Some(found) = find(&log) {
            return Ok(found);
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!("exited ({status}) before logging {what}:\n{log}");
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "did not log {what} within {within:?}:\n{log}"
        );
        // Polling the log file: the line is the event.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the first `field=value` in a text log (coloured or not), or
/// of `"field":"value"` in a JSON log.
fn logged_field(log: &str, field: &str) -> Option<String> {
    let text = format!(" {field}=");
    let json = format!("\"{field}\":\"");
    log.lines().find_map(|line| {
        if let Some(at) = line.find(&json) {
            return line[at + json.len()..].split('"').next().map(str::to_owned);
        }
        let line = strip_colours(line);
        let at = line.find(&text)?;
        line[at + text.len()..]
            .split_whitespace()
            .next()
            .map(str::to_owned)
    })
}

/// `line` without its ANSI escape sequences (tracing colours field names:
/// `ESC[3mlisten ESC[0m ESC[2m= ESC[0m`).
fn strip_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters… final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::logged_field;

    #[test]
    fn reads_an_address_from_text_coloured_and_json_lines() {
        let text = "2026-12-02T20:00:00Z  INFO replyway_gateway: gateway started listen=127.0.0.1:4100 admin=127.0.0.1:4101";
        assert_eq!(
            logged_field(text, "listen").as_deref(),
            Some("127.0.0.1:4100")
        );
        assert_eq!(
            logged_field(text, "admin").as_deref(),
            Some("127.0.0.1:4101")
        );
        let coloured = "\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m gateway started \x1b[3mlisten\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:4100";
        assert_eq!(
            logged_field(coloured, "listen").as_deref(),
            Some("127.0.0.1:4100")
        );
        let json = r#"{"level":"INFO","message":"gateway started","listen":"127.0.0.1:4100"}"#;
        assert_eq!(
            logged_field(json, "listen").as_deref(),
            Some("127.0.0.1:4100")
        );
        assert_eq!(logged_field("nothing here", "listen"), None);
    }
}
