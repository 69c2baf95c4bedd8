//! `replyway-outbox-relay`: publishes a service's transactional outbox
//! (PostgreSQL) to Kafka.

use std::path::PathBuf;

use clap::Parser;

use replyway_shared::admin::AdminServer;
use replyway_shared::outbox::{Relay, RelaySettings};
use replyway_shared::{service, settings};

/// Replyway outbox relay: reads the rows that services commit into the
/// `replyway_outbox` table from PostgreSQL's logical replication (slot
/// `postgres.slot`, plugin pgoutput) and publishes them to Kafka in commit
/// order, deleting each only after the broker acknowledged it.
///
/// Settings: defaults, then the TOML file, then REPLYWAY_<SECTION>__<KEY>
/// environment variables (e.g. REPLYWAY_POSTGRES__URL, REPLYWAY_KAFKA__BROKERS).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML settings file.
    #[arg(long, short, env = "REPLYWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args: Args = settings::parse_args(&RelaySettings::default());
    let status = service::run(
        "outbox relay",
        args.config.as_deref(),
        |_: &mut RelaySettings| {},
        |settings| Ok((Relay::new(&settings)?, settings.admin_listen)),
        |(relay, admin_listen), stop| async move {
            let admin = AdminServer::bind(&admin_listen).await?;
            Ok(relay.run_with_admin(admin, stop).await?)
        },
    )
    .await;
    std::process::exit(status)
}
