//! Pacing of retries: exponential backoff with full jitter that gives way to
//! shutdown.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Ceiling of the first pause between retries.
const FIRST: Duration = Duration::from_millis(50);
/// Ceiling of every pause between retries.
const MAX: Duration = Duration::from_secs(2);

/// Exponential backoff with full jitter: the n-th pause is drawn uniformly
/// between zero and a ceiling that starts at 50 ms and doubles up to 2 s.
///
/// Why jitter: a Redis restart or a broker failover breaks every client's
/// connection at the same instant, and clients that then retry on one fixed
/// schedule arrive together at each step, a thundering herd that can knock
/// the recovering server down again. Drawing each pause at random spreads
/// them out. Full jitter (Marc Brooker, "Exponential Backoff And Jitter",
/// AWS Architecture Blog, 2015) is the scheme that post found to spread
/// retries widest for the least total work; the ceiling still grows, so a
/// short pause cannot turn into a busy loop. The draws come from `rand`'s
/// thread-local generator (backon's `with_jitter` only adds up to one more
/// delay on top, which keeps clients bunched within a factor of two).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Ceiling of the pause after `next`.
    ceiling: Duration,
    /// The pause the next [`Backoff::wait`] takes, drawn in advance so that it
    /// can be logged before waiting.
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            ceiling: FIRST,
            next: draw(FIRST),
        }
    }
}

/// A pause drawn uniformly from `0..=ceiling`.
fn draw(ceiling: Duration) -> Duration {
    rand::rng().random_range(Duration::ZERO..=ceiling)
}

impl Backoff {
    /// The pause the next [`Backoff::wait`] takes.
    pub fn next(&self) -> Duration {
        self.next
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleeps for the next pause and raises the ceiling of the one after it;
    /// `false` when `shutdown` came first (stop retrying).
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next;
        self.ceiling = (self.ceiling * 2).min(MAX);
        self.next = draw(self.ceiling);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next `n` pauses of `b`, each waited for (time is paused).
    async fn pauses(b: &mut Backoff, n: usize) -> Vec<Duration> {
        let token = CancellationToken::new();
        let mut out = Vec::new();
        for _ in 0..n {
            let (pause, started) = (b.next(), tokio::time::Instant::now());
            assert!(b.wait(&token).await);
            assert!(started.elapsed() >= pause, "waits the pause it announced");
            out.push(pause);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_stay_under_a_doubling_ceiling_and_yield_to_shutdown() {
        let mut b = Backoff::default();
        let seen = pauses(&mut b, 12).await;
        for (i, pause) in seen.iter().enumerate() {
            let ceiling = (FIRST * 2u32.pow(i as u32)).min(MAX);
            assert!(*pause <= ceiling, "pause {i}: {pause:?} over {ceiling:?}");
        }
        assert_eq!(b.ceiling, MAX);
        b.reset();
        assert_eq!(b.ceiling, FIRST);
        assert!(b.next() <= FIRST);
        let token = CancellationToken::new();
        token.cancel();
        assert!(!b.wait(&token).await);
    }

    #[tokio::test(start_paused = true)]
    async fn two_clients_do_not_retry_in_lock_step() {
        let (mut a, mut b) = (Backoff::default(), Backoff::default());
        assert_ne!(pauses(&mut a, 8).await, pauses(&mut b, 8).await);
    }
}
