//! Pacing of retries: exponential backoff that gives way to shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First pause between retries.
const FIRST: Duration = Duration::from_millis(50);
/// Longest pause between retries.
const MAX: Duration = Duration::from_secs(2);

/// Exponential backoff from 50 ms, doubling up to 2 s.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// The pause the next [`Backoff::wait`] takes.
    pub fn next(&self) -> Duration {
        self.next
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// Sleeps for the next pause and doubles it; `false` when `shutdown` came
    /// first (stop retrying).
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_bound_and_yields_to_shutdown() {
        let token = CancellationToken::new();
        let mut b = Backoff::default();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pauses.push(b.next());
            assert!(b.wait(&token).await);
        }
        assert_eq!(pauses[0], Duration::from_millis(50));
        assert_eq!(pauses[1], Duration::from_millis(100));
        assert_eq!(*pauses.last().unwrap(), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.next(), FIRST);
        token.cancel();
        assert!(!b.wait(&token).await);
    }
}
