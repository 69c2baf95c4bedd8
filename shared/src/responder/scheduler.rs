//! Which lane's command starts next: the highest lane with queued commands,
//! except that the lanes below it get a share of the starts, so that a
//! backlog of urgent commands never starves the rest.
//!
//! The share is kept as integer credit (parts per million of one start), so
//! that the ratio is exact and the same on every run: each start while a
//! lower lane also has queued commands adds the share to the credit of the
//! lane served; when the credit reaches one whole start, that start goes to
//! the highest non-empty lane below instead and the credit drops by one. With
//! more than two lanes the lanes below choose among themselves the same way,
//! so the third lane gets `share²` of the starts while the first two are
//! backlogged, and no lane ever starves.

/// One whole start, in parts of credit.
const WHOLE: u32 = 1_000_000;

/// The share of starts that go to lower lanes while a higher one is
/// backlogged, by default.
pub const DEFAULT_LOWER_LANE_SHARE: f64 = 0.1;

/// Whether `share` is a valid lower-lane share: `0 < share <= 0.5` (a lower
/// lane must never starve, and never get more than the lane above it).
pub fn valid_lower_lane_share(share: f64) -> bool {
    share > 0.0 && share <= 0.5
}

/// Chooses the lane of each start (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct Scheduler {
    /// The lower lanes' share of one start, in parts of [`WHOLE`] (at least 1).
    share: u32,
    /// Per lane: the credit its lower lanes earned while it was served.
    credit: Vec<u32>,
}

impl Scheduler {
    /// A scheduler over `lanes` lanes (highest first).
    ///
    /// # Panics
    /// When `share` is not a [`valid_lower_lane_share`].
    pub(super) fn new(lanes: usize, share: f64) -> Self {
        assert!(
            valid_lower_lane_share(share),
            "the lower-lane share must be in (0, 0.5], got {share}"
        );
        // In range, so the product is within 0..=WHOLE/2: no truncation.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let share = ((share * f64::from(WHOLE)).round() as u32).max(1);
        Self {
            share,
            credit: vec![0; lanes.max(1)],
        }
    }

    /// The lane whose next queued command starts now, given which lanes have
    /// queued commands; `None` when none has.
    pub(super) fn next(&mut self, has_queued: impl Fn(usize) -> bool) -> Option<usize> {
        let lanes = self.credit.len();
        let mut from = 0;
        loop {
            let top = (from..lanes).find(|&lane| has_queued(lane))?;
            if !(top + 1..lanes).any(&has_queued) {
                return Some(top);
            }
            let credit = &mut self.credit[top];
            *credit += self.share;
            if *credit < WHOLE {
                return Some(top);
            }
            *credit -= WHOLE;
            // This start is the lower lanes': they choose among themselves.
            from = top + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `n` commands from lanes that never run dry; returns the starts
    /// per lane.
    fn starts(lanes: usize, share: f64, backlogged: &[usize], n: usize) -> Vec<usize> {
        let mut scheduler = Scheduler::new(lanes, share);
        let mut counts = vec![0; lanes];
        for _ in 0..n {
            let lane = scheduler
                .next(|l| backlogged.contains(&l))
                .expect("a lane has work");
            counts[lane] += 1;
        }
        counts
    }

    #[test]
    fn the_highest_lane_with_work_goes_first() {
        let mut scheduler = Scheduler::new(3, 0.1);
        assert_eq!(scheduler.next(|_| false), None);
        assert_eq!(scheduler.next(|l| l == 2), Some(2));
        assert_eq!(scheduler.next(|l| l == 1), Some(1));
        // Until the credit is earned, the highest lane wins.
        for _ in 0..9 {
            assert_eq!(scheduler.next(|_| true), Some(0));
        }
        // The tenth start is the lower lanes': the highest of them.
        assert_eq!(scheduler.next(|_| true), Some(1));
        assert_eq!(scheduler.next(|_| true), Some(0));
    }

    #[test]
    fn lower_lanes_get_exactly_their_share() {
        assert_eq!(starts(2, 0.1, &[0, 1], 1000), [900, 100]);
        assert_eq!(starts(2, 0.25, &[0, 1], 1000), [750, 250]);
        assert_eq!(starts(2, 0.5, &[0, 1], 1000), [500, 500]);
        assert_eq!(starts(2, 0.001, &[0, 1], 1000), [999, 1]);
        // Three lanes: the lower two share the tenth start the same way.
        assert_eq!(starts(3, 0.1, &[0, 1, 2], 10_000), [9000, 900, 100]);
        // A lane without work takes no share: lanes 0 and 2 as if alone.
        assert_eq!(starts(3, 0.1, &[0, 2], 1000), [900, 0, 100]);
    }

    #[test]
    fn no_lane_starves_and_a_single_lane_takes_every_start() {
        assert_eq!(starts(1, 0.1, &[0], 1000), [1000]);
        assert_eq!(starts(2, 0.1, &[1], 1000), [0, 1000]);
        // Every one of four backlogged lanes gets starts.
        assert_eq!(starts(4, 0.5, &[0, 1, 2, 3], 1000), [500, 250, 125, 125]);
        assert_eq!(starts(4, 0.1, &[0, 1, 2, 3], 10_000), [9000, 900, 90, 10]);
    }

    #[test]
    fn credit_is_earned_only_while_a_lower_lane_waits() {
        let mut scheduler = Scheduler::new(2, 0.1);
        // A thousand starts of the high lane alone earn the low lane nothing.
        for _ in 0..1000 {
            assert_eq!(scheduler.next(|l| l == 0), Some(0));
        }
        for _ in 0..9 {
            assert_eq!(scheduler.next(|_| true), Some(0));
        }
        assert_eq!(scheduler.next(|_| true), Some(1));
    }

    #[test]
    fn the_share_is_checked() {
        assert!(valid_lower_lane_share(0.1));
        assert!(valid_lower_lane_share(0.5));
        assert!(valid_lower_lane_share(1e-9));
        for bad in [0.0, -0.1, 0.51, 1.0, f64::NAN, f64::INFINITY] {
            assert!(!valid_lower_lane_share(bad), "{bad}");
        }
        assert!(std::panic::catch_unwind(|| Scheduler::new(2, 0.0)).is_err());
    }
}
