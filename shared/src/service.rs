//! Start-up shared by Replyway's binaries: settings, logging, the checked
//! configuration, signals and the exit status. Only `main` exits:
//!
//! ```no_run
//! # use replyway_shared::service::{self, ServiceSettings};
//! # #[derive(Default, serde::Serialize, serde::Deserialize)]
//! # struct Settings { log: replyway_shared::settings::LogSettings }
//! # impl ServiceSettings for Settings {
//! #     fn log(&self) -> &replyway_shared::settings::LogSettings { &self.log }
//! # }
//! # async fn run(_: Settings, _: tokio_util::sync::CancellationToken) -> anyhow::Result<()> { Ok(()) }
//! # async fn main_() {
//! let status = service::run("my service", None, |_: &mut Settings| {}, Ok, |settings, stop| {
//!     run(settings, stop)
//! })
//! .await;
//! std::process::exit(status)
//! # }
//! ```

use std::future::Future;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::settings::LogSettings;
use crate::telemetry;

/// The settings of one of Replyway's binaries.
pub trait ServiceSettings: Serialize + DeserializeOwned + Default {
    /// Logging and span export.
    fn log(&self) -> &LogSettings;
}

/// Exit status of a binary whose configuration is invalid.
pub const INVALID_CONFIGURATION: i32 = 2;
/// Exit status of a binary that failed while serving (or binding).
pub const FAILED: i32 = 1;

/// Runs one of Replyway's binaries and returns its exit status:
///
/// 1. loads the settings (built-in defaults, then the `config` file, then
///    `REPLYWAY_…` environment variables) and lets `adjust` apply command-line
///    overrides;
/// 2. starts logging;
/// 3. `build`s the checked configuration once: an error is reported, naming
///    the setting, with status [`INVALID_CONFIGURATION`];
/// 4. `serve`s it until SIGINT or SIGTERM cancels its token (status 0, or
///    [`FAILED`] after logging its error), and exports the spans still buffered.
///
/// The caller exits with the status at once (`std::process::exit`), not
/// through the runtime: a Kafka client that could not leave its group (broker
/// gone) may still hold a blocking thread, which the runtime would wait for.
pub async fn run<S, C, F, Fut>(
    name: &str,
    config: Option<&Path>,
    adjust: impl FnOnce(&mut S),
    build: impl FnOnce(S) -> anyhow::Result<C>,
    serve: F,
) -> i32
where
    S: ServiceSettings,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut settings: S = match crate::settings::load(&S::default(), config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return INVALID_CONFIGURATION;
        }
    };
    adjust(&mut settings);
    let telemetry = telemetry::init(settings.log());
    let status = match build(settings) {
        Err(e) => {
            tracing::error!("invalid configuration: {e:#}");
            INVALID_CONFIGURATION
        }
        Ok(config) => match serve(config, crate::shutdown::on_signals()).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{name} failed: {e:#}");
                FAILED
            }
        },
    };
    telemetry.shutdown();
    status
}
