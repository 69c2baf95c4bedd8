//! The lanes of a Responder: which lane each topic belongs to, which lanes are
//! paused, and the rebalances that change the partitions this member owns.
//!
//! Pausing is per partition in librdkafka, and a rebalance forgets it for the
//! partitions it assigns: so a lane remembers that it is paused, and pauses
//! its current partitions again after every rebalance ([`Rebalances`] counts
//! them) and whenever a record of a paused lane still arrives. Pausing twice
//! is harmless.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

/// The consumer's context: logs rebalances, counts them and remembers the
/// partitions they revoked, so that the Responder notices at its next step
/// (the callbacks run inside the consumer's poll, where the Responder's state
/// is out of reach).
#[derive(Debug, Default)]
pub(super) struct Rebalances {
    done: AtomicU64,
    revoked: Mutex<Vec<Partition>>,
}

impl Rebalances {
    /// Rebalances done so far.
    pub(super) fn count(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// The partitions revoked since the last call (a partition revoked and
    /// assigned again in between is among them: its fetch starts again from
    /// the committed offset).
    pub(super) fn take_revoked(&self) -> Vec<Partition> {
        std::mem::take(
            &mut *self
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(
            ?rebalance,
            "responder rebalance: partitions being revoked or assigned"
        );
        if let Rebalance::Revoke(partitions) = rebalance {
            self.revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        tracing::info!(?rebalance, assigned, "responder rebalance done");
        self.done.fetch_add(1, Ordering::Release);
    }
}

/// A partition: topic and number.
pub(super) type Partition = (String, i32);

/// The lanes, highest first: which lane each topic belongs to.
#[derive(Debug)]
pub(super) struct Lanes {
    topics: Vec<Vec<String>>,
    lane_of: HashMap<String, usize>,
}

impl Lanes {
    /// Lanes of `topics`, highest first (at least one lane). A topic named in
    /// more than one lane belongs to the highest.
    pub(super) fn new(topics: &[&[&str]]) -> Self {
        let mut topics: Vec<Vec<String>> = topics
            .iter()
            .map(|lane| lane.iter().map(|t| (*t).to_owned()).collect())
            .collect();
        if topics.is_empty() {
            topics.push(Vec::new());
        }
        let mut lane_of = HashMap::new();
        for (lane, names) in topics.iter().enumerate() {
            for topic in names {
                lane_of.entry(topic.clone()).or_insert(lane);
            }
        }
        Self { topics, lane_of }
    }

    /// How many lanes there are.
    pub(super) fn count(&self) -> usize {
        self.topics.len()
    }

    /// Every topic of every lane, once (to subscribe to).
    pub(super) fn all_topics(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.lane_of.keys().map(String::as_str).collect();
        all.sort_unstable();
        all
    }

    /// The lane of `topic`; a topic of no lane (never subscribed) counts as
    /// the lowest.
    pub(super) fn lane_of(&self, topic: &str) -> usize {
        self.lane_of
            .get(topic)
            .copied()
            .unwrap_or(self.topics.len() - 1)
    }

    /// The partitions of `lane` that `consumer` owns now (`None` when there
    /// are none, or the consumer cannot say).
    fn partitions<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        lane: usize,
    ) -> Option<TopicPartitionList> {
        let assignment = consumer.assignment().ok()?;
        let mut partitions = TopicPartitionList::new();
        for e in assignment.elements() {
            if self.lane_of.get(e.topic()) == Some(&lane) {
                partitions.add_partition(e.topic(), e.partition());
            }
        }
        (partitions.count() > 0).then_some(partitions)
    }
}

/// Which lanes are paused, and pausing or resuming a lane's partitions.
#[derive(Debug)]
pub(super) struct Pauses {
    paused: Vec<bool>,
}

impl Pauses {
    /// No lane of `lanes` paused.
    pub(super) fn new(lanes: &Lanes) -> Self {
        Self {
            paused: vec![false; lanes.count()],
        }
    }

    /// Whether `lane` is paused.
    pub(super) fn is_paused(&self, lane: usize) -> bool {
        self.paused[lane]
    }

    /// Pauses the partitions of `lane` that `consumer` owns now, and marks it
    /// paused (so that it is paused again after a rebalance).
    pub(super) fn pause<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        lanes: &Lanes,
        consumer: &C,
        lane: usize,
    ) {
        let newly = !self.paused[lane];
        self.paused[lane] = true;
        let Some(partitions) = lanes.partitions(consumer, lane) else {
            return;
        };
        match consumer.pause(&partitions) {
            Ok(()) if newly => tracing::debug!(
                lane,
                partitions = partitions.count(),
                "lane paused: its look-ahead queue is full"
            ),
            Ok(()) => {}
            Err(e) => tracing::warn!(lane, error = %e, "could not pause a lane's partitions"),
        }
    }

    /// Resumes the partitions of `lane` that `consumer` owns now.
    pub(super) fn resume<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        lanes: &Lanes,
        consumer: &C,
        lane: usize,
    ) {
        self.paused[lane] = false;
        let Some(partitions) = lanes.partitions(consumer, lane) else {
            return;
        };
        match consumer.resume(&partitions) {
            Ok(()) => tracing::debug!(lane, "lane resumed: its look-ahead queue has room"),
            Err(e) => tracing::warn!(lane, error = %e, "could not resume a lane's partitions"),
        }
    }

    /// Pauses every paused lane's current partitions again (after a
    /// rebalance, which forgets pauses).
    pub(super) fn pause_again<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        lanes: &Lanes,
        consumer: &C,
    ) {
        for lane in 0..self.paused.len() {
            if self.paused[lane] {
                self.pause(lanes, consumer, lane);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_topic_has_one_lane_the_highest_that_names_it() {
        let lanes = Lanes::new(&[&["urgent", "both"], &["bulk", "both"], &[]]);
        assert_eq!(lanes.count(), 3);
        assert_eq!(lanes.lane_of("urgent"), 0);
        assert_eq!(lanes.lane_of("both"), 0);
        assert_eq!(lanes.lane_of("bulk"), 1);
        assert_eq!(lanes.lane_of("unknown"), 2, "the lowest lane");
        assert_eq!(lanes.all_topics(), ["both", "bulk", "urgent"]);
        let none = Lanes::new(&[]);
        assert_eq!(none.count(), 1);
        assert!(none.all_topics().is_empty());
    }
}
