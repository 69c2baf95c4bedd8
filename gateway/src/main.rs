//! `replyway-gateway`: the HTTP front of Replyway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use replyway_gateway::Settings;
use replyway_shared::{service, settings};

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
    let (settings, telemetry) = service::start::<Settings>(args.config.as_deref(), |settings| {
        if let Some(listen) = args.listen {
            settings.listen = listen;
        }
    });
    service::serve(
        "gateway",
        settings,
        telemetry,
        |settings, stop| async move {
            let listener = tokio::net::TcpListener::bind(&settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            replyway_gateway::run(settings, listener, stop).await
        },
    )
    .await
}
