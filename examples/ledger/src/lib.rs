//! The ledger demo service, built on the [`Responder`]: moves money between
//! accounts ("move X from A to B") and answers balance queries.
//!
//! * `POST /ledger/transfers` with `{"from":"A","to":"B","amount":X}` → `200`
//!   with both new balances; `409` problem when `from` holds too little; `404`
//!   for an unknown account; `400` for bad input.
//! * `GET /ledger/accounts/{account}` → `200` with the balance, or `404`.
//!
//! State lives in Redis ([`store`]), so any number of ledger replicas agree. A
//! transfer is one atomic script that is idempotent per correlation id: the
//! Responder delivers a command at least once, and a command delivered again
//! gets the first outcome back without moving money twice.
//!
//! After a transfer moved money, one `balance-changed` event per account goes to
//! the events topic ([`events`]), before the reply.
//!
//! With `postgres.url` set, balances live in PostgreSQL instead ([`postgres`]),
//! on the transactional outbox of `replyway_shared::outbox`: a transfer, its
//! reply and its events commit or roll back together, and
//! `replyway-outbox-relay` publishes the reply and the events.

pub mod command;
pub mod events;
pub mod postgres;
pub mod reply;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use replyway_shared::backoff::Backoff;
use replyway_shared::outbox::{OutboxResponder, PostgresSettings};
use replyway_shared::record::{is_valid_correlation_id, unix_millis};
use replyway_shared::responder::{HandlerError, Redeliver, Responder};
use replyway_shared::settings::{
    InvalidSetting, KafkaSettings, LogSettings, RedisSettings, is_valid_topic,
};
use replyway_shared::{Reply, Request};

use crate::command::{Command, MAX_AMOUNT, is_valid_account};
use crate::events::Events;
use crate::store::Store;

/// The ledger service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Request topics served.
    pub topics: Vec<String>,
    /// Topic of the `balance-changed` events.
    pub events_topic: String,
    /// Consumer group of every ledger replica.
    pub group_id: String,
    /// Most commands handled at once.
    pub max_in_flight: usize,
    /// Opening balances in minor units, written at start to accounts that do not
    /// exist yet; an existing balance is never overwritten.
    pub accounts: BTreeMap<String, u64>,
    /// Redis: `prefix` names the ledger's keys, `ttl` is how long a transfer's
    /// outcome is kept to answer a command delivered again.
    pub redis: RedisSettings,
    /// PostgreSQL: when `postgres.url` is set, balances live there, on the
    /// transactional outbox (and Redis is not used).
    pub postgres: PostgresSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            topics: vec!["ledger.requests".into()],
            events_topic: "ledger.events".into(),
            group_id: "replyway-ledger".into(),
            max_in_flight: 1000,
            accounts: BTreeMap::new(),
            redis: RedisSettings {
                prefix: "ledger".into(),
                ttl: Duration::from_secs(24 * 60 * 60),
                ..RedisSettings::default()
            },
            postgres: PostgresSettings::default(),
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl replyway_shared::service::ServiceSettings for Settings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

impl Settings {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.topics.is_empty() {
            return Err(InvalidSetting::new(
                "topics",
                "must name at least one topic",
            ));
        }
        if let Some(bad) = self.topics.iter().find(|t| !is_valid_topic(t)) {
            return Err(InvalidSetting::new(
                "topics",
                format!("{bad:?} is not a legal Kafka topic name"),
            ));
        }
        if !is_valid_topic(&self.events_topic) {
            return Err(InvalidSetting::new(
                "events_topic",
                "not a legal Kafka topic name",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(InvalidSetting::new("group_id", "must not be empty"));
        }
        if self.max_in_flight == 0 {
            return Err(InvalidSetting::new("max_in_flight", "must be at least 1"));
        }
        for (account, balance) in &self.accounts {
            if !is_valid_account(account) {
                return Err(InvalidSetting::new(
                    format!("accounts.{account}"),
                    "an account id is 1 to 64 characters of A-Z a-z 0-9 _ -",
                ));
            }
            if *balance > MAX_AMOUNT {
                return Err(InvalidSetting::new(
                    format!("accounts.{account}"),
                    format!("a balance is at most {MAX_AMOUNT}"),
                ));
            }
        }
        if self.postgres.is_set() {
            self.postgres.validate()?;
        } else {
            self.redis.validate()?;
        }
        self.kafka.validate()
    }
}

/// The ledger's command handler: Redis for state, a producer for events.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    events: Events,
    shutdown: CancellationToken,
}

impl Ledger {
    /// A handler over `store` that produces to `events`; event retries give way
    /// to `shutdown`.
    pub fn new(store: Store, events: Events, shutdown: CancellationToken) -> Self {
        Self {
            store,
            events,
            shutdown,
        }
    }

    /// Answers one command.
    ///
    /// # Errors
    /// When Redis fails the Responder answers `500` (a transfer happened
    /// entirely or not at all). When shutdown comes before the events were
    /// produced, [`Redeliver`]: the command is not answered and is delivered
    /// again after the restart, which produces the events.
    pub async fn handle(&self, request: Request) -> Result<Reply, HandlerError> {
        let command = match command::parse(&request) {
            Ok(command) => command,
            Err(e) => return Ok(reply::command_error(&e)),
        };
        match command {
            Command::Balance(account) => {
                let balance = self.store.balance(&account).await?;
                Ok(reply::balance(&account, balance))
            }
            Command::Transfer(transfer) => {
                let id = &request.correlation_id;
                if !is_valid_correlation_id(id) {
                    // The outcome is kept under the id: bound it (the gateway's
                    // ids always pass).
                    return Ok(reply::command_error(&command::CommandError::Invalid(
                        "the correlation id is not 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
                    )));
                }
                let at = unix_millis(SystemTime::now());
                let performed = self.store.transfer(id, &transfer, at).await?;
                let outcome = &performed.outcome;
                tracing::info!(
                    correlation_id = %id,
                    from = %transfer.from,
                    to = %transfer.to,
                    amount = transfer.amount,
                    replayed = performed.replayed,
                    result = ?outcome.result,
                    "transfer"
                );
                if outcome.transfer == transfer {
                    // Also when replayed: the first delivery may have stopped
                    // before its events were acknowledged.
                    let changes = events::balance_changes(id, outcome);
                    if !changes.is_empty() {
                        let headers = events::event_headers(id, request.client_id.as_deref());
                        if let Err(e) = self
                            .events
                            .publish(&changes, &headers, &self.shutdown)
                            .await
                        {
                            // Shutdown came before the broker took the events:
                            // leave the command for redelivery, which finds the
                            // stored outcome and produces the events again.
                            return Err(Box::new(Redeliver(e.to_string())));
                        }
                    }
                }
                Ok(reply::transfer(id, &transfer, outcome))
            }
        }
    }
}

/// Opens the configured accounts, retrying until Redis answers or `shutdown`.
/// Returns `false` on shutdown.
async fn open_accounts(
    store: &Store,
    accounts: &BTreeMap<String, u64>,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    loop {
        match store.open_accounts(accounts).await {
            Ok(opened) => {
                tracing::info!(?opened, configured = accounts.len(), "accounts opened");
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not open accounts; retrying");
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Serves the ledger topics until `shutdown`.
///
/// # Errors
/// When a setting is invalid, the Kafka clients cannot be created or the final
/// commit fails.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    settings.validate()?;
    if settings.postgres.is_set() {
        return run_on_postgres(settings, shutdown).await;
    }
    let store = Store::new(&settings.redis)?;
    if !open_accounts(&store, &settings.accounts, &shutdown).await {
        return Ok(());
    }
    let events = Events::new(&settings.kafka, &settings.events_topic)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let responder = Responder::new(
        &settings.kafka,
        &settings.group_id,
        &topics,
        settings.max_in_flight,
    )?;
    let ledger = Arc::new(Ledger::new(store, events, shutdown.clone()));
    tracing::info!(
        topics = ?settings.topics,
        events_topic = %settings.events_topic,
        group_id = %settings.group_id,
        redis = %settings.redis.redacted_url(),
        prefix = %settings.redis.prefix,
        "ledger service started"
    );
    responder
        .run(
            move |request| {
                let ledger = Arc::clone(&ledger);
                async move { ledger.handle(request).await }
            },
            shutdown,
        )
        .await?;
    tracing::info!("ledger service stopped");
    Ok(())
}

/// Serves the ledger topics on PostgreSQL's outbox until `shutdown`.
async fn run_on_postgres(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let responder = OutboxResponder::connect(
        &settings.kafka,
        &settings.group_id,
        &topics,
        &settings.postgres,
    )
    .await?;
    let client = settings.postgres.database()?.connect().await?;
    let opened = postgres::open_accounts(&client, &settings.accounts).await?;
    drop(client);
    tracing::info!(
        ?opened,
        configured = settings.accounts.len(),
        "accounts opened"
    );
    tracing::info!(
        topics = ?settings.topics,
        events_topic = %settings.events_topic,
        group_id = %settings.group_id,
        postgres = %settings.postgres.redacted_url(),
        slot = %settings.postgres.slot,
        "ledger service started on the postgres outbox"
    );
    responder
        .run(postgres::PgLedger::new(&settings.events_topic), shutdown)
        .await?;
    tracing::info!("ledger service stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        let mut s = Settings::default();
        s.accounts.insert("alice".into(), 10_000);
        assert!(s.validate().is_ok());
        assert_eq!(s.redis.prefix, "ledger");
        assert_eq!(s.events_topic, "ledger.events");

        let mut bad = s.clone();
        bad.accounts.insert("a b".into(), 1);
        assert_eq!(bad.validate().unwrap_err().setting, "accounts.a b");
        let mut bad = s.clone();
        bad.accounts.insert("rich".into(), MAX_AMOUNT + 1);
        assert_eq!(bad.validate().unwrap_err().setting, "accounts.rich");
        let mut bad = s.clone();
        bad.events_topic = "a/b".into();
        assert_eq!(bad.validate().unwrap_err().setting, "events_topic");
        let mut bad = s;
        bad.redis.prefix = "{x}".into();
        assert_eq!(bad.validate().unwrap_err().setting, "redis.prefix");
    }

    #[tokio::test]
    async fn bad_commands_are_answered_without_redis() {
        // Nothing listens there: a command that reached Redis would fail.
        let settings = Settings {
            redis: RedisSettings {
                url: "redis://127.0.0.1:1".into(),
                ..Settings::default().redis
            },
            ..Settings::default()
        };
        let ledger = Ledger::new(
            Store::new(&settings.redis).unwrap(),
            Events::new(&settings.kafka, "ledger.events").unwrap(),
            CancellationToken::new(),
        );
        let request = |method: &str, path: &str, body: &str| Request {
            correlation_id: "c-1".into(),
            method: Some(method.into()),
            path: Some(path.into()),
            body: body.as_bytes().to_vec().into(),
            ..Request::default()
        };
        let reply = ledger
            .handle(request(
                "POST",
                "/ledger/transfers",
                r#"{"from":"a","to":"a","amount":1}"#,
            ))
            .await
            .unwrap();
        assert_eq!(reply.status, 400);
        let reply = ledger
            .handle(request("PUT", "/ledger/transfers", ""))
            .await
            .unwrap();
        assert_eq!(reply.status, 404);
        // A valid command needs Redis: its failure is the handler's error (500).
        let valid = request(
            "POST",
            "/ledger/transfers",
            r#"{"from":"a","to":"b","amount":1}"#,
        );
        assert!(ledger.handle(valid).await.is_err());
    }
}
