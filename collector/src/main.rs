//! `replyway-collector`: stores every reply in Redis and notifies the waiting gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use replyway_collector::Settings;
use replyway_shared::{settings, shutdown, telemetry};

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
    let settings: Settings = match settings::load(&Settings::default(), args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(&settings.log);
    if let Err(e) = settings.validate() {
        tracing::error!("invalid configuration: {e}");
        telemetry.shutdown();
        return ExitCode::from(2);
    }
    let code = match replyway_collector::run(&settings, shutdown::on_signals()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("collector failed: {e:#}");
            1
        }
    };
    // Exit now: a consumer that could not leave its group (broker gone) may
    // still hold a blocking thread, which the runtime would wait for.
    telemetry.shutdown();
    std::process::exit(code)
}
