//! `replyway-risk-scoring`: one instance of the risk-scoring demo (a `Requester`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use replyway_risk_scoring::Settings;
use replyway_shared::{service, settings};

/// Risk-scoring demo instance: asks the KYC service for the scores of
/// `customers` customers of its own and checks that every answer is about the
/// customer it asked for. Prints the outcome as JSON; exits 1 unless every
/// answer was its own. Start several at once: each gets exactly its replies.
///
/// Settings: defaults, then the TOML file, then REPLYWAY_<SECTION>__<KEY>
/// environment variables (e.g. REPLYWAY_REDIS__URL).
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
    let (settings, telemetry) = service::start::<Settings>(args.config.as_deref(), |_| {});
    let outcome = replyway_risk_scoring::score_customers(&settings).await;
    telemetry.shutdown();
    match outcome {
        Ok(outcome) => {
            println!("{}", serde_json::json!(outcome));
            let all_own = outcome.own == settings.customers;
            tracing::info!(node_id = %outcome.node_id, own = outcome.own, foreign = outcome.foreign, failed = outcome.failed, "scoring run finished");
            ExitCode::from(if all_own { 0 } else { 1 })
        }
        Err(e) => {
            tracing::error!("risk scoring failed: {e:#}");
            ExitCode::from(1)
        }
    }
}
