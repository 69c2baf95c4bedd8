//! The commands being handled, by correlation id, each with the token that
//! cancels it ([`Request::cancelled`](crate::record::Request::cancelled)).
//!
//! A command delivered twice (a redelivery while the first copy still runs)
//! shares its token with the other copy: a cancel record stops both.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

/// The commands being handled.
#[derive(Debug, Default)]
pub(super) struct Running {
    by_id: HashMap<String, (CancellationToken, usize)>,
}

impl Running {
    /// Marks a command started; returns the token that cancels it.
    pub(super) fn start(&mut self, correlation_id: &str) -> CancellationToken {
        let (token, copies) = self
            .by_id
            .entry(correlation_id.to_owned())
            .or_insert_with(|| (CancellationToken::new(), 0));
        *copies += 1;
        token.clone()
    }

    /// Marks a command finished.
    pub(super) fn finish(&mut self, correlation_id: &str) {
        if let Some((_, copies)) = self.by_id.get_mut(correlation_id) {
            *copies -= 1;
            if *copies == 0 {
                self.by_id.remove(correlation_id);
            }
        }
    }

    /// Cancels the running command `correlation_id`; whether one runs.
    pub(super) fn cancel(&self, correlation_id: &str) -> bool {
        self.by_id
            .get(correlation_id)
            .map(|(token, _)| token.cancel())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_every_running_copy_and_nothing_after_they_finished() {
        let mut running = Running::default();
        let first = running.start("a");
        let second = running.start("a");
        let other = running.start("b");
        assert!(running.cancel("a"));
        assert!(first.is_cancelled() && second.is_cancelled());
        assert!(!other.is_cancelled());
        running.finish("a");
        running.finish("a");
        assert!(!running.cancel("a"), "both copies finished");
        assert!(
            !running.start("a").is_cancelled(),
            "a new delivery, a new token"
        );
        assert!(!running.cancel("nobody"));
    }
}
