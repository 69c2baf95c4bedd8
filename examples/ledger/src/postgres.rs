//! The ledger on PostgreSQL, in the outbox mode of `replyway_shared::outbox`
//! (when `postgres.url` is set): balances live in one table, and a transfer,
//! its reply and its `balance-changed` events commit or roll back together,
//! in the transaction the [`OutboxResponder`] hands the handler.
//!
//! | table | columns |
//! |---|---|
//! | `ledger_accounts` | `account` (primary key), `balance` (≥ 0), `version` (transfers that changed it) |
//!
//! A transfer locks both accounts (`SELECT … FOR UPDATE`, in account order,
//! so two transfers between the same accounts never deadlock), checks them as
//! the Redis script does, and updates both. Concurrent transfers queue on the
//! row locks: a balance is never read stale and never goes negative (also a
//! `CHECK`). A command delivered again is answered from the outbox's dedup
//! record and never reaches this code twice; a correlation id reused with
//! another body gets the first reply back.

use std::collections::BTreeMap;

use rdkafka::message::Headers;
use replyway_shared::outbox::OutboxHandler;
use replyway_shared::outbox::tokio_postgres::{Client, Transaction};
use replyway_shared::record::{is_valid_correlation_id, unix_millis};
use replyway_shared::responder::HandlerError;
use replyway_shared::responder::transactional::{Answer, Event};
use replyway_shared::{Reply, Request};

use crate::command::{self, Command, MAX_AMOUNT, Transfer};
use crate::events;
use crate::reply;
use crate::store::{Outcome, TransferResult};

/// The accounts table.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS ledger_accounts (
    account text PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0),
    version bigint NOT NULL DEFAULT 0
)";

/// Creates the accounts table when missing and opens `accounts` that do not
/// exist yet (an existing balance is never overwritten). Returns the accounts
/// opened now.
///
/// # Errors
/// The database's error.
pub async fn open_accounts(
    client: &Client,
    accounts: &BTreeMap<String, u64>,
) -> Result<Vec<String>, replyway_shared::outbox::tokio_postgres::Error> {
    client.batch_execute(CREATE).await?;
    let mut opened = Vec::new();
    for (account, balance) in accounts {
        // Balances are at most MAX_AMOUNT (checked with the settings).
        let balance = i64::try_from(*balance).unwrap_or(i64::MAX);
        let new = client
            .execute(
                "INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[account, &balance],
            )
            .await?;
        if new == 1 {
            opened.push(account.clone());
        }
    }
    Ok(opened)
}

/// The ledger's command handler in outbox mode.
#[derive(Debug)]
pub struct PgLedger {
    events_topic: String,
}

impl PgLedger {
    /// A handler whose events go to `events_topic`.
    pub fn new(events_topic: impl Into<String>) -> Self {
        Self {
            events_topic: events_topic.into(),
        }
    }

    async fn answer(
        &self,
        request: &Request,
        tx: &Transaction<'_>,
    ) -> Result<Answer, HandlerError> {
        let command = match command::parse(request) {
            Ok(command) => command,
            Err(e) => return Ok(reply::command_error(&e).into()),
        };
        match command {
            Command::Balance(account) => {
                let balance = balance(tx, &account).await?;
                Ok(reply::balance(&account, balance).into())
            }
            Command::Transfer(transfer) => {
                let id = &request.correlation_id;
                if !is_valid_correlation_id(id) {
                    return Ok(reply::command_error(&command::CommandError::Invalid(
                        "the correlation id is not 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
                    ))
                    .into());
                }
                let outcome =
                    perform(tx, &transfer, unix_millis(std::time::SystemTime::now())).await?;
                tracing::info!(
                    correlation_id = %id,
                    from = %transfer.from,
                    to = %transfer.to,
                    amount = transfer.amount,
                    result = ?outcome.result,
                    "transfer"
                );
                let headers: Vec<(String, String)> =
                    events::event_headers(id, request.client_id.as_deref())
                        .iter()
                        .map(|h| {
                            let value = h.value.unwrap_or_default();
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(value).into_owned(),
                            )
                        })
                        .collect();
                let events = events::balance_changes(id, &outcome)
                    .iter()
                    .map(|change| {
                        let payload = serde_json::to_vec(change).unwrap_or_default();
                        let event =
                            Event::new(&self.events_topic, payload).key(change.account.clone());
                        headers
                            .iter()
                            .fold(event, |event, (k, v)| event.header(k.clone(), v.clone()))
                    })
                    .collect();
                let reply: Reply = reply::transfer(id, &transfer, &outcome);
                Ok(Answer::new(reply, events))
            }
        }
    }
}

impl OutboxHandler for PgLedger {
    async fn handle(&self, request: Request, tx: &Transaction<'_>) -> Result<Answer, HandlerError> {
        self.answer(&request, tx).await
    }
}

async fn balance(tx: &Transaction<'_>, account: &str) -> Result<Option<u64>, HandlerError> {
    let row = tx
        .query_opt(
            "SELECT balance FROM ledger_accounts WHERE account = $1",
            &[&account],
        )
        .await?;
    Ok(row
        .map(|row| row.try_get::<_, i64>(0))
        .transpose()?
        .map(|b| u64::try_from(b).unwrap_or_default()))
}

/// Performs `transfer` in `tx`: locks both accounts, checks, moves the money.
async fn perform(
    tx: &Transaction<'_>,
    transfer: &Transfer,
    at: u64,
) -> Result<Outcome, HandlerError> {
    let accounts = [transfer.from.as_str(), transfer.to.as_str()];
    let rows = tx
        .query(
            "SELECT account, balance, version FROM ledger_accounts WHERE account = ANY($1) ORDER BY account FOR UPDATE",
            &[&&accounts[..]],
        )
        .await?;
    let mut found = BTreeMap::new();
    for row in &rows {
        let account: String = row.try_get(0)?;
        let balance: i64 = row.try_get(1)?;
        let version: i64 = row.try_get(2)?;
        found.insert(account, (u64::try_from(balance)?, u64::try_from(version)?));
    }
    let outcome = |result| Outcome {
        transfer: transfer.clone(),
        at,
        result,
    };
    let (Some(&(from_balance, from_version)), Some(&(to_balance, to_version))) =
        (found.get(&transfer.from), found.get(&transfer.to))
    else {
        let missing = if found.contains_key(&transfer.from) {
            &transfer.to
        } else {
            &transfer.from
        };
        return Ok(outcome(TransferResult::UnknownAccount(missing.clone())));
    };
    let amount = transfer.amount;
    if from_balance < amount {
        return Ok(outcome(TransferResult::InsufficientFunds {
            balance: from_balance,
        }));
    }
    if to_balance > MAX_AMOUNT - amount {
        return Ok(outcome(TransferResult::BalanceLimit {
            balance: to_balance,
        }));
    }
    let update =
        "UPDATE ledger_accounts SET balance = $2, version = version + 1 WHERE account = $1";
    let (from_after, to_after) = (from_balance - amount, to_balance + amount);
    tx.execute(update, &[&transfer.from, &i64::try_from(from_after)?])
        .await?;
    tx.execute(update, &[&transfer.to, &i64::try_from(to_after)?])
        .await?;
    Ok(outcome(TransferResult::Done {
        from_balance: from_after,
        to_balance: to_after,
        from_version: from_version + 1,
        to_version: to_version + 1,
    }))
}
