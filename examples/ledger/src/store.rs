//! The ledger's state in Redis, shared by every ledger replica.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{<prefix>}:balances` | hash | account id → balance in minor units |
//! | `{<prefix>}:versions` | hash | account id → how many transfers changed it |
//! | `{<prefix>}:transfer:<correlation id>` | string, TTL | the transfer's outcome (see [`Outcome`]) |
//!
//! One script ([`TRANSFER_LUA`]) performs a transfer: it checks both accounts,
//! moves the money and stores the outcome under the command's correlation id, in
//! one atomic step. A command delivered again (the Responder is at-least-once)
//! finds its outcome and gets it back, so money never moves twice for one
//! correlation id; rejections are stored too, so a retried command cannot
//! succeed later where it first failed.
//!
//! Every key shares the hash tag `{<prefix>}`, so they live in one Redis Cluster
//! slot: a transfer between any two accounts must be one atomic script. This
//! demo ledger is one shard by design.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use replyway_shared::settings::{InvalidSetting, RedisSettings};

use crate::command::Transfer;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `ledger`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The hash of balances.
    pub fn balances(&self) -> String {
        format!("{{{}}}:balances", self.prefix)
    }

    /// The hash of per-account versions.
    pub fn versions(&self) -> String {
        format!("{{{}}}:versions", self.prefix)
    }

    /// The stored outcome of the transfer with this correlation id.
    pub fn outcome(&self, correlation_id: &str) -> String {
        format!("{{{}}}:transfer:{correlation_id}", self.prefix)
    }
}

/// Performs a transfer once per correlation id, atomically.
///
/// KEYS: balances, versions, outcome.
/// ARGV: from, to, amount, at (unix ms), outcome TTL in ms, largest balance.
/// Returns `{1, stored outcome}` when the outcome was stored before (nothing
/// changes), else `{0, new outcome}`.
///
/// Balances and amounts stay within 2^53 − 1, where Lua's numbers are exact;
/// `string.format('%d')` writes them without an exponent.
pub const TRANSFER_LUA: &str = r"
local first = redis.call('GET', KEYS[3])
if first then return {1, first} end
local from, to, amount = ARGV[1], ARGV[2], tonumber(ARGV[3])
local head = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
local from_balance = redis.call('HGET', KEYS[1], from)
local to_balance = redis.call('HGET', KEYS[1], to)
local outcome
if not from_balance then
  outcome = 'unknown-account ' .. head .. ' ' .. from
elseif not to_balance then
  outcome = 'unknown-account ' .. head .. ' ' .. to
elseif tonumber(from_balance) < amount then
  outcome = 'insufficient-funds ' .. head .. ' ' .. from_balance
elseif tonumber(to_balance) > tonumber(ARGV[6]) - amount then
  outcome = 'balance-limit ' .. head .. ' ' .. to_balance
else
  local f = redis.call('HINCRBY', KEYS[1], from, '-' .. ARGV[3])
  local t = redis.call('HINCRBY', KEYS[1], to, ARGV[3])
  local fv = redis.call('HINCRBY', KEYS[2], from, 1)
  local tv = redis.call('HINCRBY', KEYS[2], to, 1)
  outcome = 'done ' .. head .. ' ' .. string.format('%d %d %d %d', f, t, fv, tv)
end
redis.call('SET', KEYS[3], outcome, 'PX', ARGV[5])
return {0, outcome}
";

/// What became of a transfer, as stored under its correlation id.
///
/// Stored as one line of space-separated fields (account ids hold no spaces):
/// `<result> <from> <to> <amount> <at>` and then, by result,
/// `done`: from's and to's new balance and version;
/// `insufficient-funds`: from's balance; `balance-limit`: to's balance;
/// `unknown-account`: the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The transfer as first requested under this correlation id.
    pub transfer: Transfer,
    /// When it was performed (unix ms).
    pub at: u64,
    /// The result.
    pub result: TransferResult,
}

/// The result of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferResult {
    /// The money moved.
    Done {
        /// `from`'s new balance.
        from_balance: u64,
        /// `to`'s new balance.
        to_balance: u64,
        /// How many transfers changed `from`, this one included.
        from_version: u64,
        /// How many transfers changed `to`, this one included.
        to_version: u64,
    },
    /// `from` holds less than the amount.
    InsufficientFunds {
        /// `from`'s balance.
        balance: u64,
    },
    /// `to` would hold more than the largest balance.
    BalanceLimit {
        /// `to`'s balance.
        balance: u64,
    },
    /// An account does not exist.
    UnknownAccount(String),
}

/// Redis holds an outcome this version cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed stored outcome {0:?}")]
pub struct MalformedOutcome(pub String);

impl Outcome {
    /// Reads a stored outcome.
    ///
    /// # Errors
    /// [`MalformedOutcome`] when `text` is not one.
    pub fn parse(text: &str) -> Result<Self, MalformedOutcome> {
        let bad = || MalformedOutcome(text.chars().take(200).collect());
        let fields: Vec<&str> = text.split(' ').collect();
        let number = |i: usize| -> Result<u64, MalformedOutcome> {
            fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad)
        };
        let (Some(kind), Some(from), Some(to)) = (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let transfer = Transfer {
            from: (*from).to_owned(),
            to: (*to).to_owned(),
            amount: number(3)?,
        };
        let at = number(4)?;
        let (result, len) = match *kind {
            "done" => (
                TransferResult::Done {
                    from_balance: number(5)?,
                    to_balance: number(6)?,
                    from_version: number(7)?,
                    to_version: number(8)?,
                },
                9,
            ),
            "insufficient-funds" => (
                TransferResult::InsufficientFunds {
                    balance: number(5)?,
                },
                6,
            ),
            "balance-limit" => (
                TransferResult::BalanceLimit {
                    balance: number(5)?,
                },
                6,
            ),
            "unknown-account" => (
                TransferResult::UnknownAccount((*fields.get(5).ok_or_else(bad)?).to_owned()),
                6,
            ),
            _ => return Err(bad()),
        };
        if fields.len() != len {
            return Err(bad());
        }
        Ok(Self {
            transfer,
            at,
            result,
        })
    }
}

/// What the transfer script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Performed {
    /// The outcome: of this call, or stored by an earlier delivery.
    pub outcome: Outcome,
    /// Whether the outcome was stored by an earlier delivery (nothing changed now).
    pub replayed: bool,
}

/// A Redis operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A command failed.
    #[error("redis command: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis holds something that is not a balance or an outcome.
    #[error("redis holds {0}")]
    Malformed(String),
}

impl From<MalformedOutcome> for StoreError {
    fn from(e: MalformedOutcome) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// The ledger's Redis operations, over a pool of multiplexed connections.
#[derive(Clone)]
pub struct Store {
    connections: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
    keys: Keys,
    timeout: Duration,
    outcome_ttl_ms: u64,
    transfer: redis::Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Operations on the Redis of `settings`: keys under its `prefix`, each
    /// bounded by its `timeout`, outcomes kept for its `ttl`. Connects lazily:
    /// Redis need not be up yet.
    ///
    /// # Errors
    /// [`InvalidSetting`] when the URL cannot be used.
    pub fn new(settings: &RedisSettings) -> Result<Self, InvalidSetting> {
        let connections = settings.connections()?;
        if connections.is_empty() {
            return Err(InvalidSetting::new("redis.pool_size", "must be 1 to 64"));
        }
        Ok(Self {
            connections: connections.into(),
            next: Arc::default(),
            keys: Keys::new(settings.prefix.clone()),
            timeout: settings.timeout,
            outcome_ttl_ms: u64::try_from(settings.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            transfer: redis::Script::new(TRANSFER_LUA),
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    async fn bounded<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// Opens the accounts that do not exist yet with their opening balance;
    /// existing balances are never overwritten. Returns the accounts opened now.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not acknowledge.
    pub async fn open_accounts(
        &self,
        accounts: &BTreeMap<String, u64>,
    ) -> Result<Vec<String>, StoreError> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.keys.balances();
        let mut pipe = redis::pipe();
        for (account, balance) in accounts {
            pipe.hset_nx(&key, account, balance);
        }
        let created: Vec<bool> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(pipe.query_async(&mut conn).await?)
            })
            .await?;
        Ok(accounts
            .keys()
            .zip(created)
            .filter(|(_, new)| *new)
            .map(|(account, _)| account.clone())
            .collect())
    }

    /// An account's balance, `None` when it does not exist.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer or holds no number.
    pub async fn balance(&self, account: &str) -> Result<Option<u64>, StoreError> {
        let key = self.keys.balances();
        let balance: Option<String> = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(redis::cmd("HGET")
                    .arg(&key)
                    .arg(account)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        balance
            .map(|b| {
                b.parse()
                    .map_err(|_| StoreError::Malformed(format!("balance {b:?} of {account}")))
            })
            .transpose()
    }

    /// Performs `transfer` under `correlation_id` at `at` (unix ms), or returns
    /// the outcome an earlier delivery of the same command stored.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer (then nothing or everything of
    /// the transfer happened: the script is atomic; a retry under the same
    /// correlation id finds out which).
    pub async fn transfer(
        &self,
        correlation_id: &str,
        transfer: &Transfer,
        at: u64,
    ) -> Result<Performed, StoreError> {
        let mut invocation = self.transfer.key(self.keys.balances());
        invocation
            .key(self.keys.versions())
            .key(self.keys.outcome(correlation_id))
            .arg(&transfer.from)
            .arg(&transfer.to)
            .arg(transfer.amount)
            .arg(at)
            .arg(self.outcome_ttl_ms)
            .arg(crate::command::MAX_AMOUNT);
        let (replayed, outcome): (i64, String) = self
            .bounded(async {
                let mut conn = self.connection();
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        Ok(Performed {
            outcome: Outcome::parse(&outcome)?,
            replayed: replayed == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> Transfer {
        Transfer {
            from: "alice".into(),
            to: "bob".into(),
            amount: 250,
        }
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("ledger");
        assert_eq!(keys.balances(), "{ledger}:balances");
        assert_eq!(keys.versions(), "{ledger}:versions");
        assert_eq!(keys.outcome("id-1"), "{ledger}:transfer:id-1");
    }

    #[test]
    fn reads_every_stored_outcome() {
        let parsed = Outcome::parse("done alice bob 250 1700000000000 9750 750 3 1").unwrap();
        assert_eq!(
            parsed,
            Outcome {
                transfer: transfer(),
                at: 1_700_000_000_000,
                result: TransferResult::Done {
                    from_balance: 9750,
                    to_balance: 750,
                    from_version: 3,
                    to_version: 1,
                },
            }
        );
        assert_eq!(
            Outcome::parse("insufficient-funds alice bob 250 1 100")
                .unwrap()
                .result,
            TransferResult::InsufficientFunds { balance: 100 }
        );
        assert_eq!(
            Outcome::parse("balance-limit alice bob 250 1 9007199254740991")
                .unwrap()
                .result,
            TransferResult::BalanceLimit {
                balance: 9_007_199_254_740_991
            }
        );
        assert_eq!(
            Outcome::parse("unknown-account alice bob 250 1 bob")
                .unwrap()
                .result,
            TransferResult::UnknownAccount("bob".into())
        );
    }

    #[test]
    fn malformed_outcomes_are_errors() {
        for bad in [
            "",
            "done",
            "done alice bob 250 1 9750 750 3",
            "done alice bob 250 1 9750 750 3 1 extra",
            "done alice bob x 1 9750 750 3 1",
            "done alice bob 250 1 9.75e3 750 3 1",
            "insufficient-funds alice bob 250 1 -5",
            "refunded alice bob 250 1 0",
        ] {
            assert!(Outcome::parse(bad).is_err(), "{bad:?}");
        }
    }
}
