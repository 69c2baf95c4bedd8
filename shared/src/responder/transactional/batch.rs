//! A batch of commands read for one transaction: the commands to handle, and
//! per partition the offset the batch began at (where an aborted batch
//! rewinds to) and the offset after its last record (what the transaction
//! commits).

use std::collections::BTreeMap;

use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use crate::record::Request;

use super::super::lanes::Partition;

/// The records of one transaction (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The commands, in the order read, with their partitions.
    commands: Vec<(Partition, Request)>,
    /// Per partition: (first offset read, offset after the last read).
    span: BTreeMap<Partition, (i64, i64)>,
    /// Records read.
    records: usize,
    /// Records read that are no command to handle.
    pub(super) skipped: Skipped,
}

/// Records of a batch that are not handled, counted once it commits.
#[derive(Debug, Default)]
pub(super) struct Skipped {
    /// Commands past their deadline.
    pub(super) expired: u64,
    /// Records that are no command.
    pub(super) malformed: u64,
    /// Commands cancelled by a cancel record of the same batch.
    pub(super) cancelled: u64,
}

impl Batch {
    /// Registers a record read from `topic`/`partition` at `offset`: the
    /// transaction commits past it, whatever it is (command, cancel record,
    /// a record that is no command).
    pub(super) fn read(&mut self, topic: &str, partition: i32, offset: i64) {
        self.records += 1;
        self.span
            .entry((topic.to_owned(), partition))
            .and_modify(|(_, next)| *next = (*next).max(offset + 1))
            .or_insert((offset, offset + 1));
    }

    /// Adds a command read from `topic`/`partition` (registered with
    /// [`Batch::read`]).
    pub(super) fn push(&mut self, topic: &str, partition: i32, command: Request) {
        self.commands.push(((topic.to_owned(), partition), command));
    }

    /// Takes the command with correlation id `id` out (a cancel record for
    /// it came in the same batch): it is not handled, and its offset is
    /// committed with the batch. Whether it was here.
    pub(super) fn cancel(&mut self, id: &str) -> bool {
        let before = self.commands.len();
        self.commands.retain(|(_, c)| c.correlation_id != id);
        let cancelled = before - self.commands.len();
        self.skipped.cancelled += cancelled as u64;
        cancelled > 0
    }

    /// Forgets what was read of `revoked` partitions: their new owner (or
    /// this member, assigned them again) reads them again from the committed
    /// offset. Returns how many commands were dropped.
    pub(super) fn drop_revoked(&mut self, revoked: &[Partition]) -> usize {
        self.span.retain(|p, _| !revoked.contains(p));
        let before = self.commands.len();
        self.commands.retain(|(p, _)| !revoked.contains(p));
        before - self.commands.len()
    }

    /// Whether nothing was read (nothing to commit).
    pub(super) fn is_empty(&self) -> bool {
        self.span.is_empty()
    }

    /// Records read (those of revoked partitions included).
    pub(super) fn records(&self) -> usize {
        self.records
    }

    /// Commands in the batch.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.commands.len()
    }

    /// Takes the commands out, in the order read, to be handled; the
    /// offsets stay.
    pub(super) fn take_commands(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.commands)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// The offsets the transaction commits: after the last record read of
    /// each partition.
    ///
    /// # Errors
    /// When librdkafka refuses an offset (it never should).
    pub(super) fn commit_offsets(&self) -> KafkaResult<TopicPartitionList> {
        self.offsets(|(_, next)| next)
    }

    /// Where an aborted batch rewinds each partition to: the first record it
    /// read, the one after what the last transaction committed.
    ///
    /// # Errors
    /// As [`Batch::commit_offsets`].
    pub(super) fn rewind_offsets(&self) -> KafkaResult<TopicPartitionList> {
        self.offsets(|(first, _)| first)
    }

    fn offsets(&self, pick: impl Fn((i64, i64)) -> i64) -> KafkaResult<TopicPartitionList> {
        let mut list = TopicPartitionList::with_capacity(self.span.len());
        for ((topic, partition), span) in &self.span {
            list.add_partition_offset(topic, *partition, Offset::Offset(pick(*span)))?;
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str) -> Request {
        Request {
            correlation_id: id.into(),
            reply_to: "r".into(),
            ..Request::default()
        }
    }

    fn offsets(list: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        list.elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect()
    }

    #[test]
    fn commits_past_every_record_read_and_rewinds_to_the_first() {
        let mut b = Batch::default();
        for (partition, offset, id) in [(0, 7, "a"), (1, 3, "b"), (0, 8, "c")] {
            b.read("t", partition, offset);
            b.push("t", partition, command(id));
        }
        // A record that is no command still moves the committed offset.
        b.read("t", 1, 4);
        assert_eq!(b.len(), 3);
        let commit = offsets(&b.commit_offsets().unwrap());
        assert_eq!(
            commit,
            [
                ("t".into(), 0, Offset::Offset(9)),
                ("t".into(), 1, Offset::Offset(5))
            ]
        );
        let rewind = offsets(&b.rewind_offsets().unwrap());
        assert_eq!(
            rewind,
            [
                ("t".into(), 0, Offset::Offset(7)),
                ("t".into(), 1, Offset::Offset(3))
            ]
        );
    }

    #[test]
    fn a_cancelled_or_revoked_command_leaves_the_batch() {
        let mut b = Batch::default();
        for (partition, offset, id) in [(0, 1, "a"), (1, 1, "b"), (0, 2, "c")] {
            b.read("t", partition, offset);
            b.push("t", partition, command(id));
        }
        assert!(b.cancel("c"));
        assert!(!b.cancel("nobody"));
        assert_eq!(b.skipped.cancelled, 1);
        assert_eq!(b.records(), 3);
        let ids: Vec<&str> = b
            .commands
            .iter()
            .map(|(_, c)| c.correlation_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(b.drop_revoked(&[("t".into(), 0)]), 1);
        let ids: Vec<String> = b
            .take_commands()
            .into_iter()
            .map(|c| c.correlation_id)
            .collect();
        assert_eq!(ids, ["b"]);
        assert_eq!(
            offsets(&b.commit_offsets().unwrap()),
            [("t".into(), 1, Offset::Offset(2))],
            "nothing of the revoked partition is committed"
        );
        assert_eq!(b.len(), 0, "taken out to be handled");
        assert!(!b.is_empty(), "its offsets stay");
        assert_eq!(b.drop_revoked(&[("t".into(), 1)]), 0);
        assert!(b.is_empty());
    }
}
