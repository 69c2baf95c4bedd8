//! Decoding the part of the `pgoutput` stream (protocol version 1, text
//! values) that the relay needs: `Relation` messages (which table an id
//! names, and its columns) and `Insert` messages of the outbox table. Begin
//! and Commit are decoded by `pgwire-replication` itself; every other
//! message is skipped.
//!
//! Format: PostgreSQL's "Logical Replication Message Formats" (protocol
//! documentation, chapter 55.9).

use std::collections::HashMap;

use bytes::Bytes;

use super::row::OutboxRow;
use super::schema::OUTBOX_TABLE;

/// A message of the stream that the relay cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pgoutput: {0}")]
pub struct DecodeError(pub String);

fn err(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// A cursor over one message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(err("message truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| err("string without its terminator"))?;
        let s = std::str::from_utf8(&self.0[..end]).map_err(|_| err("string not UTF-8"))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
}

/// A table as a `Relation` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    name: String,
    columns: Vec<String>,
}

/// Reads the outbox's inserts from the stream, keeping the relations seen
/// (PostgreSQL sends a table's `Relation` before its first change in a
/// session, and again after its definition changed).
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
}

impl Decoder {
    /// Decodes one message: `Some(row)` for an insert into the outbox table,
    /// `None` for anything else.
    ///
    /// # Errors
    /// [`DecodeError`] when the message is malformed, or an insert names a
    /// table that no `Relation` described.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<OutboxRow>, DecodeError> {
        let mut r = Reader(data);
        match r.u8()? {
            b'R' => {
                let id = r.u32()?;
                let _namespace = r.cstr()?;
                let name = r.cstr()?.to_owned();
                let _replica_identity = r.u8()?;
                let count = r.u16()?;
                let mut columns = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let _flags = r.u8()?;
                    columns.push(r.cstr()?.to_owned());
                    let _type = r.u32()?;
                    let _modifier = r.u32()?;
                }
                self.relations.insert(id, Relation { name, columns });
                Ok(None)
            }
            b'I' => {
                let id = r.u32()?;
                let relation = self
                    .relations
                    .get(&id)
                    .ok_or_else(|| err(format!("insert into relation {id} never described")))?;
                if relation.name != OUTBOX_TABLE {
                    return Ok(None);
                }
                if r.u8()? != b'N' {
                    return Err(err("insert without a new tuple"));
                }
                let values = tuple(&mut r)?;
                row(&relation.columns, values).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The text values of a tuple (`None`: SQL null).
fn tuple<'a>(r: &mut Reader<'a>) -> Result<Vec<Option<&'a [u8]>>, DecodeError> {
    let count = r.u16()?;
    (0..count)
        .map(|_| match r.u8()? {
            b'n' => Ok(None),
            b't' => {
                let len = usize::try_from(r.u32()?).map_err(|_| err("value too long"))?;
                r.take(len).map(Some)
            }
            b'u' => Err(err("unchanged TOAST value in an insert")),
            b'b' => Err(err("binary value: the relay reads text values")),
            other => Err(err(format!("tuple value of kind {other:#x}"))),
        })
        .collect()
}

/// An outbox row from its columns' text values.
fn row(columns: &[String], values: Vec<Option<&[u8]>>) -> Result<OutboxRow, DecodeError> {
    if columns.len() != values.len() {
        return Err(err("a tuple with another column count than its relation"));
    }
    let mut row = OutboxRow {
        id: 0,
        correlation_id: String::new(),
        topic: String::new(),
        partition: None,
        key: None,
        headers: Vec::new(),
        payload: Bytes::new(),
    };
    let text = |name: &str, v: &[u8]| {
        std::str::from_utf8(v)
            .map(str::to_owned)
            .map_err(|_| err(format!("{name} is not UTF-8")))
    };
    for (name, value) in columns.iter().zip(values) {
        let Some(value) = value else { continue };
        match name.as_str() {
            "id" => {
                row.id = text(name, value)?
                    .parse()
                    .map_err(|_| err("id is not a number"))?;
            }
            "correlation_id" => row.correlation_id = text(name, value)?,
            "topic" => row.topic = text(name, value)?,
            "kafka_partition" => {
                row.partition = Some(
                    text(name, value)?
                        .parse()
                        .map_err(|_| err("kafka_partition is not a number"))?,
                );
            }
            "record_key" => row.key = Some(bytea(value)?),
            "headers" => {
                row.headers = OutboxRow::headers_from_json(&text(name, value)?)
                    .map_err(|e| err(e.to_string()))?;
            }
            "payload" => row.payload = bytea(value)?,
            _ => {}
        }
    }
    if row.id == 0 || row.topic.is_empty() {
        return Err(err("an outbox insert without id or topic"));
    }
    Ok(row)
}

/// A `bytea` in its text form (`bytea_output = hex`: `\x` and hex digits).
fn bytea(text: &[u8]) -> Result<Bytes, DecodeError> {
    let hex_digits = text
        .strip_prefix(b"\\x")
        .ok_or_else(|| err("bytea not in hex output (set bytea_output = hex)"))?;
    hex::decode(hex_digits)
        .map(Bytes::from)
        .map_err(|_| err("bytea with a bad hex digit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(id: u32, name: &str, columns: &[&str]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(id.to_be_bytes());
        m.extend(b"public\0");
        m.extend(name.as_bytes());
        m.push(0);
        m.push(b'd');
        m.extend(u16::try_from(columns.len()).unwrap().to_be_bytes());
        for c in columns {
            m.push(0);
            m.extend(c.as_bytes());
            m.push(0);
            m.extend(25_u32.to_be_bytes());
            m.extend(u32::MAX.to_be_bytes());
        }
        m
    }

    fn insert(id: u32, values: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend(id.to_be_bytes());
        m.push(b'N');
        m.extend(u16::try_from(values.len()).unwrap().to_be_bytes());
        for v in values {
            match v {
                None => m.push(b'n'),
                Some(v) => {
                    m.push(b't');
                    m.extend(u32::try_from(v.len()).unwrap().to_be_bytes());
                    m.extend(v.as_bytes());
                }
            }
        }
        m
    }

    #[test]
    fn an_outbox_insert_becomes_its_row_and_other_tables_are_skipped() {
        let columns = [
            "id",
            "correlation_id",
            "topic",
            "kafka_partition",
            "record_key",
            "headers",
            "payload",
            "created_at",
        ];
        let mut d = Decoder::default();
        assert_eq!(d.decode(&relation(7, OUTBOX_TABLE, &columns)), Ok(None));
        assert_eq!(d.decode(&relation(8, "accounts", &["id"])), Ok(None));
        let row = d
            .decode(&insert(
                7,
                &[
                    Some("42"),
                    Some("c-1"),
                    Some("replies"),
                    None,
                    Some("\\x632d31"),
                    Some(r#"[["correlation-id","632d31"]]"#),
                    Some("\\x7b7d"),
                    Some("2026-12-06 21:00:00+00"),
                ],
            ))
            .unwrap()
            .expect("an outbox row");
        assert_eq!(row.id, 42);
        assert_eq!(row.correlation_id, "c-1");
        assert_eq!(row.topic, "replies");
        assert_eq!(row.partition, None);
        assert_eq!(row.key.as_deref(), Some(&b"c-1"[..]));
        assert_eq!(&row.payload[..], b"{}");
        assert_eq!(row.headers.len(), 1);
        assert_eq!(d.decode(&insert(8, &[Some("1")])), Ok(None));
        assert!(
            d.decode(&insert(9, &[Some("1")])).is_err(),
            "never described"
        );
        assert!(d.decode(&[b'I', 0, 0]).is_err(), "truncated");
        assert_eq!(d.decode(b"Y"), Ok(None), "a type message is skipped");
    }
}
