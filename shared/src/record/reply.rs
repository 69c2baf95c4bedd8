//! The reply record: what a service answers, parsed from and written to
//! Kafka headers (see docs/records.md).

use bytes::Bytes;
use rdkafka::message::{Header, Message, OwnedHeaders};

use super::{header, is_valid_correlation_id};

/// A reply: what a backend service answers and what the gateway turns into an
/// HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status, 200–599.
    pub status: u16,
    /// Media type of `body`.
    pub content_type: Option<String>,
    /// Headers passed to the HTTP response (`header-<name>` on the record).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// In a streamed reply, this part's number (`reply-part`: 0, 1, 2, …);
    /// `None` for a single reply.
    pub part: Option<u32>,
    /// Whether this part is the last of its streamed reply (`reply-last`).
    pub last: bool,
}

/// Highest part number of a streamed reply: a reply streams at most 10 000
/// parts (a part numbered higher is malformed, `bad_part`).
pub const MAX_PART: u32 = 9_999;

impl Reply {
    /// A reply with `status` and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Bytes::new(),
            part: None,
            last: false,
        }
    }

    /// A reply with `status` and a body of the given media type.
    pub fn with_body(status: u16, content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: Some(content_type.into()),
            headers: Vec::new(),
            body: body.into(),
            part: None,
            last: false,
        }
    }

    /// This reply as part `part` of a streamed reply, the last one with `last`.
    #[must_use]
    pub fn as_part(mut self, part: u32, last: bool) -> Self {
        self.part = Some(part);
        self.last = last;
        self
    }

    /// An RFC 9457 problem reply, as the Responder sends when a handler fails.
    pub fn problem(status: u16, title: &str, detail: &str) -> Self {
        let body = serde_json::json!({ "type": "about:blank", "title": title, "status": status, "detail": detail });
        Self::with_body(status, "application/problem+json", body.to_string())
    }

    /// Adds a header that the gateway passes on to the HTTP response.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The Kafka headers of this reply's record.
    pub fn record_headers(&self, correlation_id: &str) -> OwnedHeaders {
        let status = self.status.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(3 + self.headers.len())
            .insert(Header {
                key: header::CORRELATION_ID,
                value: Some(correlation_id),
            })
            .insert(Header {
                key: header::STATUS,
                value: Some(&status),
            });
        if let Some(ct) = &self.content_type {
            headers = headers.insert(Header {
                key: header::CONTENT_TYPE,
                value: Some(ct),
            });
        }
        let part = self.part.map(|p| p.to_string());
        if let Some(part) = &part {
            headers = headers.insert(Header {
                key: header::REPLY_PART,
                value: Some(part),
            });
            if self.last {
                headers = headers.insert(Header {
                    key: header::REPLY_LAST,
                    value: Some("true"),
                });
            }
        }
        for (name, value) in &self.headers {
            let key = format!("{}{}", header::HEADER_PREFIX, name.to_ascii_lowercase());
            headers = headers.insert(Header {
                key: &key,
                value: Some(value),
            });
        }
        headers
    }
}

/// Why a reply record cannot be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    /// Neither a `correlation-id` header nor a key.
    #[error("no correlation id (neither a correlation-id header nor a key)")]
    MissingCorrelationId,
    /// The correlation id is not 1–128 characters of `A-Za-z0-9._:-`.
    #[error("correlation id is not 1-128 characters of [A-Za-z0-9._:-]")]
    InvalidCorrelationId,
    /// The `status` header is not a decimal HTTP status 200–599.
    #[error("status {0:?} is not a decimal HTTP status 200-599")]
    BadStatus(String),
    /// A header that must be UTF-8 is not.
    #[error("header {0} is not UTF-8")]
    NotUtf8(String),
    /// The value is larger than the configured bound.
    #[error("value of {0} bytes is over the limit of {1} bytes")]
    TooLarge(usize, usize),
    /// The correlation id was not issued by this deployment (signed ids only).
    #[error("correlation id was not issued by a gateway of this deployment")]
    Unsigned,
    /// `reply-part` is not a part number, or `reply-last` comes without it.
    #[error("reply-part {0:?} is not a part number 0-9999 (or reply-last without reply-part)")]
    BadPart(String),
}

impl ReplyError {
    /// A short, fixed label for counting (never holds record data).
    pub fn label(&self) -> &'static str {
        match self {
            Self::MissingCorrelationId => "missing_correlation_id",
            Self::InvalidCorrelationId => "invalid_correlation_id",
            Self::BadStatus(_) => "bad_status",
            Self::NotUtf8(_) => "not_utf8",
            Self::TooLarge(..) => "too_large",
            Self::Unsigned => "unsigned_correlation_id",
            Self::BadPart(_) => "bad_part",
        }
    }
}

fn utf8<'a>(name: &str, value: &'a [u8]) -> Result<&'a str, ReplyError> {
    std::str::from_utf8(value).map_err(|_| ReplyError::NotUtf8(name.to_owned()))
}

/// Parses a reply record from its parts: key, headers and value.
///
/// The correlation id comes from the `correlation-id` header, else from the key.
///
/// # Errors
/// A [`ReplyError`] saying why the record cannot be delivered.
pub fn parse_reply<'a>(
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&[u8]>,
    max_value: usize,
) -> Result<(String, Reply), ReplyError> {
    let mut id = None;
    let mut spring_id = None;
    let mut spring_content_type = None;
    let mut reply = Reply::new(200);
    let mut last = false;
    for (name, value) in headers {
        let Some(value) = value else { continue };
        match name {
            header::CORRELATION_ID => id = Some(utf8(name, value)?.to_owned()),
            header::SPRING_CORRELATION_ID => spring_id = Some(utf8(name, value)?.to_owned()),
            header::SPRING_CONTENT_TYPE => spring_content_type = Some(utf8(name, value)?),
            header::STATUS => {
                let text = String::from_utf8_lossy(value);
                reply.status = text
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .ok_or_else(|| ReplyError::BadStatus(text.chars().take(32).collect()))?;
            }
            header::CONTENT_TYPE => reply.content_type = Some(utf8(name, value)?.to_owned()),
            header::REPLY_PART => {
                let text = String::from_utf8_lossy(value);
                reply.part = Some(
                    text.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|p| *p <= MAX_PART)
                        .ok_or_else(|| ReplyError::BadPart(text.chars().take(32).collect()))?,
                );
            }
            header::REPLY_LAST => last = value.eq_ignore_ascii_case(b"true"),
            _ => {
                if let Some(h) = name.strip_prefix(header::HEADER_PREFIX) {
                    reply
                        .headers
                        .push((h.to_owned(), utf8(name, value)?.to_owned()));
                }
            }
        }
    }
    let id = match (id.or(spring_id), key) {
        (Some(id), _) => id,
        (None, Some(key)) if !key.is_empty() => utf8("key", key)?.to_owned(),
        _ => return Err(ReplyError::MissingCorrelationId),
    };
    if reply.content_type.is_none()
        && let Some(ct) = spring_content_type
    {
        // Spring's header mapper writes it as a JSON string ("\"text/plain\"").
        let ct = ct.trim();
        let ct = ct
            .strip_prefix('"')
            .and_then(|c| c.strip_suffix('"'))
            .unwrap_or(ct);
        if !ct.is_empty() {
            reply.content_type = Some(ct.to_owned());
        }
    }
    if !is_valid_correlation_id(&id) {
        return Err(ReplyError::InvalidCorrelationId);
    }
    if last && reply.part.is_none() {
        return Err(ReplyError::BadPart(String::new()));
    }
    reply.last = last;
    let value = value.unwrap_or_default();
    if value.len() > max_value {
        return Err(ReplyError::TooLarge(value.len(), max_value));
    }
    reply.body = Bytes::copy_from_slice(value);
    Ok((id, reply))
}

/// Parses a reply from a Kafka message (see [`parse_reply`]).
///
/// # Errors
/// A [`ReplyError`] saying why the record cannot be delivered.
pub fn reply_from_message<M: Message>(
    message: &M,
    max_value: usize,
) -> Result<(String, Reply), ReplyError> {
    parse_reply(
        message.key(),
        super::header_pairs(message),
        message.payload(),
        max_value,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::h;
    use rdkafka::message::Headers as _;

    #[test]
    fn reply_takes_id_from_header_then_key() {
        let (id, reply) = parse_reply(
            Some(b"from-key"),
            h(&[("correlation-id", "abc")]),
            Some(b"x"),
            10,
        )
        .unwrap();
        assert_eq!(id, "abc");
        assert_eq!(reply.status, 200);
        assert_eq!(&reply.body[..], b"x");
        let (id, _) = parse_reply(Some(b"from-key"), h(&[]), None, 10).unwrap();
        assert_eq!(id, "from-key");
    }

    #[test]
    fn reply_shaped_like_spring_sendto_is_accepted() {
        // A @SendTo listener's reply: the correlation id copied as raw bytes,
        // Spring's type headers, no key, no correlation-id, no status.
        let headers = h(&[
            ("kafka_correlationId", "4d1c-id"),
            ("__TypeId__", "com.example.Greeting"),
            ("contentType", "\"application/json\""),
            (
                "spring_json_header_types",
                r#"{"contentType":"java.lang.String"}"#,
            ),
        ]);
        let (id, reply) = parse_reply(None, headers, Some(b"{}"), 10).unwrap();
        assert_eq!(id, "4d1c-id");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        // Our own header wins over Spring's, and over the key.
        let headers = h(&[
            ("kafka_correlationId", "spring"),
            ("correlation-id", "ours"),
        ]);
        let (id, _) = parse_reply(Some(b"key"), headers, None, 10).unwrap();
        assert_eq!(id, "ours");
        let (id, _) = parse_reply(
            Some(b"key"),
            h(&[("kafka_correlationId", "spring")]),
            None,
            10,
        )
        .unwrap();
        assert_eq!(id, "spring");
    }

    #[test]
    fn reply_maps_status_content_type_and_headers() {
        let headers = h(&[
            ("correlation-id", "a"),
            ("status", "409"),
            ("content-type", "application/json"),
            ("header-etag", "\"1\""),
            ("other", "ignored"),
        ]);
        let (_, reply) = parse_reply(None, headers, Some(b"{}"), 10).unwrap();
        assert_eq!(reply.status, 409);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        assert_eq!(reply.headers, vec![("etag".to_owned(), "\"1\"".to_owned())]);
    }

    #[test]
    fn malformed_replies_say_why() {
        assert_eq!(
            parse_reply(None, h(&[]), None, 10),
            Err(ReplyError::MissingCorrelationId)
        );
        assert_eq!(
            parse_reply(Some(b""), h(&[]), None, 10),
            Err(ReplyError::MissingCorrelationId)
        );
        assert_eq!(
            parse_reply(None, h(&[("correlation-id", "a{b}")]), None, 10),
            Err(ReplyError::InvalidCorrelationId)
        );
        for status in ["abc", "99", "600", "", "2000"] {
            let r = parse_reply(
                None,
                h(&[("correlation-id", "a"), ("status", status)]),
                None,
                10,
            );
            assert!(
                matches!(r, Err(ReplyError::BadStatus(_))),
                "{status}: {r:?}"
            );
        }
        assert_eq!(
            parse_reply(None, h(&[("correlation-id", "a")]), Some(&[0; 11]), 10),
            Err(ReplyError::TooLarge(11, 10))
        );
    }

    #[test]
    fn parts_of_a_streamed_reply_carry_their_number_and_the_last_its_mark() {
        let part = Reply::with_body(200, "text/plain", "p").as_part(3, true);
        let headers = part.record_headers("id-1");
        let pairs: Vec<_> = headers.iter().map(|h| (h.key, h.value)).collect();
        let (_, parsed) = parse_reply(None, pairs, Some(b"p"), 10).unwrap();
        assert_eq!((parsed.part, parsed.last), (Some(3), true));
        let single = parse_reply(None, h(&[("correlation-id", "a")]), None, 10).unwrap();
        assert_eq!((single.1.part, single.1.last), (None, false));
        for bad in [
            &[("correlation-id", "a"), ("reply-part", "x")][..],
            &[("correlation-id", "a"), ("reply-part", "-1")],
            &[("correlation-id", "a"), ("reply-part", "99999999")],
            &[("correlation-id", "a"), ("reply-last", "true")],
        ] {
            let error = parse_reply(None, h(bad), None, 10).unwrap_err();
            assert_eq!(error.label(), "bad_part", "{bad:?}");
        }
    }

    #[test]
    fn reply_headers_round_trip() {
        let reply = Reply::with_body(201, "text/plain", "hi").header("ETag", "1");
        let headers = reply.record_headers("id-1");
        let pairs: Vec<_> = headers.iter().map(|h| (h.key, h.value)).collect();
        let (id, parsed) = parse_reply(None, pairs, Some(b"hi"), 10).unwrap();
        assert_eq!(id, "id-1");
        assert_eq!(parsed.status, 201);
        assert_eq!(parsed.headers, vec![("etag".to_owned(), "1".to_owned())]);
    }
}
