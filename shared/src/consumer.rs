//! Leaving a consumer group at shutdown without hanging on a broker that is gone.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// How long a consumer may take to commit and leave its group at shutdown.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a consumer did not close cleanly.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The final commit failed.
    #[error("final offset commit failed: {0}")]
    Commit(#[from] KafkaError),
    /// Commit and leave took longer than [`CLOSE_TIMEOUT`] (broker unreachable).
    #[error(
        "could not commit and leave the group within {0:?}; uncommitted records will be delivered again"
    )]
    Timeout(Duration),
}

/// Commits the stored offsets and leaves the group, on a blocking thread and
/// bounded by [`CLOSE_TIMEOUT`]: librdkafka's commit and close block until the
/// group coordinator answers, which never happens while the broker is down.
///
/// # Errors
/// [`CloseError`] when the commit fails or does not finish in time.
pub async fn close<C, X>(consumer: C) -> Result<(), CloseError>
where
    C: Consumer<X> + Send + 'static,
    X: ConsumerContext + 'static,
{
    let closing = tokio::task::spawn_blocking(move || {
        let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(e),
        };
        consumer.unsubscribe();
        drop(consumer);
        committed
    });
    match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(_join)) => Err(CloseError::Timeout(CLOSE_TIMEOUT)),
        Err(_) => Err(CloseError::Timeout(CLOSE_TIMEOUT)),
    }
}
