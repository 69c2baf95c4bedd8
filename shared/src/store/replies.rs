//! Storing a batch of replies and notifying the nodes that wait for them:
//! one pipeline on one Redis, one script call per reply on a Redis Cluster.

use futures::future::try_join_all;

use super::{Connection, ReplyToStore, Store, StoreError, encode_notification, ttl_ms};

impl Store {
    /// Stores a batch of replies and notifies their waiting nodes. Returns,
    /// per reply, whether it was stored (`false`: a reply for that id was
    /// stored before).
    ///
    /// Store before notify, and the waiters set read atomically with the
    /// write ([`STORE_REPLY_LUA`], [`STORE_PART_LUA`]):
    /// * one Redis: the script publishes (`PUBLISH`) in the same atomic step;
    ///   the batch is one pipelined round trip;
    /// * a cluster: a node's channel lives in a slot of its own, which a
    ///   script on the reply's slot may not touch, so the script returns the
    ///   waiting nodes and each is notified by `SPUBLISH` after it, on the shard
    ///   that owns its channel only. The waiters set is kept until it expires,
    ///   so a reply stored again (its batch failed after the store, before the
    ///   notification, and is consumed again) notifies them again.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge; nothing may be assumed
    /// stored or notified (the batch is stored again).
    pub async fn store_replies(&self, replies: &[ReplyToStore]) -> Result<Vec<bool>, StoreError> {
        if replies.is_empty() {
            return Ok(Vec::new());
        }
        let channel_prefix = self.keys.channel_prefix();
        let (stored, conn) = self
            .bounded(async {
                let mut conn = self.connection();
                let outcomes = if self.is_cluster() {
                    let outcomes = try_join_all(
                        replies
                            .iter()
                            .map(|reply| self.store_one(reply, &channel_prefix)),
                    )
                    .await?;
                    self.notify_sharded(replies, &outcomes).await?;
                    outcomes
                } else {
                    self.store_pipelined(replies, &channel_prefix, &mut conn)
                        .await?
                };
                let stored = outcomes.into_iter().map(|o| o.stored).collect();
                Ok((stored, conn))
            })
            .await?;
        // A batch counts (its offsets are stored) once its replicas have it.
        self.replicated(conn, None).await?;
        Ok(stored)
    }

    /// The script call that stores `reply` (`publish`: in the script, as one
    /// Redis can; else the script returns the nodes to notify).
    fn store_call(&self, reply: &ReplyToStore, publish: bool, channel_prefix: &str) -> redis::Cmd {
        let ttl = ttl_ms(self.ttl);
        let publish_arg = if publish { "1" } else { "0" };
        let mut cmd = redis::cmd("EVALSHA");
        match reply.part {
            None => {
                cmd.arg(self.store_script.get_hash())
                    .arg(if publish { 4 } else { 2 })
                    .arg(self.keys.reply(&reply.id))
                    .arg(self.keys.waiters(&reply.id));
                if publish {
                    // Callbacks need the deliveries stream, a slot of its
                    // own: one Redis only (a cluster refuses callbacks).
                    cmd.arg(self.keys.callback(&reply.id))
                        .arg(self.keys.deliveries());
                }
                cmd.arg(&reply.encoded)
                    .arg(ttl)
                    .arg(channel_prefix)
                    .arg(&reply.id)
                    .arg(publish_arg);
            }
            Some((part, last)) => {
                cmd.arg(self.part_script.get_hash())
                    .arg(3)
                    .arg(self.keys.parts(&reply.id))
                    .arg(self.keys.waiters(&reply.id))
                    .arg(self.keys.reply(&reply.id))
                    .arg(&reply.encoded)
                    .arg(ttl)
                    .arg(channel_prefix)
                    .arg(&reply.id)
                    .arg(part)
                    .arg(u8::from(last))
                    .arg(publish_arg);
            }
        }
        cmd
    }

    /// Loads the store's scripts on `conn` (Redis restarted or flushed them).
    async fn load_scripts(&self, conn: &mut Connection) -> Result<(), StoreError> {
        for script in [&self.store_script, &self.part_script] {
            script.prepare_invoke().load_async(conn).await?;
        }
        Ok(())
    }

    /// One Redis: the batch in one pipeline, the scripts publishing.
    async fn store_pipelined(
        &self,
        replies: &[ReplyToStore],
        channel_prefix: &str,
        conn: &mut Connection,
    ) -> Result<Vec<StoreOutcome>, StoreError> {
        let build = || {
            let mut pipe = redis::pipe();
            for reply in replies {
                pipe.add_command(self.store_call(reply, true, channel_prefix));
            }
            pipe
        };
        let answers: Vec<redis::Value> = match build().query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts(conn).await?;
                build().query_async(conn).await?
            }
            other => other?,
        };
        answers.into_iter().map(StoreOutcome::parse).collect()
    }

    /// A cluster: one reply's script on the shard of its slot (loading the
    /// script there when that shard does not have it).
    async fn store_one(
        &self,
        reply: &ReplyToStore,
        channel_prefix: &str,
    ) -> Result<StoreOutcome, StoreError> {
        let mut conn = self.connection();
        let call = self.store_call(reply, false, channel_prefix);
        let answer: redis::Value = match call.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // `SCRIPT LOAD` goes to every master of the cluster.
                self.load_scripts(&mut conn).await?;
                call.query_async(&mut conn).await?
            }
            other => other?,
        };
        StoreOutcome::parse(answer)
    }

    /// A cluster: `SPUBLISH` each stored reply to its waiting nodes.
    async fn notify_sharded(
        &self,
        replies: &[ReplyToStore],
        outcomes: &[StoreOutcome],
    ) -> Result<(), StoreError> {
        let sends = replies
            .iter()
            .zip(outcomes)
            .filter(|(_, outcome)| !outcome.nodes.is_empty())
            .flat_map(|(reply, outcome)| {
                // One message per reply, whatever the number of its nodes.
                let message = encode_notification(&reply.id, &reply.encoded);
                outcome
                    .nodes
                    .iter()
                    .map(move |node| (node, message.clone()))
            })
            .map(|(node, message)| async move {
                redis::cmd("SPUBLISH")
                    .arg(self.keys.channel(node))
                    .arg(&message[..])
                    .query_async::<()>(&mut self.connection())
                    .await
            });
        try_join_all(sends).await?;
        Ok(())
    }
}

/// What a store script answered: whether it stored, and the nodes to notify
/// (only when it did not publish itself).
struct StoreOutcome {
    stored: bool,
    nodes: Vec<String>,
}

impl StoreOutcome {
    fn parse(answer: redis::Value) -> Result<Self, StoreError> {
        let malformed = || StoreError::Malformed("store answer".into());
        let redis::Value::Array(values) = answer else {
            return Err(malformed());
        };
        let mut values = values.into_iter();
        let stored = match values.next() {
            Some(redis::Value::Int(n)) => n == 1,
            _ => return Err(malformed()),
        };
        let nodes = values
            .map(|v| redis::from_redis_value::<String>(v).map_err(|_| malformed()))
            .collect::<Result<_, _>>()?;
        Ok(Self { stored, nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_answer_says_whether_it_stored_and_whom_to_notify() {
        use redis::Value;
        let answer = |v: Vec<Value>| StoreOutcome::parse(Value::Array(v));
        let stored = answer(vec![Value::Int(1)]).unwrap();
        assert!(stored.stored && stored.nodes.is_empty());
        let again = answer(vec![
            Value::Int(0),
            Value::BulkString(b"node-a".to_vec()),
            Value::BulkString(b"node-b".to_vec()),
        ])
        .unwrap();
        assert!(!again.stored);
        assert_eq!(again.nodes, ["node-a", "node-b"]);
        assert!(answer(vec![]).is_err());
        assert!(StoreOutcome::parse(Value::Int(1)).is_err());
    }
}
