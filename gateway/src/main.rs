//! `replyway-gateway`: the HTTP front of Replyway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use replyway_gateway::Settings;
use replyway_shared::{settings, shutdown, telemetry};

/// Replyway gateway: turns HTTP requests into Kafka commands and answers them
/// with the replies, through Redis.
///
/// Settings come from built-in defaults, then the TOML file, then environment
/// variables REPLYWAY_<SECTION>__<KEY> (e.g. REPLYWAY_REDIS__URL,
/// REPLYWAY_KAFKA__BROKERS, REPLYWAY_LISTEN). See README.md for every setting.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML settings file.
    #[arg(long, short, env = "REPLYWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = settings::parse_args(&Settings::default());
    let mut settings = match settings::load(&Settings::default(), args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    let telemetry = telemetry::init(&settings.log);
    if let Err(e) = settings.validate() {
        tracing::error!("invalid configuration: {e}");
        telemetry.shutdown();
        return ExitCode::from(2);
    }
    let served = serve(settings).await;
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("gateway failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    replyway_gateway::run(settings, listener, shutdown::on_signals()).await
}
