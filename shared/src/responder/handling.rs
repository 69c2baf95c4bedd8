//! How a command is handed to its handler and how the handler's outcome
//! becomes the reply record: one place for the [`Responder`](super::Responder)
//! and the [`TransactionalResponder`](super::TransactionalResponder), so that
//! both answer alike (trace kept, parts numbered, a failure answered `500`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::record::{Reply, Request, spring};
use crate::trace::TraceContext;

use super::{Cancelled, HandlerError, Parts, Redeliver, ResponderStats};

/// One command on its way through a handler: where its reply goes, the span
/// of this hop, and the parts it may stream.
pub(super) struct Handling {
    address: Arc<ReplyAddress>,
    pub(super) span: tracing::Span,
    parts: Parts,
}

/// Where a command's reply records go and what they carry back: the one
/// builder of the final reply's record and of every part's, so that a part
/// of a Spring command goes where its reply goes, as its reply does.
pub(super) struct ReplyAddress {
    id: String,
    reply_to: String,
    /// The partition of `reply_to` (Spring's `kafka_replyPartition`).
    reply_partition: Option<i32>,
    /// Spring's `kafka_correlationId`, echoed in the reply.
    spring_correlation_id: Option<Bytes>,
    /// This hop's trace context.
    trace: TraceContext,
}

impl ReplyAddress {
    /// The headers of `reply`'s record: the record contract's, this hop's
    /// trace context, and the command's `kafka_correlationId` when it
    /// carried one.
    pub(super) fn headers(&self, reply: &Reply) -> OwnedHeaders {
        let headers = self.trace.add_to(reply.record_headers(&self.id));
        match &self.spring_correlation_id {
            Some(id) => spring::with_correlation_id(headers, id),
            None => headers,
        }
    }

    /// The record of `reply`: to the command's `reply-to` (its partition,
    /// when the command named one), keyed by its correlation id.
    pub(super) fn record<'a>(
        &'a self,
        reply: &'a Reply,
        headers: OwnedHeaders,
    ) -> FutureRecord<'a, str, [u8]> {
        let record = FutureRecord::to(&self.reply_to)
            .key(self.id.as_str())
            .payload(&reply.body[..])
            .headers(headers);
        match self.reply_partition {
            Some(partition) => record.partition(partition),
            None => record,
        }
    }
}

/// What a handler's result asks for.
pub(super) enum Outcome<T> {
    /// Answer with this (a handler failure is answered `500`).
    Answer(T),
    /// Nothing to reply: the handler stopped on the command's cancellation.
    Interrupted,
    /// Leave the command unanswered and uncommitted, for redelivery.
    Redeliver,
}

impl Handling {
    /// Prepares `request` for its handler: this hop joins the command's trace
    /// (the handler sees, and passes on, this hop's context; the reply carries
    /// it back), and its parts are produced with `producer`.
    pub(super) fn start(request: &mut Request, producer: &FutureProducer) -> Self {
        let id = request.correlation_id.clone();
        let span =
            tracing::info_span!("responder.handle", otel.kind = "consumer", correlation_id = %id);
        let address = Arc::new(ReplyAddress {
            id,
            reply_to: request.reply_to.clone(),
            reply_partition: request.reply_partition,
            spring_correlation_id: request.spring_correlation_id.clone(),
            trace: request.continue_trace(&span),
        });
        let parts = Parts::new(producer.clone(), Arc::clone(&address));
        request.parts = parts.clone();
        Self {
            address,
            span,
            parts,
        }
    }

    /// What the handler's `result` asks for, counted in `stats`: a failure
    /// other than [`Redeliver`] and [`Cancelled`] is answered with a `500`
    /// problem (its message is logged, not sent).
    pub(super) fn outcome<T: From<Reply>>(
        &self,
        result: Result<T, HandlerError>,
        stats: &ResponderStats,
    ) -> Outcome<T> {
        let id = self.id();
        match result {
            Ok(answer) => Outcome::Answer(answer),
            Err(e) if e.downcast_ref::<Redeliver>().is_some() => {
                tracing::info!(correlation_id = %id, reason = %e, "command left unanswered for redelivery");
                Outcome::Redeliver
            }
            Err(e) if e.downcast_ref::<Cancelled>().is_some() => {
                stats.interrupted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(correlation_id = %id, "handler stopped on the command's cancellation; nothing replied");
                Outcome::Interrupted
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(correlation_id = %id, error = %e, "handler failed; replying 500");
                Outcome::Answer(T::from(Reply::problem(
                    500,
                    "Internal Server Error",
                    "the service failed to handle the request",
                )))
            }
        }
    }

    /// The final reply: after parts, the reply (or the failure's problem) is
    /// the last part.
    pub(super) fn last_part(&self, reply: Reply) -> Reply {
        match self.parts.sent() {
            0 => reply,
            sent => reply.as_part(sent, true),
        }
    }

    /// The command's correlation id.
    pub(super) fn id(&self) -> &str {
        &self.address.id
    }

    /// The headers of `reply`'s record (give it [`Handling::last_part`]);
    /// see [`ReplyAddress::headers`].
    pub(super) fn headers(&self, reply: &Reply) -> OwnedHeaders {
        self.address.headers(reply)
    }

    /// `headers` with this hop's trace context added (for the records a
    /// handler produces besides its reply).
    pub(super) fn traced(&self, headers: OwnedHeaders) -> OwnedHeaders {
        self.address.trace.add_to(headers)
    }

    /// The reply record; see [`ReplyAddress::record`].
    pub(super) fn record<'a>(
        &'a self,
        reply: &'a Reply,
        headers: OwnedHeaders,
    ) -> FutureRecord<'a, str, [u8]> {
        self.address.record(reply, headers)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::message::Headers as _;

    use super::*;

    #[test]
    fn a_spring_command_is_answered_to_its_partition_with_its_correlation_id_back() {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("a producer needs no broker to be created");
        let id: Vec<u8> = (0xf0..=0xff).collect();
        let mut request = Request::parse(
            None,
            [
                ("kafka_replyTopic", Some(&b"client.replies"[..])),
                ("kafka_replyPartition", Some(&[0, 0, 0, 2])),
                ("kafka_correlationId", Some(&id[..])),
            ],
            None,
        )
        .expect("a Spring command");
        let handling = Handling::start(&mut request, &producer);
        let reply = Reply::with_body(200, "text/plain", "hi");
        let record = handling.record(&reply, handling.headers(&reply));
        assert_eq!(record.topic, "client.replies");
        assert_eq!(record.partition, Some(2));
        let headers = record.headers.expect("reply headers");
        let value = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
        assert_eq!(value("kafka_correlationId"), Some(&id[..]));
        assert_eq!(
            value("correlation-id"),
            Some(&b"f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff"[..])
        );

        // A command of Replyway's own: no Spring header, the key decides the partition.
        let mut request = Request::new("replies", "");
        let handling = Handling::start(&mut request, &producer);
        let record = handling.record(&reply, handling.headers(&reply));
        assert_eq!(record.partition, None);
        let headers = record.headers.expect("reply headers");
        assert!(headers.iter().all(|h| h.key != "kafka_correlationId"));
    }
}
