//! The record contract: what a request record and a reply record carry on Kafka.
//!
//! This module is the single place where header names live. Backend services in
//! other languages implement the same contract from docs/records.md.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

mod reply;
pub mod spring;
pub use reply::{MAX_PART, Reply, ReplyError, parse_reply, reply_from_message};

/// Header names of the record contract.
pub mod header {
    /// Opaque id of one request, echoed by its reply.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// Topic the reply must be produced to.
    pub const REPLY_TO: &str = "reply-to";
    /// Unix milliseconds after which nobody waits for the reply.
    pub const DEADLINE: &str = "deadline";
    /// Media type of the record's value.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Decimal HTTP status of a reply (default 200).
    pub const STATUS: &str = "status";
    /// HTTP method of the originating request.
    pub const HTTP_METHOD: &str = "http-method";
    /// HTTP path of the originating request.
    pub const HTTP_PATH: &str = "http-path";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Id of the client (principal) on whose behalf the command was sent.
    pub const CLIENT_ID: &str = "client-id";
    /// Prefix of a path parameter's header (`param-<name>`).
    pub const PARAM_PREFIX: &str = "param-";
    /// Prefix of a forwarded request header or a reply header (`header-<name>`).
    pub const HEADER_PREFIX: &str = "header-";
    /// Spring for Apache Kafka: the topic a `@SendTo` listener replies to.
    pub const SPRING_REPLY_TOPIC: &str = "kafka_replyTopic";
    /// Spring for Apache Kafka: the correlation id (raw bytes) that a `@SendTo`
    /// listener copies to its reply, and a `ReplyingKafkaTemplate` matches its
    /// reply by.
    pub const SPRING_CORRELATION_ID: &str = "kafka_correlationId";
    /// Spring for Apache Kafka: the partition of `kafka_replyTopic` a reply
    /// goes to (4 bytes, big-endian), when the requester reads only that one.
    pub const SPRING_REPLY_PARTITION: &str = "kafka_replyPartition";
    /// A streamed reply's part number: 0, 1, 2, …
    pub const REPLY_PART: &str = "reply-part";
    /// `true` on the last part of a streamed reply.
    pub const REPLY_LAST: &str = "reply-last";
    /// `true` on a cancel record: not a command, but the cancellation of the
    /// command with the same `correlation-id` (same topic and key, so the same
    /// partition, after the command).
    pub const CANCEL: &str = "cancel";
    /// Spring messaging's content type header (a JSON string when mapped by
    /// Spring's header mapper).
    pub const SPRING_CONTENT_TYPE: &str = "contentType";
}

/// Longest correlation id accepted anywhere (bytes).
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// Whether `id` is a usable correlation id: 1 to 128 characters from
/// `A-Z a-z 0-9 . _ : -`. The gateway issues UUIDs; the bound keeps foreign ids
/// from breaking Redis key names (no `{`, `}` or whitespace) or growing without limit.
pub fn is_valid_correlation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CORRELATION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh correlation id: a random (v4) UUID, 122 bits of randomness.
pub fn new_correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Current time as unix milliseconds.
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A command as a backend service receives it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The id the reply must carry.
    pub correlation_id: String,
    /// The topic the reply must go to.
    pub reply_to: String,
    /// Unix milliseconds after which nobody waits for the reply.
    pub deadline: Option<u64>,
    /// Media type of `body`.
    pub content_type: Option<String>,
    /// HTTP method of the originating request, if it came through the gateway.
    pub method: Option<String>,
    /// HTTP path of the originating request.
    pub path: Option<String>,
    /// Path parameters by name.
    pub params: BTreeMap<String, String>,
    /// Forwarded request headers by lower-case name.
    pub headers: BTreeMap<String, String>,
    /// W3C `traceparent` of the originating request.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the originating request.
    pub tracestate: Option<String>,
    /// Id of the client on whose behalf the command was sent, if known.
    pub client_id: Option<String>,
    /// The record's key.
    pub key: Option<Bytes>,
    /// The body.
    pub body: Bytes,
    /// Spring for Apache Kafka's `kafka_correlationId`, as the command carried
    /// it (a `ReplyingKafkaTemplate`'s 16 raw bytes, or a string): the reply
    /// carries it back byte for byte. Not written by [`Request::record_headers`].
    pub spring_correlation_id: Option<Bytes>,
    /// The partition of `reply_to` the reply must go to: Spring's
    /// `kafka_replyPartition`, read when the reply topic is Spring's
    /// `kafka_replyTopic`; `None`: the reply's key decides.
    pub reply_partition: Option<i32>,
    /// Cancelled when the command is cancelled while it is handled (its
    /// client went away, or deleted it): a handler with work worth stopping
    /// watches it and returns [`Cancelled`](crate::responder::Cancelled).
    /// Not part of the record.
    pub cancelled: tokio_util::sync::CancellationToken,
    /// Where the handler sends the parts of a streamed reply before
    /// returning the last one ([`Parts::send`](crate::responder::Parts::send)).
    /// Not part of the record.
    pub parts: crate::responder::Parts,
}

/// Why a request record cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A header the contract requires is missing.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A header is not UTF-8 or not of its type.
    #[error("header {0} is malformed")]
    Malformed(String),
}

impl Request {
    /// A request record for `reply_to`, with a fresh correlation id.
    pub fn new(reply_to: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            correlation_id: new_correlation_id(),
            reply_to: reply_to.into(),
            body: body.into(),
            ..Self::default()
        }
    }

    /// Whether the deadline has passed at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.deadline.is_some_and(|d| unix_millis(now) > d)
    }

    /// Sets the deadline `timeout` from now.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.deadline = Some(unix_millis(SystemTime::now() + timeout));
    }

    /// Makes `span` the next hop of the trace this request carries (or of a new
    /// one) and carries that hop's context from now on; returns it.
    pub fn continue_trace(&mut self, span: &tracing::Span) -> crate::trace::TraceContext {
        let parent = crate::trace::TraceContext::extract(&crate::trace::TraceFields {
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        });
        let trace = crate::trace::continue_trace(span, parent.as_ref());
        self.traceparent = Some(trace.traceparent());
        self.tracestate.clone_from(&trace.state);
        trace
    }

    /// The Kafka headers of this request's record.
    pub fn record_headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(8 + self.params.len() + self.headers.len())
            .insert(Header {
                key: header::CORRELATION_ID,
                value: Some(&self.correlation_id),
            })
            .insert(Header {
                key: header::REPLY_TO,
                value: Some(&self.reply_to),
            });
        if let Some(deadline) = self.deadline {
            h = h.insert(Header {
                key: header::DEADLINE,
                value: Some(&deadline.to_string()),
            });
        }
        let optional = [
            (header::CONTENT_TYPE, &self.content_type),
            (header::HTTP_METHOD, &self.method),
            (header::HTTP_PATH, &self.path),
            (header::TRACEPARENT, &self.traceparent),
            (header::TRACESTATE, &self.tracestate),
            (header::CLIENT_ID, &self.client_id),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                h = h.insert(Header {
                    key,
                    value: Some(value),
                });
            }
        }
        for (prefix, map) in [
            (header::PARAM_PREFIX, &self.params),
            (header::HEADER_PREFIX, &self.headers),
        ] {
            for (name, value) in map {
                let key = format!("{prefix}{name}");
                h = h.insert(Header {
                    key: &key,
                    value: Some(value),
                });
            }
        }
        h
    }

    /// Adds Spring for Apache Kafka's reply headers to `headers`:
    /// `kafka_replyTopic` (the reply topic) and `kafka_correlationId` (the
    /// correlation id's bytes), which a `@KafkaListener` with `@SendTo` uses to
    /// address its reply and copies into it.
    pub fn spring_headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        headers
            .insert(Header {
                key: header::SPRING_REPLY_TOPIC,
                value: Some(self.reply_to.as_bytes()),
            })
            .insert(Header {
                key: header::SPRING_CORRELATION_ID,
                value: Some(self.correlation_id.as_bytes()),
            })
    }

    /// Parses a request record from its parts.
    ///
    /// A command without `correlation-id` or `reply-to` may carry Spring for
    /// Apache Kafka's headers instead (a `ReplyingKafkaTemplate`'s):
    /// `kafka_correlationId` (its text form becomes the correlation id, see
    /// [`Request::spring_correlation_id`]), `kafka_replyTopic` and
    /// `kafka_replyPartition`. Replyway's headers win when both are there.
    ///
    /// # Errors
    /// [`RequestError`] when neither `correlation-id` nor `kafka_correlationId`,
    /// or neither `reply-to` nor `kafka_replyTopic`, is there, or a header is
    /// malformed.
    pub fn parse<'a>(
        key: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        value: Option<&[u8]>,
    ) -> Result<Self, RequestError> {
        let mut request = Self::default();
        let text = |name: &str, v: &[u8]| {
            std::str::from_utf8(v)
                .map(str::to_owned)
                .map_err(|_| RequestError::Malformed(name.to_owned()))
        };
        let (mut spring_reply_topic, mut spring_reply_partition) = (None, None);
        for (name, value) in headers {
            let Some(value) = value else { continue };
            match name {
                header::CORRELATION_ID => request.correlation_id = text(name, value)?,
                header::SPRING_CORRELATION_ID => {
                    request.spring_correlation_id = Some(Bytes::copy_from_slice(value));
                }
                header::SPRING_REPLY_TOPIC => spring_reply_topic = Some(value),
                header::SPRING_REPLY_PARTITION => spring_reply_partition = Some(value),
                header::REPLY_TO => request.reply_to = text(name, value)?,
                header::DEADLINE => {
                    let d = text(name, value)?;
                    request.deadline = Some(
                        d.trim()
                            .parse()
                            .map_err(|_| RequestError::Malformed(name.to_owned()))?,
                    );
                }
                header::CONTENT_TYPE => request.content_type = Some(text(name, value)?),
                header::HTTP_METHOD => request.method = Some(text(name, value)?),
                header::HTTP_PATH => request.path = Some(text(name, value)?),
                header::TRACEPARENT => request.traceparent = Some(text(name, value)?),
                header::TRACESTATE => request.tracestate = Some(text(name, value)?),
                header::CLIENT_ID => request.client_id = Some(text(name, value)?),
                _ => {
                    if let Some(p) = name.strip_prefix(header::PARAM_PREFIX) {
                        request.params.insert(p.to_owned(), text(name, value)?);
                    } else if let Some(h) = name.strip_prefix(header::HEADER_PREFIX) {
                        request.headers.insert(h.to_owned(), text(name, value)?);
                    }
                }
            }
        }
        if request.correlation_id.is_empty()
            && let Some(spring) = &request.spring_correlation_id
        {
            request.correlation_id = spring::correlation_text(spring);
        }
        if request.correlation_id.is_empty() {
            return Err(RequestError::Missing(header::CORRELATION_ID));
        }
        if request.reply_to.is_empty()
            && let Some(topic) = spring_reply_topic
        {
            request.reply_to = text(header::SPRING_REPLY_TOPIC, topic)?;
            request.reply_partition = spring_reply_partition
                .map(spring::reply_partition)
                .transpose()?;
        }
        if request.reply_to.is_empty() {
            return Err(RequestError::Missing(header::REPLY_TO));
        }
        request.key = key.map(Bytes::copy_from_slice);
        request.body = value.map(Bytes::copy_from_slice).unwrap_or_default();
        Ok(request)
    }

    /// Parses a request from a Kafka message (see [`Request::parse`]).
    ///
    /// # Errors
    /// As [`Request::parse`].
    pub fn from_message<M: Message>(message: &M) -> Result<Self, RequestError> {
        Self::parse(message.key(), header_pairs(message), message.payload())
    }
}

/// A Kafka message's headers as `(name, value)` pairs, the form every parser
/// of the record contract reads.
pub fn header_pairs<M: Message>(message: &M) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    message
        .headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|h| (h.key, h.value))
}

/// The headers of the cancel record of command `correlation_id`: produced to
/// the command's topic with the command's key, it tells the service that
/// nobody reads the reply any more.
pub fn cancel_headers(correlation_id: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: header::CORRELATION_ID,
            value: Some(correlation_id),
        })
        .insert(Header {
            key: header::CANCEL,
            value: Some("true"),
        })
}

/// The correlation id a cancel record cancels; `None` for any other record
/// (`cancel` absent or not `true`, or no correlation id).
pub fn cancelled_id<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Option<String> {
    let (mut cancel, mut id) = (false, None);
    for (name, value) in headers {
        match (name, value) {
            (header::CANCEL, Some(v)) => cancel = v.eq_ignore_ascii_case(b"true"),
            (header::CORRELATION_ID, Some(v)) => id = std::str::from_utf8(v).ok(),
            _ => {}
        }
    }
    id.filter(|id| cancel && !id.is_empty()).map(str::to_owned)
}

/// [`cancelled_id`] of a Kafka message.
pub fn cancelled_id_of<M: Message>(message: &M) -> Option<String> {
    cancelled_id(header_pairs(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_record_names_its_command() {
        assert_eq!(
            cancelled_id(h(&[("correlation-id", "abc"), ("cancel", "true")])).as_deref(),
            Some("abc")
        );
        assert_eq!(
            cancelled_id(h(&[("correlation-id", "abc"), ("cancel", "false")])),
            None
        );
        assert_eq!(
            cancelled_id(h(&[("correlation-id", "abc"), ("reply-to", "r")])),
            None
        );
        assert_eq!(cancelled_id(h(&[("cancel", "true")])), None);
    }

    /// Header pairs as a record's parser reads them.
    pub(in crate::record) fn h<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> Vec<(&'a str, Option<&'a [u8]>)> {
        pairs
            .iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .collect()
    }

    #[test]
    fn correlation_ids_are_bounded() {
        assert!(is_valid_correlation_id(&new_correlation_id()));
        assert!(is_valid_correlation_id(&"a".repeat(128)));
        assert!(!is_valid_correlation_id(&"a".repeat(129)));
        assert!(!is_valid_correlation_id("a b"));
        assert!(!is_valid_correlation_id(""));
    }

    #[test]
    fn request_round_trips_through_headers() {
        let mut request = Request::new("replies", "body");
        request.deadline = Some(42);
        request.method = Some("POST".into());
        request.path = Some("/orders/7".into());
        request.params.insert("id".into(), "7".into());
        request.headers.insert("x-request-id".into(), "r1".into());
        request.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        request.tracestate = Some("vendor=1".into());
        request.client_id = Some("alice".into());
        let headers = request.record_headers();
        let pairs: Vec<_> = headers.iter().map(|h| (h.key, h.value)).collect();
        let parsed = Request::parse(Some(b"k"), pairs, Some(b"body")).unwrap();
        assert_eq!(parsed.correlation_id, request.correlation_id);
        assert_eq!(parsed.reply_to, "replies");
        assert_eq!(parsed.deadline, Some(42));
        assert_eq!(parsed.params["id"], "7");
        assert_eq!(parsed.headers["x-request-id"], "r1");
        assert_eq!(parsed.traceparent, request.traceparent);
        assert_eq!(parsed.tracestate.as_deref(), Some("vendor=1"));
        assert_eq!(parsed.client_id.as_deref(), Some("alice"));
        assert_eq!(&parsed.body[..], b"body");
        assert!(parsed.is_expired(SystemTime::now()));
    }

    #[test]
    fn trace_headers_are_the_propagators() {
        use opentelemetry::propagation::TextMapPropagator;
        let fields: Vec<_> = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .fields()
            .map(str::to_owned)
            .collect();
        assert_eq!(fields, [header::TRACEPARENT, header::TRACESTATE]);
    }

    #[test]
    fn a_request_continues_its_trace_or_starts_one() {
        let mut request = Request::new("replies", "");
        request.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        request.tracestate = Some("vendor=1".into());
        let hop = request.continue_trace(&tracing::Span::none());
        assert_eq!(hop.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(request.traceparent, Some(hop.traceparent()));
        assert_ne!(
            request.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(request.tracestate.as_deref(), Some("vendor=1"));
        // A malformed traceparent is ignored: a new trace starts.
        request.traceparent = Some("00-not-a-trace-01".into());
        let root = request.continue_trace(&tracing::Span::none());
        assert_ne!(root.trace_id, hop.trace_id);
        assert_eq!(request.traceparent, Some(root.traceparent()));
        assert_eq!(request.tracestate, None);
    }

    #[test]
    fn a_replying_kafka_template_command_is_addressed_by_springs_headers() {
        // Spring's default correlation id: 16 raw bytes, not UTF-8.
        let id: Vec<u8> = (0xf0..=0xff).collect();
        let headers = [
            ("kafka_replyTopic", Some(&b"client.replies"[..])),
            ("kafka_replyPartition", Some(&[0, 0, 0, 1][..])),
            ("kafka_correlationId", Some(&id[..])),
        ];
        let request = Request::parse(None, headers, Some(b"{}")).unwrap();
        assert_eq!(request.reply_to, "client.replies");
        assert_eq!(request.reply_partition, Some(1));
        assert_eq!(request.spring_correlation_id.as_deref(), Some(&id[..]));
        assert_eq!(
            request.correlation_id,
            "f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff"
        );
        // A string id (setBinaryCorrelation(false)) is its own text.
        let string = "0c4bd6c1-3d5e-4a8f-9b21-7e6f5a4b3c2d";
        let request = Request::parse(
            None,
            h(&[("kafka_replyTopic", "r"), ("kafka_correlationId", string)]),
            None,
        )
        .unwrap();
        assert_eq!(request.correlation_id, string);
        assert_eq!(
            request.spring_correlation_id.as_deref(),
            Some(string.as_bytes())
        );
        assert_eq!(request.reply_partition, None);
    }

    #[test]
    fn replyways_headers_win_over_springs_and_springs_id_is_kept() {
        // A gateway route with spring_headers sends both.
        let request = Request::parse(
            None,
            [
                ("correlation-id", Some(&b"ours"[..])),
                ("reply-to", Some(b"replies")),
                ("kafka_replyTopic", Some(b"other")),
                ("kafka_replyPartition", Some(&[0, 0, 0, 7])),
                ("kafka_correlationId", Some(b"ours")),
            ],
            None,
        )
        .unwrap();
        assert_eq!(request.correlation_id, "ours");
        assert_eq!(request.reply_to, "replies");
        assert_eq!(
            request.reply_partition, None,
            "the partition is of Spring's topic"
        );
        assert_eq!(request.spring_correlation_id.as_deref(), Some(&b"ours"[..]));
        // And a request of Replyway's alone carries nothing of Spring's.
        let plain =
            Request::parse(None, h(&[("correlation-id", "a"), ("reply-to", "r")]), None).unwrap();
        assert_eq!(
            (plain.spring_correlation_id, plain.reply_partition),
            (None, None)
        );
    }

    #[test]
    fn a_spring_command_without_its_reply_topic_or_with_a_bad_partition_is_rejected() {
        let r = Request::parse(None, h(&[("kafka_correlationId", "a")]), None);
        assert_eq!(r.unwrap_err(), RequestError::Missing("reply-to"));
        let r = Request::parse(None, h(&[("kafka_replyTopic", "r")]), None);
        assert_eq!(r.unwrap_err(), RequestError::Missing("correlation-id"));
        let r = Request::parse(
            None,
            h(&[
                ("kafka_replyTopic", "r"),
                ("kafka_correlationId", "a"),
                ("kafka_replyPartition", "1"),
            ]),
            None,
        );
        assert_eq!(
            r.unwrap_err(),
            RequestError::Malformed("kafka_replyPartition".into())
        );
    }

    #[test]
    fn request_without_reply_to_is_rejected() {
        let r = Request::parse(None, h(&[("correlation-id", "a")]), None);
        assert_eq!(r.unwrap_err(), RequestError::Missing("reply-to"));
    }
}
