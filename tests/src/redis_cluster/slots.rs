//! Moving a slot between masters, as a resharding does (`redis-cli --cluster
//! reshard` takes these steps): the target imports, the source migrates, the
//! slot's keys move by `MIGRATE`, and every master learns the new owner.

use std::time::Duration;

use anyhow::Context;

use super::{ClusterNode, RedisCluster, connect};
use crate::eventually;

/// The slot of `key`, as the node on `port` computes it (`CLUSTER KEYSLOT`).
pub async fn slot_of(port: u16, key: &str) -> anyhow::Result<u16> {
    let mut conn = connect(port).await?;
    Ok(redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await?)
}

impl RedisCluster {
    /// A live master other than `than`.
    pub async fn another_master(&self, than: &ClusterNode) -> anyhow::Result<ClusterNode> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| n.master && !n.failed && n.id != than.id)
            .context("the cluster has one master")
    }

    /// Moves `slot`, with its keys, to master `to`, and waits until every
    /// live node names `to` as its owner.
    pub async fn move_slot(&self, slot: u16, to: &ClusterNode) -> anyhow::Result<()> {
        let from = self.master_of(slot).await?;
        anyhow::ensure!(from.id != to.id, "the slot is on that master already");
        let mut target = connect(to.port).await?;
        let mut source = connect(from.port).await?;
        let setslot = |state: &str, node: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(node);
            cmd
        };
        setslot("IMPORTING", &from.id)
            .query_async::<()>(&mut target)
            .await
            .context("SETSLOT IMPORTING")?;
        setslot("MIGRATING", &to.id)
            .query_async::<()>(&mut source)
            .await
            .context("SETSLOT MIGRATING")?;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await?;
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to.port)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys)
                .query_async::<()>(&mut source)
                .await
                .context("MIGRATE")?;
        }
        setslot("NODE", &to.id)
            .query_async::<()>(&mut target)
            .await?;
        setslot("NODE", &to.id)
            .query_async::<()>(&mut source)
            .await?;
        for node in self.nodes().await? {
            if node.master && !node.failed && node.id != to.id && node.id != from.id {
                let mut conn = connect(node.port).await?;
                setslot("NODE", &to.id).query_async::<()>(&mut conn).await?;
            }
        }
        let moved = eventually(Duration::from_secs(20), || async {
            let mut everywhere = true;
            for port in self.ports() {
                everywhere &= self.nodes_seen_by(port).await.is_ok_and(|nodes| {
                    nodes.iter().any(|n| {
                        n.id == to.id && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
                    })
                });
            }
            everywhere
        })
        .await;
        anyhow::ensure!(moved, "not every node took the slot's new owner");
        Ok(())
    }
}
