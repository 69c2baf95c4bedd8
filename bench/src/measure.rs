//! What the benchmark reads: latency percentiles, a process's CPU time and RSS
//! from `/proc`, and Redis's command counters.

use std::time::Duration;

use anyhow::Context;

/// Sorted round-trip latencies of one run.
#[derive(Debug, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts `all`.
    pub fn new(mut all: Vec<Duration>) -> Self {
        all.sort_unstable();
        Self(all)
    }

    /// The `q`-th percentile (nearest rank).
    pub fn p(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// The slowest.
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcStats {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
        let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
            + fields.get(12).context("no stime")?.parse::<u64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .with_context(|| format!("no {key}"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("no value")?
                .parse()?)
        };
        Ok(Self {
            cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
            rss_kib: kib("VmRSS:")?,
            peak_rss_kib: kib("VmHWM:")?,
        })
    }
}

/// Commands Redis has executed (`INFO commandstats`): all of them, and the
/// ones clients sent for requests (a script counts once; the commands it runs
/// are not counted again). Pipelined calls share a round trip, so the latter
/// bounds a request's round trips from above.
///
/// `PING` is not a request's call: each gateway node's subscription sends one
/// every 2 s to check its connection, so a run of a few seconds would count
/// some per request that no request sent. It is in the first count only.
pub async fn redis_calls(redis: &replyway_tests::RedisServer) -> anyhow::Result<(u64, u64)> {
    // Commands Replyway sends itself for requests; everything else runs inside
    // its scripts.
    const TOP_LEVEL: &[&str] = &["evalsha", "eval", "get", "mget", "exec", "info", "hget"];
    let mut conn = redis.connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let (mut all, mut top) = (0, 0);
    for line in info.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
        let (name, stats) = line.split_once(':').context("malformed commandstats")?;
        let calls: u64 = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .context("no calls= in commandstats")?
            .parse()?;
        all += calls;
        if TOP_LEVEL.contains(&name) {
            top += calls;
        }
    }
    Ok((all, top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(l.p(50.0), Duration::from_millis(50));
        assert_eq!(l.p(99.0), Duration::from_millis(99));
        assert_eq!(l.p(100.0), Duration::from_millis(100));
        assert_eq!(l.max(), Duration::from_millis(100));
        assert_eq!(Latencies::new(vec![]).p(50.0), Duration::ZERO);
    }

    #[test]
    fn reads_this_process() {
        let s = ProcStats::of(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib);
    }
}
