//! `replyway-ledger`: the ledger demo service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use replyway_ledger::Settings;
use replyway_shared::{settings, shutdown, telemetry};

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
async fn main() -> ExitCode {
    let args: Args = settings::parse_args(&Settings::default());
    let settings: Settings = match settings::load(&Settings::default(), args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = settings.validate() {
        eprintln!("invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let telemetry = telemetry::init(&settings.log);
    let code = match replyway_ledger::run(&settings, shutdown::on_signals()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("ledger service failed: {e:#}");
            1
        }
    };
    telemetry.shutdown();
    // Exit now: a consumer that could not leave its group (broker gone) may
    // still hold a blocking thread, which the runtime would wait for.
    std::process::exit(code)
}
