//! The look-ahead queues: per lane, the commands read but not started yet, in
//! the order they were read.
//!
//! Reading ahead is what lets an urgent command overtake a backlog: records of
//! every lane are taken from the consumer as they come, so a command of a high
//! lane never waits behind records of a low one in the client's buffer. Each
//! lane's queue has a bound; the [`Responder`](super::Responder) pauses a
//! lane's partitions when its queue reaches the bound ([`Queues::is_full`])
//! and resumes them once it is under half ([`Queues::has_room`]). A few
//! records the client had already fetched may still arrive after the pause,
//! so a queue can hold slightly more than its bound, never unboundedly more.

use std::collections::VecDeque;

use crate::record::Request;

use super::Position;

/// Commands queued per lane, by default.
pub const DEFAULT_MAX_QUEUED: usize = 256;

/// A command read and not started yet.
#[derive(Debug)]
pub(super) struct Queued {
    /// Where it came from (registered in the offsets when it was read).
    pub(super) position: Position,
    /// The command.
    pub(super) request: Request,
}

/// The queues of all lanes, highest first.
#[derive(Debug)]
pub(super) struct Queues {
    lanes: Vec<VecDeque<Queued>>,
    bound: usize,
}

impl Queues {
    /// Empty queues for `lanes` lanes of `bound` commands each (at least 1).
    pub(super) fn new(lanes: usize, bound: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| VecDeque::new()).collect(),
            bound: bound.max(1),
        }
    }

    /// Queues a command read from `lane`.
    pub(super) fn push(&mut self, lane: usize, queued: Queued) {
        self.lanes[lane].push_back(queued);
    }

    /// The oldest queued command of `lane`.
    pub(super) fn pop(&mut self, lane: usize) -> Option<Queued> {
        self.lanes[lane].pop_front()
    }

    /// Commands queued in `lane`.
    pub(super) fn len(&self, lane: usize) -> usize {
        self.lanes[lane].len()
    }

    /// Whether `lane` reached its bound (time to pause it).
    pub(super) fn is_full(&self, lane: usize) -> bool {
        self.len(lane) >= self.bound
    }

    /// Whether `lane` is under half its bound (time to resume it).
    pub(super) fn has_room(&self, lane: usize) -> bool {
        self.len(lane) * 2 < self.bound
    }

    /// Takes the oldest queued command with `correlation_id` out of its queue,
    /// with its lane. A linear search: a cancel record is rare, and a queue is
    /// bounded.
    pub(super) fn remove(&mut self, correlation_id: &str) -> Option<(usize, Queued)> {
        self.lanes.iter_mut().enumerate().find_map(|(lane, queue)| {
            let at = queue
                .iter()
                .position(|q| q.request.correlation_id == correlation_id)?;
            queue.remove(at).map(|q| (lane, q))
        })
    }

    /// Takes every queued command whose position `keep` refuses out of the
    /// queues (the records of partitions this member no longer owns).
    pub(super) fn remove_unless(&mut self, keep: impl Fn(&Position) -> bool) -> Vec<Queued> {
        let mut removed = Vec::new();
        for queue in &mut self.lanes {
            let (kept, gone): (VecDeque<_>, VecDeque<_>) =
                queue.drain(..).partition(|q| keep(&q.position));
            *queue = kept;
            removed.extend(gone);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str, partition: i32, offset: i64) -> Queued {
        Queued {
            position: Position {
                topic: "t".into(),
                partition,
                offset,
                since: 1,
            },
            request: Request {
                correlation_id: id.into(),
                ..Request::default()
            },
        }
    }

    fn ids(queues: &mut Queues, lane: usize) -> Vec<String> {
        std::iter::from_fn(|| queues.pop(lane))
            .map(|q| q.request.correlation_id)
            .collect()
    }

    #[test]
    fn a_command_is_removed_by_its_correlation_id_and_the_rest_keep_their_order() {
        let mut queues = Queues::new(2, 10);
        for (n, id) in ["a", "b", "c", "b"].iter().enumerate() {
            queues.push(1, command(id, 0, n as i64));
        }
        queues.push(0, command("x", 0, 9));
        let (lane, removed) = queues.remove("b").expect("b is queued");
        assert_eq!((lane, removed.position.offset), (1, 1), "the oldest b");
        assert!(queues.remove("nobody").is_none());
        let (lane, _) = queues.remove("x").expect("x is queued");
        assert_eq!(lane, 0);
        assert_eq!(queues.len(0), 0);
        assert_eq!(ids(&mut queues, 1), ["a", "c", "b"]);
    }

    #[test]
    fn a_lane_is_full_at_its_bound_and_has_room_under_half() {
        let mut queues = Queues::new(1, 4);
        for n in 0..4 {
            assert!(!queues.is_full(0));
            queues.push(0, command("c", 0, n));
        }
        assert!(queues.is_full(0));
        assert!(!queues.has_room(0));
        queues.pop(0);
        queues.pop(0);
        assert!(!queues.has_room(0), "2 of 4 is not under half");
        queues.pop(0);
        assert!(queues.has_room(0));
        // A bound of one: full with one, room when empty.
        let mut one = Queues::new(1, 1);
        assert!(one.has_room(0));
        one.push(0, command("c", 0, 0));
        assert!(one.is_full(0) && !one.has_room(0));
    }

    #[test]
    fn commands_of_lost_partitions_are_taken_out() {
        let mut queues = Queues::new(2, 10);
        queues.push(0, command("a", 0, 1));
        queues.push(0, command("b", 1, 1));
        queues.push(1, command("c", 1, 2));
        queues.push(1, command("d", 0, 3));
        let gone = queues.remove_unless(|p| p.partition == 0);
        let gone: Vec<_> = gone
            .iter()
            .map(|q| q.request.correlation_id.as_str())
            .collect();
        assert_eq!(gone, ["b", "c"]);
        assert_eq!(ids(&mut queues, 0), ["a"]);
        assert_eq!(ids(&mut queues, 1), ["d"]);
    }
}
