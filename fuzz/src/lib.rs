//! Inputs shared by the fuzz targets.
//!
//! The record targets read every input two ways, and check both records:
//!
//! * as text ([`Owned::text`]), so that seed corpora are readable records:
//!
//!   ```text
//!   @key order-7
//!   @max 1048576
//!   correlation-id: 9231e01e-6f21-41dc-b03c-75e07bdfdc77
//!   status: 409
//!   kafka_correlationId
//!
//!   {"error":"conflict"}
//!   ```
//!
//!   Lines up to the first empty line are headers, `name: value` (a line
//!   without `:` is a header with a null value); `@key` sets the record key
//!   (`@key` alone: an empty key), `@max` the value bound of a reply. What
//!   follows the empty line is the value; no empty line, no value.
//! * as structured input ([`Owned::structured`], with `arbitrary`): header names
//!   are mostly the names of the record contract
//!   (`replyway_shared::record::header`), so that the fuzzer reaches every
//!   branch of the parsers instead of spending its time guessing names.

use arbitrary::Arbitrary;
use rdkafka::message::{Headers, OwnedHeaders};
use replyway_shared::record::header;

/// A header name of the record contract.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Known {
    CorrelationId,
    ReplyTo,
    Deadline,
    ContentType,
    Status,
    HttpMethod,
    HttpPath,
    Traceparent,
    Tracestate,
    ClientId,
    SpringReplyTopic,
    SpringCorrelationId,
    SpringContentType,
}

impl Known {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CorrelationId => header::CORRELATION_ID,
            Self::ReplyTo => header::REPLY_TO,
            Self::Deadline => header::DEADLINE,
            Self::ContentType => header::CONTENT_TYPE,
            Self::Status => header::STATUS,
            Self::HttpMethod => header::HTTP_METHOD,
            Self::HttpPath => header::HTTP_PATH,
            Self::Traceparent => header::TRACEPARENT,
            Self::Tracestate => header::TRACESTATE,
            Self::ClientId => header::CLIENT_ID,
            Self::SpringReplyTopic => header::SPRING_REPLY_TOPIC,
            Self::SpringCorrelationId => header::SPRING_CORRELATION_ID,
            Self::SpringContentType => header::SPRING_CONTENT_TYPE,
        }
    }
}

/// A header name: one of the contract's, a prefixed one (`param-…`,
/// `header-…`), or anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum Name<'a> {
    Known(Known),
    Param(&'a str),
    Header(&'a str),
    Other(&'a str),
}

impl Name<'_> {
    /// The name as it appears on a record (see [`clean`]).
    pub fn render(&self) -> String {
        let name = match self {
            Self::Known(k) => k.name().to_owned(),
            Self::Param(p) => format!("{}{p}", header::PARAM_PREFIX),
            Self::Header(h) => format!("{}{h}", header::HEADER_PREFIX),
            Self::Other(o) => (*o).to_owned(),
        };
        clean(name.as_bytes())
    }
}

/// A header value: absent (a Kafka null header), raw bytes, text, or a
/// number written in decimal (statuses, deadlines).
#[derive(Arbitrary, Debug, Clone)]
pub enum Value<'a> {
    Null,
    Bytes(&'a [u8]),
    Text(&'a str),
    Number(u64),
    Status(u16),
}

impl Value<'_> {
    /// The value's bytes, `None` for a null header.
    pub fn render(&self) -> Option<Vec<u8>> {
        match self {
            Self::Null => None,
            Self::Bytes(b) => Some(b.to_vec()),
            Self::Text(t) => Some(t.as_bytes().to_vec()),
            Self::Number(n) => Some(n.to_string().into_bytes()),
            Self::Status(s) => Some(s.to_string().into_bytes()),
        }
    }
}

/// A record as the parsers see it: key, headers and value.
#[derive(Arbitrary, Debug, Clone)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub headers: Vec<(Name<'a>, Value<'a>)>,
    pub value: Option<&'a [u8]>,
}

/// Owned headers of a record, in order.
pub type OwnedList = Vec<(String, Option<Vec<u8>>)>;

impl Record<'_> {
    /// The headers, rendered.
    pub fn headers(&self) -> OwnedList {
        self.headers
            .iter()
            .map(|(n, v)| (n.render(), v.render()))
            .collect()
    }
}

/// A record with owned parts.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    pub key: Option<Vec<u8>>,
    pub headers: OwnedList,
    pub value: Option<Vec<u8>>,
    /// The value bound of a reply (`@max`), when given.
    pub max_value: Option<usize>,
}

/// A header name as it appears on a record. Kafka header names reach Replyway
/// through librdkafka as C strings, so they never hold a NUL: NULs are removed.
fn clean(name: &[u8]) -> String {
    String::from_utf8_lossy(name).replace('\0', "")
}

impl Owned {
    /// The input read as a text record (see the module docs).
    pub fn text(data: &[u8]) -> Self {
        let mut record = Self::default();
        let mut rest = data;
        loop {
            let (line, next) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if line.is_empty() && next.is_some() {
                record.value = next.map(<[u8]>::to_vec);
                return record;
            }
            if line == b"@key" {
                record.key = Some(Vec::new());
            } else if let Some(key) = line.strip_prefix(b"@key ") {
                record.key = Some(key.to_vec());
            } else if let Some(max) = line.strip_prefix(b"@max ") {
                record.max_value = std::str::from_utf8(max)
                    .ok()
                    .and_then(|m| m.trim().parse().ok());
            } else if !line.is_empty() {
                let header = match line.iter().position(|b| *b == b':') {
                    Some(i) => {
                        let value = &line[i + 1..];
                        (
                            clean(&line[..i]),
                            Some(value.strip_prefix(b" ").unwrap_or(value).to_vec()),
                        )
                    }
                    None => (clean(line), None),
                };
                record.headers.push(header);
            }
            match next {
                Some(next) => rest = next,
                None => return record,
            }
        }
    }

    /// The input read as a structured record, with a value bound.
    pub fn structured(data: &[u8]) -> Option<Self> {
        let mut u = arbitrary::Unstructured::new(data);
        let max_value = u16::arbitrary(&mut u).ok()?;
        let record = Record::arbitrary_take_rest(u).ok()?;
        Some(Self {
            key: record.key.map(<[u8]>::to_vec),
            headers: record.headers(),
            value: record.value.map(<[u8]>::to_vec),
            max_value: Some(usize::from(max_value)),
        })
    }

    /// Both readings of an input.
    pub fn both(data: &[u8]) -> impl Iterator<Item = Self> {
        std::iter::once(Self::text(data)).chain(Self::structured(data))
    }
}

/// Borrows a header list as the parsers take it.
pub fn borrow(list: &OwnedList) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    list.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
}

/// Reads librdkafka's headers back, as a consumer would see them.
pub fn read_back(headers: &OwnedHeaders) -> OwnedList {
    headers
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect()
}
