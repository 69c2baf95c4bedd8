//! `replyway-collector`: stores every reply in Redis and notifies the waiting gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use replyway_collector::Settings;
use replyway_shared::{service, settings};

/// Replyway collector: one consumer group over the reply topics; writes every
/// reply into Redis and notifies the gateway node that waits for it.
///
/// Settings come from built-in defaults, then the TOML file, then environment
/// variables REPLYWAY_<SECTION>__<KEY> (e.g. REPLYWAY_REDIS__URL,
/// REPLYWAY_KAFKA__BROKERS, REPLYWAY_GROUP_ID). See README.md for every setting.
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
    service::serve(
        "collector",
        settings,
        telemetry,
        |settings, stop| async move { replyway_collector::run(&settings, stop).await },
    )
    .await
}
