//! An outbox row: one Kafka record (a reply or an event) kept in the database
//! until the relay has published it.
//!
//! Headers are stored as JSON, `[["name", "hex of the value"], …]` (`null`
//! for a header without value), so that binary values (Spring's 16-byte
//! `kafka_correlationId`) survive and the order is kept.

use bytes::Bytes;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::responder::transactional::Event;

use super::schema;

/// A record waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's id (`bigserial`): its place in the outbox; `0` before it is
    /// inserted.
    pub id: i64,
    /// The command's correlation id (of every record it caused: a duplicate
    /// published after a crash carries the same one).
    pub correlation_id: String,
    /// Topic it goes to.
    pub topic: String,
    /// Partition it goes to; `None`: the key decides.
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Record value.
    pub payload: Bytes,
}

/// The JSON of stored headers is not what [`OutboxRow`] writes.
#[derive(Debug, thiserror::Error)]
#[error("malformed outbox headers: {0}")]
pub struct MalformedHeaders(pub String);

impl OutboxRow {
    /// The row of a record with `headers` (a reply's, as the Responder builds
    /// them).
    pub fn new(
        correlation_id: &str,
        topic: &str,
        partition: Option<i32>,
        key: Option<Bytes>,
        headers: &OwnedHeaders,
        payload: Bytes,
    ) -> Self {
        Self {
            id: 0,
            correlation_id: correlation_id.to_owned(),
            topic: topic.to_owned(),
            partition,
            key,
            headers: headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                .collect(),
            payload,
        }
    }

    /// The row of a handler's `event` for the command `correlation_id`.
    pub fn event(correlation_id: &str, event: &Event) -> Self {
        Self {
            id: 0,
            correlation_id: correlation_id.to_owned(),
            topic: event.topic.clone(),
            partition: None,
            key: event.key.clone(),
            headers: event
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(Bytes::copy_from_slice(v.as_bytes()))))
                .collect(),
            payload: event.payload.clone(),
        }
    }

    /// The headers as stored.
    pub fn headers_json(&self) -> Value {
        Value::Array(
            self.headers
                .iter()
                .map(|(k, v)| {
                    let value = v.as_ref().map_or(Value::Null, |v| hex::encode(v).into());
                    Value::Array(vec![k.clone().into(), value])
                })
                .collect(),
        )
    }

    /// Headers read back from their stored JSON.
    ///
    /// # Errors
    /// [`MalformedHeaders`] when `json` is not what [`OutboxRow::headers_json`]
    /// writes.
    pub fn headers_from_json(json: &str) -> Result<Vec<(String, Option<Bytes>)>, MalformedHeaders> {
        let bad = || MalformedHeaders(json.chars().take(200).collect());
        let value: Value = serde_json::from_str(json).map_err(|_| bad())?;
        value
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::Null]) => Ok((k.clone(), None)),
                Some([Value::String(k), Value::String(v)]) => {
                    let v = hex::decode(v).map_err(|_| bad())?;
                    Ok((k.clone(), Some(Bytes::from(v))))
                }
                _ => Err(bad()),
            })
            .collect()
    }

    /// Inserts the row into the outbox (in the caller's transaction).
    ///
    /// # Errors
    /// The database's error.
    pub async fn insert(&self, client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        self.insert_into(client, schema::INSERT_OUTBOX).await
    }

    /// Records the command of this reply as handled, with the reply, in the
    /// dedup table (in the caller's transaction). Fails with a unique
    /// violation when the command was handled already.
    ///
    /// # Errors
    /// The database's error.
    pub async fn insert_dedup(
        &self,
        client: &impl GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        self.insert_into(client, schema::INSERT_DEDUP).await
    }

    /// Inserts the row with `insert` (the outbox's and the dedup table's
    /// inserts take the same columns).
    async fn insert_into(
        &self,
        client: &impl GenericClient,
        insert: &str,
    ) -> Result<(), tokio_postgres::Error> {
        client
            .execute(
                insert,
                &[
                    &self.correlation_id,
                    &self.topic,
                    &self.partition,
                    &self.key.as_deref(),
                    &self.headers_json().to_string(),
                    &&self.payload[..],
                ],
            )
            .await
            .map(drop)
    }

    /// Its headers as a record's.
    pub fn record_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            },
        )
    }

    /// The record to produce.
    pub fn record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut record = FutureRecord::to(&self.topic)
            .payload(&self.payload[..])
            .headers(self.record_headers());
        if let Some(key) = &self.key {
            record = record.key(&key[..]);
        }
        match self.partition {
            Some(partition) => record.partition(partition),
            None => record,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_database_binary_values_and_order_included() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "correlation-id",
                value: Some("id-1"),
            })
            .insert(Header {
                key: "kafka_correlationId",
                value: Some(&[0xff_u8, 0x00, 0x10][..]),
            })
            .insert(Header::<&str> {
                key: "empty",
                value: None,
            });
        let row = OutboxRow::new("id-1", "replies", Some(2), None, &headers, Bytes::new());
        let json = row.headers_json().to_string();
        assert_eq!(OutboxRow::headers_from_json(&json).unwrap(), row.headers);
        let record = row.record();
        assert_eq!((record.topic, record.partition), ("replies", Some(2)));
        let back = record.headers.expect("headers");
        let pairs: Vec<_> = back.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            pairs,
            [
                ("correlation-id", Some(&b"id-1"[..])),
                ("kafka_correlationId", Some(&[0xff, 0x00, 0x10][..])),
                ("empty", None)
            ]
        );
        assert!(OutboxRow::headers_from_json(r#"[["a","zz"]]"#).is_err());
        assert!(OutboxRow::headers_from_json("{}").is_err());
    }
}
