//! `replyway-collector`: stores every reply in Redis and notifies the waiting gateway.

use std::path::PathBuf;

use clap::Parser;

use replyway_collector::Collector;
use replyway_collector::Settings;
use replyway_shared::admin::AdminServer;
use replyway_shared::{service, settings};

/// Replyway collector: one consumer group over the reply topics; writes every
/// reply into Redis and notifies the gateway node that waits for it.
///
/// Settings come from built-in defaults, then the TOML file, then environment
/// variables REPLYWAY_<SECTION>__<KEY> (e.g. REPLYWAY_REDIS__URL,
/// REPLYWAY_KAFKA__BROKERS, REPLYWAY_GROUP_ID). See docs/configuration.md for every setting.
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
        "collector",
        args.config.as_deref(),
        |_: &mut Settings| {},
        |settings| {
            let collector = Collector::new(&settings)?;
            Ok((collector, settings.admin_listen))
        },
        |(collector, admin_listen), stop| async move {
            let admin = AdminServer::bind(&admin_listen).await?;
            collector.run_with_admin(admin, stop).await
        },
    )
    .await;
    std::process::exit(status)
}
