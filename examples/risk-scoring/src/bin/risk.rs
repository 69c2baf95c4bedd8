//! `replyway-risk-scoring`: one instance of the risk-scoring demo (a `Requester`).

use std::path::PathBuf;

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
async fn main() {
    let args: Args = settings::parse_args(&Settings::default());
    let status = service::run(
        "risk scoring",
        args.config.as_deref(),
        |_: &mut Settings| {},
        Ok,
        |settings, _stop| async move {
            let outcome = replyway_risk_scoring::score_customers(&settings).await?;
            println!("{}", serde_json::json!(outcome));
            tracing::info!(node_id = %outcome.node_id, own = outcome.own, foreign = outcome.foreign, failed = outcome.failed, "scoring run finished");
            anyhow::ensure!(
                outcome.own == settings.customers,
                "{} of {} answers were this instance's own",
                outcome.own,
                settings.customers
            );
            Ok(())
        },
    )
    .await;
    std::process::exit(status)
}
