//! Why a [`TransactionalResponder`](super::TransactionalResponder) stopped,
//! and how a failed transaction call is told apart: retried as it is, the
//! transaction aborted and the batch retried, or the end of this instance.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::consumer::CloseError;

/// Why a [`TransactionalResponder`](super::TransactionalResponder) stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// Another instance started with the same `transactional.id` (a restart
    /// of this one, or a second copy of it): this one is a zombie. It never
    /// commits again; what it had open is aborted by the broker.
    #[error(
        "fenced: another instance took over transactional id {transactional_id:?} ({reason}); this instance must not commit again"
    )]
    Fenced {
        /// The transactional id both instances use.
        transactional_id: String,
        /// What librdkafka said.
        reason: String,
    },
    /// The transactional producer failed in a way it cannot recover from
    /// (librdkafka's fatal error, other than fencing).
    #[error("the transactional producer failed fatally: {0}")]
    Fatal(String),
    /// A Kafka call that the Responder cannot go on without failed.
    #[error("{during}: {source}")]
    Kafka {
        /// What was being done.
        during: &'static str,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// Leaving the consumer group at the end failed.
    #[error(transparent)]
    Close(#[from] CloseError),
}

impl TransactionError {
    /// A failed call of `during`.
    pub(super) fn kafka(during: &'static str, source: KafkaError) -> Self {
        Self::Kafka { during, source }
    }
}

/// What to do after a transaction call failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The call may be made again as it is (librdkafka: retriable).
    Retry(KafkaError),
    /// Abort the transaction, rewind, and try the batch again.
    Abort(KafkaError),
    /// Stop: this instance cannot go on.
    Stop(TransactionError),
    /// Not every command was answered (a handler left its command for
    /// redelivery, or shutdown cut the handlers short): abort, rewind.
    Unanswered(String),
}

impl Failure {
    /// The error to stop with, when `during` failed in a way that cannot be
    /// tried again.
    pub(super) fn stop(self, during: &'static str) -> TransactionError {
        match self {
            Self::Stop(e) => e,
            Self::Retry(e) | Self::Abort(e) => TransactionError::kafka(during, e),
            Self::Unanswered(reason) => TransactionError::Fatal(format!("{during}: {reason}")),
        }
    }
}

/// Whether `code` says that another producer with the same transactional id
/// took over.
pub(super) fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// Sorts `error` of a transaction call (or a produce in a transaction).
/// `fatal` is the producer's fatal error, if it has one: fatal wins over
/// anything the call itself says.
pub(super) fn classify(
    error: KafkaError,
    fatal: Option<(RDKafkaErrorCode, String)>,
    transactional_id: &str,
) -> Failure {
    let stop = |code: RDKafkaErrorCode, reason: String| {
        Failure::Stop(if is_fenced(code) {
            TransactionError::Fenced {
                transactional_id: transactional_id.to_owned(),
                reason,
            }
        } else {
            TransactionError::Fatal(reason)
        })
    };
    if let Some((code, reason)) = fatal {
        return stop(code, reason);
    }
    match &error {
        KafkaError::Transaction(e) if e.is_fatal() => stop(e.code(), e.string()),
        KafkaError::Transaction(e) if e.txn_requires_abort() => Failure::Abort(error),
        KafkaError::Transaction(e) if e.is_retriable() => Failure::Retry(error),
        _ => match error.rdkafka_error_code() {
            Some(code) if is_fenced(code) => stop(code, error.to_string()),
            _ => Failure::Abort(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_producer_stops_with_fenced_and_other_errors_abort() {
        let fenced = classify(
            KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
            Some((RDKafkaErrorCode::Fenced, "producer fenced".into())),
            "svc-a",
        );
        assert!(
            matches!(&fenced, Failure::Stop(TransactionError::Fenced { transactional_id, .. }) if transactional_id == "svc-a"),
            "{fenced:?}"
        );
        let delivery = classify(
            KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
            None,
            "svc-a",
        );
        assert!(
            matches!(delivery, Failure::Stop(TransactionError::Fenced { .. })),
            "{delivery:?}"
        );
        let fatal = classify(
            KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
            Some((RDKafkaErrorCode::TopicAuthorizationFailed, "denied".into())),
            "svc-a",
        );
        assert!(
            matches!(fatal, Failure::Stop(TransactionError::Fatal(_))),
            "{fatal:?}"
        );
        let timeout = classify(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            None,
            "svc-a",
        );
        assert!(matches!(timeout, Failure::Abort(_)), "{timeout:?}");
    }
}
