//! `replyway-kyc`: the KYC demo service (a `Responder`).

use std::path::PathBuf;

use clap::Parser;

use replyway_risk_scoring::Settings;
use replyway_shared::{service, settings};

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
async fn main() {
    let args: Args = settings::parse_args(&Settings::default());
    let status = service::run(
        "kyc service",
        args.config.as_deref(),
        |_: &mut Settings| {},
        Ok,
        |settings, stop| async move { replyway_risk_scoring::serve_kyc(&settings, stop).await },
    )
    .await;
    std::process::exit(status)
}
