//! Domain events: one `balance-changed` record per account a transfer changed,
//! produced to the events topic before the transfer is answered.
//!
//! | part | content |
//! |---|---|
//! | key | the account id (one account's events share a partition) |
//! | value | JSON [`BalanceChanged`] |
//! | header `event-type` | `balance-changed` |
//! | header `correlation-id` | the originating request's correlation id |
//! | header `client-id` | the originating request's client id, when it had one |
//! | header `content-type` | `application/json` |
//!
//! Delivery is at-least-once: a command delivered twice emits its events again,
//! with the same values (they come from the stored outcome). Consumers dedupe by
//! `transfer_id`, and order one account's events by `version` (events of
//! concurrent transfers may be produced in either order).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use replyway_shared::backoff::Backoff;
use replyway_shared::record::header;
use replyway_shared::settings::KafkaSettings;

use crate::store::{Outcome, TransferResult};

/// Header naming the kind of event.
pub const EVENT_TYPE: &str = "event-type";
/// The `event-type` of a balance change.
pub const BALANCE_CHANGED: &str = "balance-changed";

/// Longest the broker may take to acknowledge one attempt.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// An account's balance changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceChanged {
    /// The account.
    pub account: String,
    /// Its balance after the transfer, in minor units.
    pub balance: u64,
    /// The change, negative for the debited account.
    pub delta: i64,
    /// How many transfers changed this account, this one included: a consumer
    /// keeps the event with the highest version.
    pub version: u64,
    /// The transfer: the correlation id of the command that made it.
    pub transfer_id: String,
    /// When the transfer was performed (unix ms).
    pub at: u64,
}

/// The events of a transfer's outcome: debit then credit, none when no money moved.
pub fn balance_changes(transfer_id: &str, outcome: &Outcome) -> Vec<BalanceChanged> {
    let TransferResult::Done {
        from_balance,
        to_balance,
        from_version,
        to_version,
    } = outcome.result
    else {
        return Vec::new();
    };
    // Amounts are at most 2^53 - 1 (checked when the command is read).
    let amount = i64::try_from(outcome.transfer.amount).unwrap_or(i64::MAX);
    let event = |account: &str, balance, delta, version| BalanceChanged {
        account: account.to_owned(),
        balance,
        delta,
        version,
        transfer_id: transfer_id.to_owned(),
        at: outcome.at,
    };
    vec![
        event(&outcome.transfer.from, from_balance, -amount, from_version),
        event(&outcome.transfer.to, to_balance, amount, to_version),
    ]
}

/// The headers of an event caused by the request `correlation_id` of `client_id`.
pub fn event_headers(correlation_id: &str, client_id: Option<&str>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: EVENT_TYPE,
            value: Some(BALANCE_CHANGED),
        })
        .insert(Header {
            key: header::CORRELATION_ID,
            value: Some(correlation_id),
        })
        .insert(Header {
            key: header::CONTENT_TYPE,
            value: Some("application/json"),
        });
    if let Some(client_id) = client_id {
        headers = headers.insert(Header {
            key: header::CLIENT_ID,
            value: Some(client_id),
        });
    }
    headers
}

/// Why events were not produced.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Shutdown came while the broker did not acknowledge.
    #[error("events not produced before shutdown: {0}")]
    Shutdown(KafkaError),
}

/// Produces domain events to one topic.
#[derive(Clone)]
pub struct Events {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// A producer of events to `topic`.
    ///
    /// # Errors
    /// A [`KafkaError`] when the producer cannot be created.
    pub fn new(kafka: &KafkaSettings, topic: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka.producer_config().create()?,
            topic: topic.to_owned(),
        })
    }

    /// Produces `events` with `headers`, retrying each until the broker
    /// acknowledges it or `shutdown` comes.
    ///
    /// # Errors
    /// [`EventError::Shutdown`] when shutdown came first.
    pub async fn publish(
        &self,
        events: &[BalanceChanged],
        headers: &OwnedHeaders,
        shutdown: &CancellationToken,
    ) -> Result<(), EventError> {
        let sends = events
            .iter()
            .map(|event| self.send(event, headers, shutdown));
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn send(
        &self,
        event: &BalanceChanged,
        headers: &OwnedHeaders,
        shutdown: &CancellationToken,
    ) -> Result<(), EventError> {
        let value = serde_json::to_vec(event).unwrap_or_default();
        let mut backoff = Backoff::default();
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(&event.account)
                .payload(&value)
                .headers(headers.clone());
            match self.producer.send(record, SEND_TIMEOUT).await {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    tracing::warn!(
                        transfer_id = %event.transfer_id,
                        account = %event.account,
                        error = %e,
                        "could not produce event; retrying"
                    );
                    if !backoff.wait(shutdown).await {
                        return Err(EventError::Shutdown(e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::command::Transfer;

    fn outcome(result: TransferResult) -> Outcome {
        Outcome {
            transfer: Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 250,
            },
            at: 42,
            result,
        }
    }

    #[test]
    fn a_done_transfer_changes_two_balances() {
        let events = balance_changes(
            "t-1",
            &outcome(TransferResult::Done {
                from_balance: 9750,
                to_balance: 750,
                from_version: 4,
                to_version: 1,
            }),
        );
        assert_eq!(events.len(), 2);
        assert_eq!(
            (
                events[0].account.as_str(),
                events[0].balance,
                events[0].delta,
                events[0].version
            ),
            ("alice", 9750, -250, 4)
        );
        assert_eq!(
            (
                events[1].account.as_str(),
                events[1].balance,
                events[1].delta,
                events[1].version
            ),
            ("bob", 750, 250, 1)
        );
        assert!(events.iter().all(|e| e.transfer_id == "t-1" && e.at == 42));
        let json: serde_json::Value = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"account":"alice","balance":9750,"delta":-250,"version":4,"transfer_id":"t-1","at":42})
        );
    }

    #[test]
    fn a_rejected_transfer_changes_nothing() {
        for result in [
            TransferResult::InsufficientFunds { balance: 1 },
            TransferResult::BalanceLimit { balance: 1 },
            TransferResult::UnknownAccount("bob".into()),
        ] {
            assert!(balance_changes("t", &outcome(result)).is_empty());
        }
    }

    #[test]
    fn headers_carry_type_correlation_and_client() {
        let pairs = |h: &OwnedHeaders| -> Vec<(String, String)> {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        };
        let with = pairs(&event_headers("c-1", Some("shop-7")));
        assert!(with.contains(&("event-type".into(), "balance-changed".into())));
        assert!(with.contains(&("correlation-id".into(), "c-1".into())));
        assert!(with.contains(&("client-id".into(), "shop-7".into())));
        let without = pairs(&event_headers("c-1", None));
        assert!(without.iter().all(|(k, _)| k != "client-id"));
    }
}
