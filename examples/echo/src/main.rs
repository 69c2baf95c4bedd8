//! `replyway-echo`: the demo backend service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use replyway_echo::Settings;
use replyway_shared::{settings, shutdown, telemetry};

/// Replyway echo demo service: replies with the request body; a JSON body with
/// "status": N replies with that status, with "sleep_ms": N waits first.
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
    let code = match replyway_echo::run(&settings, shutdown::on_signals()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("echo service failed: {e:#}");
            1
        }
    };
    // Exit now: a consumer that could not leave its group (broker gone) may
    // still hold a blocking thread, which the runtime would wait for.
    telemetry.shutdown();
    std::process::exit(code)
}
