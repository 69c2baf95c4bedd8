//! The `Responder`: how a backend service written in Rust serves a request topic.
//!
//! It consumes commands in a consumer group, hands each to the service's handler,
//! and produces the handler's reply to the command's `reply-to` topic with the
//! correlation id kept. A command of Spring's `ReplyingKafkaTemplate` is
//! answered Spring's way: to its `kafka_replyTopic` (and partition), with its
//! `kafka_correlationId` back byte for byte ([`crate::record::spring`]). At-least-once: a command's offset is stored only after its
//! reply was acknowledged by the broker, so a crash replays commands rather than
//! losing them (services should be idempotent, or dedupe by correlation id).
//!
//! Concurrency is bounded: at most `max_in_flight` commands are handled at once;
//! at the bound the Responder starts no further command until one finishes.
//! Commands finish in any order; a partition's offset is stored up to its lowest
//! command not finished yet (running or still queued), so a slow command delays
//! no other command's reply, only the commit of the offsets after it.
//!
//! # Lanes
//!
//! A Responder may serve its topics in priority lanes ([`Responder::with_lanes`],
//! highest first; [`Responder::new`] is one lane). One consumer and one poll
//! loop read every lane, and each record read waits in its lane's look-ahead
//! queue ([`Responder::with_max_queued`], [`DEFAULT_MAX_QUEUED`] per lane), so
//! that a command of a high lane never waits behind a low lane's backlog in the
//! consumer's buffer. When a lane's queue reaches its bound, the lane's
//! partitions are paused (nothing more of them is fetched; what the group
//! assigned stays assigned) and resumed once the queue is under half. A
//! rebalance forgets the pauses of the partitions it assigns: a paused lane is
//! paused again after each rebalance, and when a record of it still arrives.
//!
//! Whenever fewer than `max_in_flight` commands run, the next one starts from
//! the highest lane with queued commands, except that the lanes below get a
//! share of the starts while they have queued commands too
//! ([`Responder::with_lower_lane_share`], [`DEFAULT_LOWER_LANE_SHARE`] = every
//! tenth start), so that they never starve. A command's deadline is checked
//! when it starts, after its wait in the queue. Queued commands of partitions
//! the group revoked from this member are dropped unstarted and uncommitted:
//! the partition's new owner serves them.
//!
//! # Cancellation
//!
//! A record with the header `cancel: true` and a `correlation-id`
//! ([`crate::record::cancel_headers`], produced to the command's topic with its key,
//! so after the command in the same partition) is not a command: it cancels
//! the command with that id, and is itself committed at once.
//!
//! * A command still queued is taken out of its queue: never handled, never
//!   answered, its offset committed in order ([`ResponderStats::cancelled`]).
//! * A running command has its [`Request::cancelled`] token cancelled. A
//!   handler with work worth stopping watches it and returns [`Cancelled`]:
//!   nothing is replied and the offset is committed
//!   ([`ResponderStats::interrupted`]). A handler that does not watch it
//!   finishes and is answered as usual.
//! * A command already answered (or served by another member) is not
//!   affected.
//!
//! A cancel record is read in its partition's order: while its lane is paused,
//! it waits with the lane. Shutdown cancels nothing: running commands drain as
//! always.
//!
//! # Exactly once
//!
//! [`TransactionalResponder`] ([`transactional`]) serves commands the same
//! way in one lane, but commits each batch's replies, the handlers' events
//! and the commands' offsets in one Kafka transaction.
//!
//! # Metrics
//!
//! [`metrics::registry`] (or [`metrics::collector`] for a registry of the
//! service's own) exports [`ResponderStats`] as `replyway_responder_…` metrics
//! for an admin port ([`crate::admin`]).

mod dispatch;
mod handling;
mod lanes;
pub mod metrics;
mod parts;
mod queue;
mod running;
mod scheduler;
pub mod transactional;

pub use parts::{PartError, Parts};
pub use transactional::TransactionalResponder;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::consumer::CloseError;
use crate::record::{Reply, Request};
use crate::settings::KafkaSettings;

use dispatch::Dispatch;
use handling::{Handling, Outcome};
use lanes::{Lanes, Partition, Rebalances};
use queue::Queued;

pub use queue::DEFAULT_MAX_QUEUED;
pub use scheduler::{DEFAULT_LOWER_LANE_SHARE, valid_lower_lane_share};

/// What a handler may fail with; the Responder answers `500` (the message is
/// logged, not sent), except for [`Redeliver`] and [`Cancelled`].
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A handler error that leaves the command unanswered and its offset
/// uncommitted, so it is delivered again after a restart or rebalance. Meant for
/// a handler interrupted by shutdown half-way (its effects must be idempotent);
/// any other failure should be answered.
#[derive(Debug, thiserror::Error)]
#[error("left for redelivery: {0}")]
pub struct Redeliver(pub String);

/// A handler error saying the handler stopped because its command was
/// cancelled ([`Request::cancelled`]): nothing is replied (nobody reads the
/// reply) and the command's offset is committed.
#[derive(Debug, thiserror::Error)]
#[error("stopped: the command was cancelled")]
pub struct Cancelled;

/// Counters of what the Responder did, readable while it runs.
#[derive(Debug, Default)]
pub struct ResponderStats {
    /// Commands answered (including handler failures answered with 500).
    pub replied: AtomicU64,
    /// Commands skipped because their deadline had passed (when read, or
    /// when their turn came to start).
    pub expired: AtomicU64,
    /// Records that are not commands (no correlation id or reply-to).
    pub malformed: AtomicU64,
    /// Handler failures answered with 500.
    pub failed: AtomicU64,
    /// Commands cancelled while queued: never handled, not answered.
    pub cancelled: AtomicU64,
    /// Commands whose handler stopped on their cancellation ([`Cancelled`]):
    /// not answered.
    pub interrupted: AtomicU64,
    /// Per lane: commands read and waiting to start.
    queued: Vec<AtomicU64>,
    /// Commands being handled (or their replies produced) now.
    running: AtomicU64,
}

impl ResponderStats {
    fn for_lanes(lanes: usize) -> Self {
        Self {
            queued: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    /// Commands read and waiting to start, per lane (highest first).
    pub fn queued(&self) -> Vec<u64> {
        self.queued
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Commands being handled (or their replies produced) now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    fn set_queued(&self, lane: usize, n: usize) {
        if let Some(gauge) = self.queued.get(lane) {
            gauge.store(n as u64, Ordering::Relaxed);
        }
    }
}

/// Consumes commands and replies to them.
pub struct Responder {
    consumer: StreamConsumer<Rebalances>,
    producer: FutureProducer,
    lanes: Lanes,
    max_in_flight: usize,
    max_queued: usize,
    lower_lane_share: f64,
    drain_timeout: Duration,
    stats: Arc<ResponderStats>,
}

/// How long commands in flight may take to finish after shutdown, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("lanes", &self.lanes)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_queued", &self.max_queued)
            .field("lower_lane_share", &self.lower_lane_share)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A Responder in consumer group `group` over `topics`, in one lane.
    ///
    /// # Errors
    /// A [`KafkaError`] when the clients cannot be created or subscribed.
    pub fn new(
        kafka: &KafkaSettings,
        group: &str,
        topics: &[&str],
        max_in_flight: usize,
    ) -> Result<Self, KafkaError> {
        Self::with_lanes(kafka, group, &[topics], max_in_flight)
    }

    /// A Responder in consumer group `group` over the topics of `lanes`,
    /// highest lane first (see [Lanes](self#lanes)). A topic named in more
    /// than one lane belongs to the highest.
    ///
    /// # Errors
    /// A [`KafkaError`] when the clients cannot be created or subscribed.
    pub fn with_lanes(
        kafka: &KafkaSettings,
        group: &str,
        lanes: &[&[&str]],
        max_in_flight: usize,
    ) -> Result<Self, KafkaError> {
        let lanes = Lanes::new(lanes);
        let consumer: StreamConsumer<Rebalances> = kafka
            .consumer_config(group)
            .create_with_context(Rebalances::default())?;
        consumer.subscribe(&lanes.all_topics())?;
        let producer: FutureProducer = kafka.producer_config().create()?;
        Ok(Self {
            consumer,
            producer,
            stats: Arc::new(ResponderStats::for_lanes(lanes.count())),
            lanes,
            max_in_flight: max_in_flight.max(1),
            max_queued: DEFAULT_MAX_QUEUED,
            lower_lane_share: DEFAULT_LOWER_LANE_SHARE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        })
    }

    /// How many commands each lane reads ahead of those running (default
    /// [`DEFAULT_MAX_QUEUED`], at least 1): at the bound the lane's
    /// partitions are paused.
    #[must_use]
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued.max(1);
        self
    }

    /// The share of starts that go to lower lanes while a higher lane has
    /// queued commands too (default [`DEFAULT_LOWER_LANE_SHARE`]).
    ///
    /// # Panics
    /// When `share` is not in `(0, 0.5]` (check it first with
    /// [`valid_lower_lane_share`]).
    #[must_use]
    pub fn with_lower_lane_share(mut self, share: f64) -> Self {
        assert!(
            valid_lower_lane_share(share),
            "the lower-lane share must be in (0, 0.5], got {share}"
        );
        self.lower_lane_share = share;
        self
    }

    /// How long the commands in flight at shutdown may take to finish
    /// (default [`DEFAULT_DRAIN_TIMEOUT`]); those still running then are
    /// abandoned uncommitted, and delivered again to the group.
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ResponderStats> {
        Arc::clone(&self.stats)
    }

    /// Serves commands with `handler` until `shutdown` is cancelled, then lets the
    /// commands in flight finish, commits what was answered and leaves the group.
    /// Commands still queued at shutdown are left uncommitted, for redelivery.
    ///
    /// # Errors
    /// A [`CloseError`] when the final commit fails or the group cannot be left in time.
    pub async fn run<H, F>(self, handler: H, shutdown: CancellationToken) -> Result<(), CloseError>
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Reply, HandlerError>>,
    {
        let mut state = Dispatch::new(&self);
        let mut in_flight = FuturesUnordered::new();
        let mut stream = self.consumer.stream();
        loop {
            self.after_rebalance(&mut state);
            while in_flight.len() < self.max_in_flight {
                let Some(Queued {
                    position,
                    mut request,
                }) = self.next_command(&mut state)
                else {
                    break;
                };
                let id = request.correlation_id.clone();
                request.cancelled = state.running.start(&id);
                let (this, handler, shutdown) = (&self, &handler, &shutdown);
                in_flight.push(async move {
                    let answered = this.serve(request, handler, shutdown).await;
                    (position, id, answered)
                });
            }
            self.balance(&mut state);
            self.stats
                .running
                .store(in_flight.len() as u64, Ordering::Relaxed);
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((position, id, answered)) = in_flight.next() => {
                    state.running.finish(&id);
                    self.completed(&mut state.offsets, position, answered);
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => self.take(&mut state, &message),
                    Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                    None => break,
                },
            }
        }
        // Finish what was started (replies being produced give up on
        // shutdown), for at most `drain_timeout`; what is queued stays
        // uncommitted.
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while let Some((position, _, answered)) = in_flight.next().await {
                self.completed(&mut state.offsets, position, answered);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                drain_timeout = ?self.drain_timeout,
                "commands still running at the end of the drain are abandoned uncommitted; the group delivers them again"
            );
        }
        for lane in 0..self.lanes.count() {
            self.stats.set_queued(lane, 0);
        }
        self.stats.running.store(0, Ordering::Relaxed);
        drop(stream);
        drop(in_flight);
        crate::consumer::close(self.consumer).await
    }

    /// Records a finished command and stores the partition's offset up to the
    /// lowest command not finished yet.
    fn completed(&self, offsets: &mut Offsets, position: Position, answered: bool) {
        if !answered {
            // Not answered (shutdown): its offset must not be committed; it and
            // everything after it in its partition will be delivered again.
            return;
        }
        if let Some(done) = offsets.finished(&position)
            && let Err(e) = self
                .consumer
                .store_offset(&position.topic, position.partition, done)
        {
            tracing::debug!(error = %e, partition = position.partition, "offset not stored (partition revoked?)");
        }
    }

    /// Serves one command. Returns whether its offset may be stored (the reply was
    /// acknowledged, or there is nothing to reply to).
    async fn serve<H, F>(
        &self,
        mut request: Request,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> bool
    where
        H: Fn(Request) -> F,
        F: Future<Output = Result<Reply, HandlerError>>,
    {
        let handling = Handling::start(&mut request, &self.producer);
        let result = handler(request).instrument(handling.span.clone()).await;
        let reply = match handling.outcome(result, &self.stats) {
            Outcome::Answer(reply) => handling.last_part(reply),
            Outcome::Interrupted => return true,
            Outcome::Redeliver => return false,
        };
        let headers = handling.headers(&reply);
        let mut backoff = Backoff::default();
        loop {
            let record = handling.record(&reply, headers.clone());
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.stats.replied.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err((e, _)) => {
                    tracing::warn!(correlation_id = %handling.id(), error = %e, "could not produce reply; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Where a command came from, and which tracking of its partition it belongs
/// to (see [`Offsets::forget`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
    /// The [`Tracked::since`] of its partition when it was read.
    since: u64,
}

/// Per partition: offsets read and not finished, and the highest finished one.
#[derive(Debug, Default)]
struct Offsets {
    partitions: HashMap<Partition, Tracked>,
    /// Trackings begun so far.
    begun: u64,
}

/// The offsets of one partition since this member was (last) assigned it.
#[derive(Debug)]
struct Tracked {
    since: u64,
    in_flight: BTreeSet<i64>,
    done: i64,
}

impl Offsets {
    /// Registers a record read; returns its position.
    fn started(&mut self, topic: &str, partition: i32, offset: i64) -> Position {
        let begun = &mut self.begun;
        let tracked = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| {
                *begun += 1;
                Tracked {
                    since: *begun,
                    in_flight: BTreeSet::new(),
                    done: -1,
                }
            });
        tracked.in_flight.insert(offset);
        Position {
            topic: topic.to_owned(),
            partition,
            offset,
            since: tracked.since,
        }
    }

    /// Marks `p` finished; returns the offset that is now processed with
    /// everything before it (to store), if any.
    fn finished(&mut self, p: &Position) -> Option<i64> {
        let tracked = self
            .partitions
            .get_mut(&(p.topic.clone(), p.partition))
            .filter(|t| t.since == p.since)?;
        tracked.in_flight.remove(&p.offset);
        tracked.done = tracked.done.max(p.offset);
        match tracked.in_flight.first() {
            Some(lowest) if *lowest > 0 => Some(lowest - 1),
            Some(_) => None,
            None => Some(tracked.done),
        }
    }

    /// Forgets `revoked` partitions: what was read of them before counts no
    /// more (a command of theirs still running finishes without storing
    /// anything), and a new assignment of one starts a new tracking from the
    /// committed offset. Kept, an old command's offset could be stored past
    /// records that the new assignment has not read again yet.
    fn forget(&mut self, revoked: &[Partition]) {
        for partition in revoked {
            self.partitions.remove(partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_advance_only_past_finished_commands() {
        let mut o = Offsets::default();
        let [five, six, seven] = [5, 6, 7].map(|n| o.started("t", 0, n));
        assert_eq!(o.finished(&six), Some(4), "5 is still in flight");
        assert_eq!(o.finished(&seven), Some(4));
        assert_eq!(o.finished(&five), Some(7), "all done");
        let zero = o.started("t", 1, 0);
        let one = o.started("t", 1, 1);
        assert_eq!(o.finished(&one), None, "nothing below 0 to store");
        assert_eq!(o.finished(&zero), Some(1));
    }

    #[test]
    fn a_revoked_partitions_old_commands_store_nothing() {
        let mut o = Offsets::default();
        let old = o.started("t", 0, 101);
        o.forget(&[("t".into(), 0)]);
        // Assigned again: read again from the committed offset, 95.
        let again = o.started("t", 0, 95);
        assert_eq!(
            o.finished(&old),
            None,
            "96..100 are not read again yet: storing 101 would skip them"
        );
        assert_eq!(o.finished(&again), Some(95));
    }
}
