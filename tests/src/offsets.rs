//! Where a topic's partitions end and what a consumer group has committed on
//! them, for tests that check a kill landed between a consumer's work and its
//! commit.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::Broker;

impl Broker {
    /// The end (high watermark) of each partition of `topic`: the offset the
    /// next record will get.
    ///
    /// # Errors
    /// When the broker cannot be asked.
    pub fn end_offsets(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = self.client_config().create()?;
        let timeout = Duration::from_secs(5);
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let mut ends = BTreeMap::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            ends.insert(partition.id(), high);
        }
        Ok(ends)
    }

    /// A reader of the offsets consumer group `group` has committed, asking
    /// its coordinator without joining the group.
    ///
    /// # Errors
    /// When librdkafka refuses the settings.
    pub fn group_offsets(&self, group: &str) -> anyhow::Result<GroupOffsets> {
        let mut config = self.client_config();
        config.set("group.id", group);
        Ok(GroupOffsets {
            consumer: config.create()?,
        })
    }
}

/// Reads the offsets a consumer group has committed (see
/// [`Broker::group_offsets`]); one client for many reads, so that a read is a
/// single round trip to the coordinator.
pub struct GroupOffsets {
    consumer: BaseConsumer,
}

impl GroupOffsets {
    /// The offset the group has committed on each of `partitions` of `topic`
    /// (`None` where it has committed none), as its coordinator says now.
    ///
    /// # Errors
    /// When the coordinator does not answer within 10 s.
    pub fn committed(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> anyhow::Result<BTreeMap<i32, Option<i64>>> {
        let mut asked = TopicPartitionList::new();
        for p in partitions {
            asked.add_partition(topic, *p);
        }
        let committed = self
            .consumer
            .committed_offsets(asked, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect())
    }
}
