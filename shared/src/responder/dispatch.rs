//! What [`Responder::run`] does between reading a record and starting a
//! command: a record read is a cancel record, a command for its lane's queue,
//! or skipped; the next command is chosen by the lanes' priorities; lanes are
//! paused and resumed by their queues; a rebalance drops what it revoked.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};

use crate::record::{self, Request};

use super::Offsets;
use super::Responder;
use super::lanes::Pauses;
use super::queue::{Queued, Queues};
use super::running::Running;
use super::scheduler::Scheduler;

/// The state of [`Responder::run`] between its steps.
pub(super) struct Dispatch {
    pub(super) offsets: Offsets,
    pub(super) queues: Queues,
    pub(super) scheduler: Scheduler,
    pub(super) pauses: Pauses,
    pub(super) running: Running,
    /// Rebalances seen so far.
    pub(super) rebalances: u64,
}

impl Dispatch {
    pub(super) fn new(responder: &Responder) -> Self {
        let lanes = responder.lanes.count();
        Self {
            offsets: Offsets::default(),
            queues: Queues::new(lanes, responder.max_queued),
            scheduler: Scheduler::new(lanes, responder.lower_lane_share),
            pauses: Pauses::new(&responder.lanes),
            running: Running::default(),
            rebalances: 0,
        }
    }
}

impl Responder {
    /// Takes in a record read: a cancel record cancels, a command is queued in
    /// its lane, anything else is skipped. Its offset is registered at once,
    /// so that no commit passes it before it is finished.
    pub(super) fn take(&self, state: &mut Dispatch, message: &BorrowedMessage<'_>) {
        // The poll that returned it may have run a rebalance first: a record
        // of a partition assigned again must not join its old tracking.
        self.after_rebalance(state);
        let position =
            state
                .offsets
                .started(message.topic(), message.partition(), message.offset());
        // Before parsing: a cancel record is no malformed command.
        if let Some(id) = record::cancelled_id_of(message) {
            self.completed(&mut state.offsets, position, true);
            self.cancel(state, &id);
            return;
        }
        let request = match Request::from_message(message) {
            Ok(request) => request,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "skipping a record that is not a command");
                self.completed(&mut state.offsets, position, true);
                return;
            }
        };
        if self.skip_expired(&request) {
            self.completed(&mut state.offsets, position, true);
            return;
        }
        let lane = self.lanes.lane_of(&position.topic);
        if state.pauses.is_paused(lane) {
            // A record of a paused lane: a rebalance gave it a partition that
            // is not paused (yet); pausing again is harmless.
            state.pauses.pause(&self.lanes, &self.consumer, lane);
        }
        state.queues.push(lane, Queued { position, request });
    }

    /// Cancels command `id`: out of its queue if it waits there, its token
    /// cancelled if it runs.
    pub(super) fn cancel(&self, state: &mut Dispatch, id: &str) {
        let mut found = false;
        while let Some((lane, queued)) = state.queues.remove(id) {
            found = true;
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::info!(correlation_id = %id, lane, "queued command cancelled: not handled, not answered");
            self.completed(&mut state.offsets, queued.position, true);
        }
        if state.running.cancel(id) {
            found = true;
            tracing::info!(correlation_id = %id, "running command cancelled: its handler is told");
        }
        if !found {
            tracing::debug!(correlation_id = %id, "cancel record of a command not here (answered, or served by another member)");
        }
    }

    /// The next command to start, by the lanes' priorities; commands whose
    /// deadline passed while they waited are skipped.
    pub(super) fn next_command(&self, state: &mut Dispatch) -> Option<Queued> {
        loop {
            let queues = &state.queues;
            let lane = state.scheduler.next(|lane| queues.len(lane) > 0)?;
            let queued = state.queues.pop(lane)?;
            if self.skip_expired(&queued.request) {
                self.completed(&mut state.offsets, queued.position, true);
                continue;
            }
            return Some(queued);
        }
    }

    /// Whether `request`'s deadline has passed (counted and logged if so).
    pub(super) fn skip_expired(&self, request: &Request) -> bool {
        let expired = request.is_expired(SystemTime::now());
        if expired {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(correlation_id = %request.correlation_id, "skipping a command past its deadline");
        }
        expired
    }

    /// Pauses the lanes whose queue is full, resumes those with room again,
    /// and shows the queues in the stats.
    pub(super) fn balance(&self, state: &mut Dispatch) {
        for lane in 0..self.lanes.count() {
            let paused = state.pauses.is_paused(lane);
            if !paused && state.queues.is_full(lane) {
                state.pauses.pause(&self.lanes, &self.consumer, lane);
            } else if paused && state.queues.has_room(lane) {
                state.pauses.resume(&self.lanes, &self.consumer, lane);
            }
            self.stats.set_queued(lane, state.queues.len(lane));
        }
    }

    /// After a rebalance: drops the queued commands of the partitions it
    /// revoked (their fetch starts again from the committed offset, here or
    /// at their new owner) and forgets their offsets; pauses the paused lanes
    /// again.
    pub(super) fn after_rebalance(&self, state: &mut Dispatch) {
        let rebalances = self.consumer.context().count();
        if rebalances == state.rebalances {
            return;
        }
        state.rebalances = rebalances;
        let revoked = self.consumer.context().take_revoked();
        if !revoked.is_empty() {
            let dropped = state.queues.remove_unless(|p| {
                !revoked
                    .iter()
                    .any(|(topic, partition)| *topic == p.topic && *partition == p.partition)
            });
            state.offsets.forget(&revoked);
            if !dropped.is_empty() {
                tracing::info!(
                    dropped = dropped.len(),
                    "queued commands of revoked partitions dropped unstarted; they are delivered again"
                );
            }
        }
        state.pauses.pause_again(&self.lanes, &self.consumer);
    }
}
