//! `replyway-echo`: the demo backend service.

use std::path::PathBuf;

use clap::Parser;

use replyway_echo::Settings;
use replyway_shared::{service, settings};

/// Replyway echo demo service: replies with the request body; a JSON body with
/// "status": N replies with that status, with "sleep_ms": N waits first (and
/// stops without a reply when the command is cancelled meanwhile).
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
        "echo service",
        args.config.as_deref(),
        |_: &mut Settings| {},
        |settings: Settings| {
            settings.validate()?;
            Ok(settings)
        },
        |settings, stop| async move { replyway_echo::run(&settings, stop).await },
    )
    .await;
    std::process::exit(status)
}
