//! `replyway-kyc`: the KYC demo service (a `Responder`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use replyway_risk_scoring::Settings;
use replyway_shared::{settings, shutdown, telemetry};

/// KYC demo service: answers {"customer": "<id>"} with the customer's score.
///
/// Settings: defaults, then the TOML file, then REPLYWAY_<SECTION>__<KEY>
/// environment variables (e.g. REPLYWAY_KAFKA__BROKERS).
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
    let telemetry = telemetry::init(&settings.log);
    let code = match replyway_risk_scoring::serve_kyc(&settings, shutdown::on_signals()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("kyc service failed: {e:#}");
            1
        }
    };
    telemetry.shutdown();
    std::process::exit(code)
}
