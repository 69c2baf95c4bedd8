//! `replyway-gateway`: the HTTP front of Replyway.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use replyway_gateway::Settings;
use replyway_shared::admin::AdminServer;
use replyway_shared::{service, settings};
use tokio::net::TcpListener;

/// Replyway gateway: turns HTTP requests into Kafka commands and answers them
/// with the replies, through Redis.
///
/// Settings come from built-in defaults, then the TOML file, then environment
/// variables REPLYWAY_<SECTION>__<KEY> (e.g. REPLYWAY_REDIS__URL,
/// REPLYWAY_KAFKA__BROKERS, REPLYWAY_LISTEN). See docs/configuration.md for every setting.
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
async fn main() {
    let args: Args = settings::parse_args(&Settings::default());
    let status = service::run(
        "gateway",
        args.config.as_deref(),
        |settings: &mut Settings| {
            if let Some(listen) = args.listen {
                settings.listen = listen;
            }
        },
        |settings| Ok(settings.build()?),
        |config, stop| async move {
            let listen = config.settings.listen.clone();
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let admin = AdminServer::bind(&config.settings.admin_listen).await?;
            replyway_gateway::run(config, listener, admin, stop).await
        },
    )
    .await;
    std::process::exit(status)
}
