//! The parts of a streamed reply, sent by a handler before its final reply.
//!
//! A handler that answers in parts sends each with [`Parts::send`] (they are
//! numbered 0, 1, 2, … as `reply-part`) and returns the last one as its reply:
//! the `Responder` sends it as the next part with `reply-last: true`. A
//! handler that sends no part answers with a single reply, as always.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::producer::FutureProducer;

use super::handling::ReplyAddress;
use crate::record::{MAX_PART, Reply};

/// Where a handler sends the parts of its streamed reply
/// ([`Request::parts`](crate::record::Request::parts)).
#[derive(Clone, Default)]
pub struct Parts {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    producer: FutureProducer,
    address: Arc<ReplyAddress>,
    next: AtomicU32,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

/// Why a part was not sent.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The request was not handed out by a `Responder`.
    #[error("this request has no reply stream (not served by a Responder)")]
    Detached,
    /// More parts than a streamed reply may have.
    #[error("a streamed reply has at most {} parts", MAX_PART + 1)]
    TooMany,
    /// The broker did not take the part.
    #[error("producing the part: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Parts {
    /// The parts of the reply to `address`, produced with `producer`.
    pub(super) fn new(producer: FutureProducer, address: Arc<ReplyAddress>) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                producer,
                address,
                next: AtomicU32::new(0),
            })),
        }
    }

    /// Sends `reply` as the next part, once the broker acknowledged it.
    ///
    /// # Errors
    /// [`PartError`]; the part is not sent then, and its number is not used.
    pub async fn send(&self, reply: Reply) -> Result<(), PartError> {
        let inner = self.inner.as_ref().ok_or(PartError::Detached)?;
        let number = inner.next.load(Ordering::SeqCst);
        if number >= MAX_PART {
            // The last number is kept for the handler's final reply.
            return Err(PartError::TooMany);
        }
        let part = reply.as_part(number, false);
        let record = inner.address.record(&part, inner.address.headers(&part));
        inner
            .producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)?;
        inner.next.store(number + 1, Ordering::SeqCst);
        Ok(())
    }

    /// How many parts were sent.
    pub fn sent(&self) -> u32 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.next.load(Ordering::SeqCst))
    }
}
