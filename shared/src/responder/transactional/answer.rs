//! What a transactional handler returns: its reply and the records (events)
//! that must be committed together with it.

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};

use crate::record::Reply;

/// A handler's answer in a [`TransactionalResponder`](super::TransactionalResponder):
/// the reply to the command and any number of events for other topics, all
/// committed in the command's transaction or none of them.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The reply, produced to the command's `reply-to` as the plain
    /// Responder produces it.
    pub reply: Reply,
    /// Further records, produced in the same transaction after the reply.
    pub events: Vec<Event>,
}

impl Answer {
    /// `reply` and `events`.
    pub fn new(reply: Reply, events: Vec<Event>) -> Self {
        Self { reply, events }
    }
}

impl From<Reply> for Answer {
    /// A reply without events.
    fn from(reply: Reply) -> Self {
        Self {
            reply,
            events: Vec::new(),
        }
    }
}

/// A record a handler produces besides its reply (a domain event), committed
/// or aborted with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Topic it goes to.
    pub topic: String,
    /// Record key (partitioning); `None`: no key.
    pub key: Option<Bytes>,
    /// Record headers, in order.
    pub headers: Vec<(String, String)>,
    /// Record value.
    pub payload: Bytes,
}

impl Event {
    /// An event to `topic` with `payload`, no key and no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// With record key `key`.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With one more header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Its headers as a record's.
    pub(super) fn record_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len() + 2),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn an_event_keeps_its_key_and_headers_in_order() {
        let event = Event::new("ledger.events", "{}")
            .key("k-1")
            .header("correlation-id", "id-1")
            .header("type", "balance-changed");
        assert_eq!(event.key.as_deref(), Some(&b"k-1"[..]));
        let headers = event.record_headers();
        let pairs: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            pairs,
            [
                ("correlation-id", Some(&b"id-1"[..])),
                ("type", Some(&b"balance-changed"[..]))
            ]
        );
        let answer = Answer::from(Reply::new(204));
        assert!(answer.events.is_empty());
        assert_eq!(answer.reply.status, 204);
    }
}
