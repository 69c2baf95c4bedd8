//! Fail fast when nobody serves a route: a route may name the consumer group of
//! the service that reads its topic (`responder_group`). A background task asks
//! Kafka for each such group's members every `responder_check_interval`
//! (ListGroups/DescribeGroups through the admin API, never per request), and a
//! request to a route whose group has no active member is answered `503`
//! `no-responders` at once instead of waiting out the route's timeout.
//!
//! The check fails open: until Kafka has answered for a group, and whenever it
//! cannot be asked, requests go through as if the group had members (a broker
//! that cannot be asked fails the produce on its own).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer as _};
use tokio_util::sync::CancellationToken;

/// Members of a group not (or not yet) known.
const UNKNOWN: i64 = -1;

/// Active members per responder group, as last seen.
#[derive(Debug, Default)]
pub struct Responders {
    groups: BTreeMap<String, AtomicI64>,
}

impl Responders {
    /// Watches `groups` (the routes' `responder_group`s); none known yet.
    pub fn new<'a>(groups: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|g| (g.to_owned(), AtomicI64::new(UNKNOWN)))
                .collect(),
        }
    }

    /// Whether Kafka last reported that `group` has no active member.
    pub fn none_active(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|m| m.load(Ordering::Relaxed) == 0)
    }

    /// Each group with its active members (`-1`: not known), for `/metrics`.
    pub fn members(&self) -> impl Iterator<Item = (&str, i64)> {
        self.groups
            .iter()
            .map(|(g, m)| (g.as_str(), m.load(Ordering::Relaxed)))
    }

    /// Asks Kafka for every group's members every `interval` until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        producer: FutureProducer,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        if self.groups.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (this, producer) = (Arc::clone(&self), producer.clone());
            // librdkafka's group listing blocks: off the async workers.
            let checked = tokio::task::spawn_blocking(move || this.check(&producer, interval));
            if checked.await.is_err() {
                tracing::warn!("the responder check panicked");
            }
        }
    }

    /// One round: each group's active members, or unknown when Kafka cannot say.
    fn check(&self, producer: &FutureProducer, timeout: Duration) {
        // Bounded, so that a broker that does not answer cannot stall the round
        // for long; at least a second, a group listing's round trip.
        let timeout = timeout.max(Duration::from_secs(1));
        for (group, members) in &self.groups {
            let seen = match producer.client().fetch_group_list(Some(group), timeout) {
                Ok(list) => list
                    .groups()
                    .iter()
                    .find(|g| g.name() == group)
                    .map_or(0, |g| active_members(g.state(), g.members().len())),
                Err(e) => {
                    tracing::debug!(group = %group, error = %e, "could not list the responder group");
                    UNKNOWN
                }
            };
            let before = members.swap(seen, Ordering::Relaxed);
            if seen == 0 && before != 0 {
                tracing::warn!(group = %group, "responder group has no active member: its routes answer 503 no-responders");
            } else if before == 0 && seen > 0 {
                tracing::info!(group = %group, members = seen, "responder group has active members again");
            }
        }
    }
}

/// Active members of a group in `state` with `listed` members: a group that is
/// `Empty` or `Dead` has none, whatever the listing holds; a state Kafka did
/// not name (the listing failed for this group, e.g. not authorised to
/// describe it) is not known, so the check fails open.
fn active_members(state: &str, listed: usize) -> i64 {
    match state {
        "Empty" | "Dead" => 0,
        "Stable" | "PreparingRebalance" | "CompletingRebalance" | "Assigning" | "Reconciling" => {
            i64::try_from(listed).unwrap_or(i64::MAX)
        }
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_groups_and_unknown_states_let_requests_through() {
        let r = Responders::new(["echo"]);
        assert!(!r.none_active("echo"), "not asked yet: fail open");
        assert!(!r.none_active("other"), "not a responder group");
        r.groups["echo"].store(0, Ordering::Relaxed);
        assert!(r.none_active("echo"));
        r.groups["echo"].store(2, Ordering::Relaxed);
        assert!(!r.none_active("echo"));
        assert_eq!(r.members().collect::<Vec<_>>(), [("echo", 2)]);
    }

    #[test]
    fn empty_and_dead_groups_have_no_active_member() {
        assert_eq!(active_members("Stable", 2), 2);
        assert_eq!(active_members("PreparingRebalance", 1), 1);
        assert_eq!(active_members("Empty", 0), 0);
        assert_eq!(active_members("Dead", 1), 0);
        assert_eq!(
            active_members("", 0),
            UNKNOWN,
            "a failed listing fails open"
        );
    }
}
