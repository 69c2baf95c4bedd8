//! What a ledger command is, read from a request as the gateway sends it: the
//! HTTP method and path (`http-method`, `http-path`), the path parameters
//! (`param-<name>`) and the body.
//!
//! | request | command |
//! |---|---|
//! | `POST /ledger/transfers`, body `{"from":"A","to":"B","amount":X}` | [`Command::Transfer`] |
//! | `GET /ledger/accounts/{account}` | [`Command::Balance`] |

use serde::Deserialize;

use replyway_shared::Request;

/// Path of the transfer command.
pub const TRANSFERS_PATH: &str = "/ledger/transfers";
/// Path prefix of the balance query (`/ledger/accounts/{account}`).
pub const ACCOUNTS_PATH: &str = "/ledger/accounts/";
/// Name of the path parameter that holds the account of a balance query.
pub const ACCOUNT_PARAM: &str = "account";

/// Longest account id.
pub const MAX_ACCOUNT_LEN: usize = 64;

/// Largest amount and largest balance, in minor units: 2^53 − 1.
///
/// The transfer script compares balances in Redis's Lua, whose numbers are
/// doubles; up to 2^53 every integer is exact there.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// Whether `id` is a usable account id: 1 to 64 characters of `A-Za-z0-9_-`.
/// The bound keeps ids usable as Kafka keys, in Redis and in the stored
/// outcome (which separates its fields with spaces).
pub fn is_valid_account(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ACCOUNT_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Move `amount` minor units from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Account debited.
    pub from: String,
    /// Account credited.
    pub to: String,
    /// Minor units, 1 to [`MAX_AMOUNT`].
    pub amount: u64,
}

/// A ledger command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Move money between two accounts.
    Transfer(Transfer),
    /// Read an account's balance.
    Balance(String),
}

/// Why a request is not a ledger command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// A command of the ledger, but its input is wrong (answered `400`).
    #[error("{0}")]
    Invalid(String),
    /// No ledger command has this method and path (answered `404`).
    #[error("no ledger command for {method} {path}")]
    Unknown {
        /// The request's HTTP method.
        method: String,
        /// The request's HTTP path.
        path: String,
    },
}

/// The body of a transfer as clients send it. Unknown fields are an error, so
/// a misspelt `amount` is not silently a different command.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    from: String,
    to: String,
    amount: u64,
}

impl Transfer {
    /// Reads and checks a transfer body.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] saying what is wrong.
    pub fn from_json(body: &[u8]) -> Result<Self, CommandError> {
        let body: TransferBody = serde_json::from_slice(body).map_err(|e| {
            CommandError::Invalid(format!(
                "body must be {{\"from\":\"A\",\"to\":\"B\",\"amount\":N}}: {e}"
            ))
        })?;
        for (field, id) in [("from", &body.from), ("to", &body.to)] {
            check_account(field, id)?;
        }
        if body.from == body.to {
            return Err(CommandError::Invalid(
                "from and to must be different accounts".into(),
            ));
        }
        if body.amount == 0 || body.amount > MAX_AMOUNT {
            return Err(CommandError::Invalid(format!(
                "amount must be a whole number of minor units from 1 to {MAX_AMOUNT}"
            )));
        }
        Ok(Self {
            from: body.from,
            to: body.to,
            amount: body.amount,
        })
    }
}

fn check_account(field: &str, id: &str) -> Result<(), CommandError> {
    if is_valid_account(id) {
        Ok(())
    } else {
        Err(CommandError::Invalid(format!(
            "{field} must be an account id of 1 to {MAX_ACCOUNT_LEN} characters of A-Z a-z 0-9 _ -"
        )))
    }
}

/// Reads the command of `request`.
///
/// # Errors
/// [`CommandError::Unknown`] when no command has the request's method and path,
/// [`CommandError::Invalid`] when its input is wrong.
pub fn parse(request: &Request) -> Result<Command, CommandError> {
    let method = request.method.as_deref().unwrap_or_default();
    let path = request.path.as_deref().unwrap_or_default();
    match method {
        "POST" if path == TRANSFERS_PATH => {
            Transfer::from_json(&request.body).map(Command::Transfer)
        }
        "GET" if path.starts_with(ACCOUNTS_PATH) => {
            let account = request.params.get(ACCOUNT_PARAM).ok_or_else(|| {
                CommandError::Invalid(format!("missing path parameter {ACCOUNT_PARAM}"))
            })?;
            check_account(ACCOUNT_PARAM, account)?;
            Ok(Command::Balance(account.clone()))
        }
        _ => Err(CommandError::Unknown {
            method: method.to_owned(),
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: Some(method.into()),
            path: Some(path.into()),
            body: body.as_bytes().to_vec().into(),
            ..Request::default()
        }
    }

    fn invalid(body: &str) -> String {
        match parse(&request("POST", TRANSFERS_PATH, body)) {
            Err(CommandError::Invalid(why)) => why,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn account_ids_are_bounded() {
        assert!(is_valid_account("alice"));
        assert!(is_valid_account("A-1_b"));
        assert!(is_valid_account(&"a".repeat(64)));
        assert!(!is_valid_account(&"a".repeat(65)));
        for bad in ["", "a b", "a:b", "a{b}", "ä", "a\n"] {
            assert!(!is_valid_account(bad), "{bad:?}");
        }
    }

    #[test]
    fn reads_a_transfer() {
        let command = parse(&request(
            "POST",
            TRANSFERS_PATH,
            r#"{"from":"alice","to":"bob","amount":250}"#,
        ));
        assert_eq!(
            command,
            Ok(Command::Transfer(Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 250
            }))
        );
    }

    #[test]
    fn rejects_bad_transfers_saying_why() {
        assert!(invalid("not json").contains("body must be"));
        assert!(invalid(r#"{"from":"a","to":"b"}"#).contains("amount"));
        assert!(invalid(r#"{"from":"a","to":"b","amount":1,"memo":"x"}"#).contains("memo"));
        for amount in ["0", "-5", "1.5", "\"10\"", "9007199254740992", "1e3"] {
            let why = invalid(&format!(r#"{{"from":"a","to":"b","amount":{amount}}}"#));
            assert!(why.contains("amount"), "{amount}: {why}");
        }
        assert!(invalid(r#"{"from":"a","to":"a","amount":1}"#).contains("different"));
        assert!(invalid(r#"{"from":"a b","to":"b","amount":1}"#).starts_with("from"));
        let long = "x".repeat(65);
        assert!(invalid(&format!(r#"{{"from":"a","to":"{long}","amount":1}}"#)).starts_with("to"));
        // The largest amount is accepted.
        let max = format!(r#"{{"from":"a","to":"b","amount":{MAX_AMOUNT}}}"#);
        assert!(parse(&request("POST", TRANSFERS_PATH, &max)).is_ok());
    }

    #[test]
    fn reads_a_balance_query_from_the_path_parameter() {
        let mut r = request("GET", "/ledger/accounts/alice", "");
        r.params.insert("account".into(), "alice".into());
        assert_eq!(parse(&r), Ok(Command::Balance("alice".into())));
        r.params.insert("account".into(), "a b".into());
        assert!(matches!(parse(&r), Err(CommandError::Invalid(_))));
        r.params.clear();
        assert!(matches!(parse(&r), Err(CommandError::Invalid(_))));
    }

    #[test]
    fn other_methods_and_paths_are_unknown() {
        for (method, path) in [
            ("GET", TRANSFERS_PATH),
            ("POST", "/ledger/accounts/alice"),
            ("POST", "/ledger/transfers/1"),
            ("DELETE", "/ledger/accounts/alice"),
        ] {
            assert!(
                matches!(
                    parse(&request(method, path, "{}")),
                    Err(CommandError::Unknown { .. })
                ),
                "{method} {path}"
            );
        }
        // A record that did not come through the gateway.
        assert!(matches!(
            parse(&Request::default()),
            Err(CommandError::Unknown { .. })
        ));
    }
}
