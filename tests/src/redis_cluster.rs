//! A Redis Cluster of a test's own: `redis-server` nodes on free ports with
//! `cluster-enabled yes` and a small `cluster-node-timeout`, so that a killed
//! master's replica takes over within seconds.
//!
//! The cluster is formed with the steps `redis-cli --cluster create` takes
//! (`CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET`, `CLUSTER REPLICATE`), sent
//! directly: `redis-cli` needs three masters at least (the benchmark also runs
//! one), and waits for the nodes to agree with fixed one-second sleeps; here
//! each step waits for the state it needs (every node knows every node,
//! every replica is in sync and known as such by every node, `cluster_state:ok`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;

use crate::{RedisServer, eventually};

mod slots;
pub use slots::slot_of;

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// How long a node may be silent before the others take it as failed.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

/// A Redis Cluster of the test's own.
pub struct RedisCluster {
    /// Its nodes: masters first, then replicas.
    nodes: Vec<RedisServer>,
    /// Each node's cluster bus port, in the order of `nodes`.
    buses: Vec<u16>,
    /// Masters it was formed with.
    pub masters: usize,
}

/// One node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// Its port.
    pub port: u16,
    /// Whether it is a master now.
    pub master: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Whether the cluster takes it as failed (`fail` or `fail?`).
    pub failed: bool,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each, splits the slots
    /// evenly between the masters, and waits until the cluster is formed.
    pub async fn start(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 1, "a cluster needs a master");
        let timeout = NODE_TIMEOUT_MS.to_string();
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
        ];
        let mut nodes = Vec::new();
        let mut buses = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            // The bus port is named too: Redis's default (port + 10 000)
            // would fall inside the kernel's ephemeral range (see `free_port`).
            let bus = crate::free_port();
            let bus_arg = bus.to_string();
            let mut node_args = args.to_vec();
            node_args.extend(["--cluster-port", &bus_arg]);
            nodes.push(RedisServer::start_with(&node_args)?);
            buses.push(bus);
        }
        let cluster = Self {
            nodes,
            buses,
            masters,
        };
        cluster.form(replicas).await?;
        Ok(cluster)
    }

    async fn form(&self, replicas: usize) -> anyhow::Result<()> {
        let ports = self.ports();
        let per_master = SLOTS / u16::try_from(self.masters)?;
        for (i, port) in ports.iter().take(self.masters).enumerate() {
            let first = per_master * u16::try_from(i)?;
            let last = if i + 1 == self.masters {
                SLOTS - 1
            } else {
                first + per_master - 1
            };
            let mut conn = connect(*port).await?;
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async::<()>(&mut conn)
                .await
                .context("CLUSTER ADDSLOTSRANGE")?;
        }
        let mut first = connect(ports[0]).await?;
        for (port, bus) in ports.iter().zip(&self.buses).skip(1) {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(*port)
                .arg(*bus)
                .query_async::<()>(&mut first)
                .await
                .context("CLUSTER MEET")?;
        }
        let all_known = eventually(Duration::from_secs(30), || async {
            let mut known = true;
            for port in &ports {
                known &= self
                    .nodes_seen_by(*port)
                    .await
                    .is_ok_and(|n| n.len() == ports.len());
            }
            known
        })
        .await;
        anyhow::ensure!(all_known, "the cluster's nodes did not meet");
        let masters = self.nodes_seen_by(ports[0]).await?;
        for (r, port) in ports.iter().enumerate().skip(self.masters) {
            let master_port = ports[(r - self.masters) / replicas.max(1)];
            let master = masters
                .iter()
                .find(|n| n.port == master_port)
                .context("a master left the cluster")?;
            let mut conn = connect(*port).await?;
            redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&master.id)
                .query_async::<()>(&mut conn)
                .await
                .context("CLUSTER REPLICATE")?;
        }
        let formed = eventually(Duration::from_secs(60), || self.is_formed()).await;
        anyhow::ensure!(formed, "the Redis Cluster did not form");
        Ok(())
    }

    /// Whether every live node reports `cluster_state:ok`, agrees on which
    /// nodes are masters and replicas (as many as it was formed with, and
    /// none failed), and every replica is in sync with its master.
    pub async fn is_formed(&self) -> bool {
        let ports = self.ports();
        let replicas = ports.len() - self.masters;
        for port in &ports {
            let Ok(nodes) = self.nodes_seen_by(*port).await else {
                return false;
            };
            let masters = nodes.iter().filter(|n| n.master && !n.failed).count();
            let slaves = nodes.iter().filter(|n| !n.master && !n.failed).count();
            if masters != self.masters || slaves != replicas {
                return false;
            }
            let Ok(info) = cluster_command(*port, "INFO").await else {
                return false;
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Ok(replication) = info_section(*port, "replication").await else {
                return false;
            };
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return false;
            }
        }
        true
    }

    /// Ports of the nodes that run.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis.url` for the cluster: every live node as a seed, comma-separated.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster's nodes as the node on `port` sees them.
    pub async fn nodes_seen_by(&self, port: u16) -> anyhow::Result<Vec<ClusterNode>> {
        let text = cluster_command(port, "NODES").await?;
        text.lines().map(parse_node).collect()
    }

    /// The cluster's nodes as a live node sees them.
    pub async fn nodes(&self) -> anyhow::Result<Vec<ClusterNode>> {
        for port in self.ports() {
            if let Ok(nodes) = self.nodes_seen_by(port).await {
                return Ok(nodes);
            }
        }
        bail!("no node of the cluster answers")
    }

    /// The master serving `slot`, as a live node sees it.
    pub async fn master_of(&self, slot: u16) -> anyhow::Result<ClusterNode> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .context("no master serves the slot")
    }

    /// Kills (SIGKILL) the node on `port`: its data is gone (its
    /// `nodes.conf` stays, so a [`RedisCluster::restart`] rejoins).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.stop();
        }
    }

    /// Starts the killed node on `port` again: it rejoins with the identity
    /// its `nodes.conf` keeps, as a replica when another took its slots.
    pub fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such node")?
            .restart()
    }

    /// Waits until a master other than `dead` serves every slot and every
    /// live node reports `cluster_state:ok` (the dead master's replica was
    /// promoted).
    pub async fn until_failed_over(&self, dead: u16, within: Duration) -> bool {
        eventually(within, || async {
            let mut ok = true;
            for port in self.ports() {
                ok &= cluster_command(port, "INFO")
                    .await
                    .is_ok_and(|i| i.contains("cluster_state:ok"));
                ok &= self.nodes_seen_by(port).await.is_ok_and(|nodes| {
                    let served: u32 = nodes
                        .iter()
                        .filter(|n| n.master && !n.failed && n.port != dead)
                        .flat_map(|n| &n.slots)
                        .map(|(a, b)| u32::from(b - a) + 1)
                        .sum();
                    served == u32::from(SLOTS)
                });
            }
            ok
        })
        .await
    }

    /// CPU time (user + system) each live `redis-server` has used so far, by
    /// port, in clock ticks (`/proc/<pid>/stat`).
    pub fn cpu_ticks(&self) -> BTreeMap<u16, u64> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.port, n.cpu_ticks()?)))
            .collect()
    }

    /// `INFO <section>` of the node on `port`.
    pub async fn info(&self, port: u16, section: &str) -> anyhow::Result<String> {
        info_section(port, section).await
    }
}

/// A connection to the node on `port`.
pub async fn connect(port: u16) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    Ok(tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting timed out")??)
}

/// `CLUSTER <sub>` on the node on `port` (`INFO`, `NODES`).
async fn cluster_command(port: u16, sub: &str) -> anyhow::Result<String> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg(sub);
    text(port, cmd).await
}

/// `INFO <section>` of the node on `port`.
async fn info_section(port: u16, section: &str) -> anyhow::Result<String> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg(section);
    text(port, cmd).await
}

/// The text `cmd` answers on the node on `port`, within 2 s.
async fn text(port: u16, cmd: redis::Cmd) -> anyhow::Result<String> {
    let mut conn = connect(port).await?;
    Ok(
        tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
            .await
            .context("no answer")??,
    )
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master>
/// <ping> <pong> <epoch> <link> <slot>…`.
fn parse_node(line: &str) -> anyhow::Result<ClusterNode> {
    let fields: Vec<&str> = line.split(' ').collect();
    anyhow::ensure!(fields.len() >= 8, "not a CLUSTER NODES line: {line}");
    let port = fields[1]
        .split(['@', ','])
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context("a node's address")?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Ok(ClusterNode {
        id: fields[0].to_owned(),
        port,
        master: flags.contains(&"master"),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_nodes_line_is_read() {
        let node = parse_node(
            "07c3 127.0.0.1:30004@40004,host myself,master - 0 0 1 connected 0-5460 7000 [93-<-abc]",
        )
        .unwrap();
        assert_eq!(node.port, 30004);
        assert!(node.master && !node.failed);
        assert_eq!(node.slots, vec![(0, 5460), (7000, 7000)]);
        let replica =
            parse_node("e7d1 127.0.0.1:30005@40005 slave,fail? 07c3 0 0 1 connected").unwrap();
        assert!(!replica.master && replica.failed);
        assert_eq!(replica.master_id.as_deref(), Some("07c3"));
    }
}
