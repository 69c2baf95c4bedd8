//! `replyway-ledger`: the ledger demo service.

use std::path::PathBuf;

use clap::Parser;

use replyway_ledger::Settings;
use replyway_shared::{service, settings};

/// Replyway ledger demo service: moves money between accounts kept in Redis
/// (POST /ledger/transfers), answers balances (GET /ledger/accounts/{account})
/// and emits balance-changed events.
///
/// Settings: defaults, then the TOML file, then REPLYWAY_<SECTION>__<KEY>
/// environment variables (e.g. REPLYWAY_KAFKA__BROKERS, REPLYWAY_REDIS__URL).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML settings file.
    #[arg(long, short, env = "REPLYWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args: Args = settings::parse_args(&Settings::default());
    let status = service::run(
        "ledger service",
        args.config.as_deref(),
        |_: &mut Settings| {},
        Ok,
        |settings, stop| async move { replyway_ledger::run(&settings, stop).await },
    )
    .await;
    std::process::exit(status)
}
