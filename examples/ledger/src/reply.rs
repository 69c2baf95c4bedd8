//! The ledger's answers: JSON for success, RFC 9457 `application/problem+json`
//! with a `type` of the form `urn:replyway:ledger:<kind>` for every refusal.

use serde::Serialize;
use serde_json::{Map, Value, json};

use replyway_shared::Reply;

use crate::command::{CommandError, MAX_AMOUNT, Transfer};
use crate::store::{Outcome, TransferResult};

/// Problem `type` prefix.
pub const PROBLEM_PREFIX: &str = "urn:replyway:ledger:";

/// An RFC 9457 problem body; the standard members first, for people reading it.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The body of a transfer that moved money.
#[derive(Serialize)]
struct Done<'a> {
    transfer_id: &'a str,
    from: &'a str,
    to: &'a str,
    amount: u64,
    balances: Map<String, Value>,
    at: u64,
}

/// The body of a balance query.
#[derive(Serialize)]
struct Balance<'a> {
    account: &'a str,
    balance: u64,
}

/// An RFC 9457 problem reply with extension members `extra` (a JSON object).
pub fn problem(status: u16, kind: &str, title: &str, detail: &str, extra: Value) -> Reply {
    let body = Problem {
        kind: format!("{PROBLEM_PREFIX}{kind}"),
        title,
        status,
        detail,
        extra: match extra {
            Value::Object(extra) => extra,
            _ => Map::new(),
        },
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    Reply::with_body(status, "application/problem+json", body)
}

fn json_reply<T: Serialize>(body: &T) -> Reply {
    let body = serde_json::to_string(body).unwrap_or_default();
    Reply::with_body(200, "application/json", body)
}

/// The answer to a request that is not a valid ledger command.
pub fn command_error(e: &CommandError) -> Reply {
    match e {
        CommandError::Invalid(why) => {
            problem(400, "invalid-request", "Bad Request", why, json!({}))
        }
        CommandError::Unknown { .. } => problem(
            404,
            "unknown-command",
            "Not Found",
            &e.to_string(),
            json!({}),
        ),
    }
}

/// The answer to a balance query.
pub fn balance(account: &str, balance: Option<u64>) -> Reply {
    match balance {
        Some(balance) => json_reply(&Balance { account, balance }),
        None => unknown_account(account),
    }
}

fn unknown_account(account: &str) -> Reply {
    problem(
        404,
        "unknown-account",
        "Not Found",
        &format!("there is no account {account}"),
        json!({ "account": account }),
    )
}

/// The answer to the transfer `requested` under `transfer_id`, whose stored
/// outcome is `outcome` (of this delivery or of an earlier one).
pub fn transfer(transfer_id: &str, requested: &Transfer, outcome: &Outcome) -> Reply {
    let t = &outcome.transfer;
    if t != requested {
        // Another command under the same correlation id: never the gateway's
        // doing (it issues a fresh id per request), but a hand-made record's.
        return problem(
            422,
            "transfer-id-reused",
            "Unprocessable Content",
            &format!(
                "transfer {transfer_id} was made before with other accounts or amount; a new transfer needs a new correlation id"
            ),
            json!({ "transfer_id": transfer_id }),
        );
    }
    match &outcome.result {
        TransferResult::Done {
            from_balance,
            to_balance,
            ..
        } => {
            let mut balances = Map::new();
            balances.insert(t.from.clone(), (*from_balance).into());
            balances.insert(t.to.clone(), (*to_balance).into());
            json_reply(&Done {
                transfer_id,
                from: &t.from,
                to: &t.to,
                amount: t.amount,
                balances,
                at: outcome.at,
            })
        }
        TransferResult::InsufficientFunds { balance } => problem(
            409,
            "insufficient-funds",
            "Conflict",
            &format!(
                "account {} holds {balance}, less than the {} requested",
                t.from, t.amount
            ),
            json!({ "account": t.from, "balance": balance, "requested": t.amount }),
        ),
        TransferResult::BalanceLimit { balance } => problem(
            409,
            "balance-limit",
            "Conflict",
            &format!(
                "account {} holds {balance}; {} more would exceed the largest balance {MAX_AMOUNT}",
                t.to, t.amount
            ),
            json!({ "account": t.to, "balance": balance, "requested": t.amount, "limit": MAX_AMOUNT }),
        ),
        TransferResult::UnknownAccount(account) => unknown_account(account),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    fn requested() -> Transfer {
        Transfer {
            from: "alice".into(),
            to: "bob".into(),
            amount: 250,
        }
    }

    fn outcome(result: TransferResult) -> Outcome {
        Outcome {
            transfer: requested(),
            at: 7,
            result,
        }
    }

    #[test]
    fn a_done_transfer_answers_both_balances() {
        let done = outcome(TransferResult::Done {
            from_balance: 9750,
            to_balance: 750,
            from_version: 1,
            to_version: 1,
        });
        let reply = transfer("t-1", &requested(), &done);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            body(&reply),
            json!({"transfer_id":"t-1","from":"alice","to":"bob","amount":250,
                   "balances":{"alice":9750,"bob":750},"at":7})
        );
    }

    #[test]
    fn insufficient_funds_is_a_409_problem_with_balance_and_amount() {
        let reply = transfer(
            "t-1",
            &requested(),
            &outcome(TransferResult::InsufficientFunds { balance: 100 }),
        );
        assert_eq!(reply.status, 409);
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/problem+json")
        );
        let b = body(&reply);
        assert_eq!(b["type"], "urn:replyway:ledger:insufficient-funds");
        assert_eq!(b["status"], 409);
        assert_eq!(
            (&b["account"], &b["balance"], &b["requested"]),
            (&json!("alice"), &json!(100), &json!(250))
        );
        assert!(b["detail"].as_str().unwrap().contains("holds 100"));
        let text = std::str::from_utf8(&reply.body).unwrap();
        assert!(text.starts_with(r#"{"type":"urn:replyway:ledger:insufficient-funds","title":"Conflict","status":409,"detail":"#), "{text}");
    }

    #[test]
    fn unknown_accounts_and_bad_input_are_problems() {
        let reply = transfer(
            "t",
            &requested(),
            &outcome(TransferResult::UnknownAccount("bob".into())),
        );
        assert_eq!(reply.status, 404);
        assert_eq!(body(&reply)["account"], "bob");
        assert_eq!(body(&reply)["type"], "urn:replyway:ledger:unknown-account");
        assert_eq!(balance("carol", None).status, 404);
        let reply = balance("alice", Some(5));
        assert_eq!(
            (reply.status, body(&reply)),
            (200, json!({"account":"alice","balance":5}))
        );
        let reply = command_error(&CommandError::Invalid("amount must be…".into()));
        assert_eq!(reply.status, 400);
        assert_eq!(body(&reply)["detail"], "amount must be…");
        let reply = command_error(&CommandError::Unknown {
            method: "GET".into(),
            path: "/x".into(),
        });
        assert_eq!(reply.status, 404);
    }

    #[test]
    fn another_transfer_under_a_used_id_is_refused() {
        let mut other = requested();
        other.amount = 1;
        let reply = transfer(
            "t-1",
            &other,
            &outcome(TransferResult::InsufficientFunds { balance: 0 }),
        );
        assert_eq!(reply.status, 422);
        assert_eq!(
            body(&reply)["type"],
            "urn:replyway:ledger:transfer-id-reused"
        );
    }
}
