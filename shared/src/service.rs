//! Start-up and exit shared by Replyway's binaries: settings, logging,
//! signals and the exit status.
//!
//! ```no_run
//! # use replyway_shared::service::{self, ServiceSettings};
//! # #[derive(Default, serde::Serialize, serde::Deserialize)]
//! # struct Settings { log: replyway_shared::settings::LogSettings }
//! # impl ServiceSettings for Settings {
//! #     fn log(&self) -> &replyway_shared::settings::LogSettings { &self.log }
//! # }
//! # async fn run(_: &Settings, _: tokio_util::sync::CancellationToken) -> anyhow::Result<()> { Ok(()) }
//! # async fn main_() -> std::process::ExitCode {
//! let (settings, telemetry) = service::start::<Settings>(None, |_| {});
//! service::serve("my service", settings, telemetry, |settings, stop| async move {
//!     run(&settings, stop).await
//! })
//! .await
//! # }
//! ```

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::settings::{InvalidSetting, LogSettings};
use crate::telemetry::{self, Telemetry};

/// The settings of one of Replyway's binaries.
pub trait ServiceSettings: Serialize + DeserializeOwned + Default {
    /// Logging and span export.
    fn log(&self) -> &LogSettings;

    /// Checks what the types alone cannot.
    ///
    /// # Errors
    /// The first invalid setting.
    fn check(&self) -> Result<(), InvalidSetting> {
        Ok(())
    }
}

/// Loads the settings (built-in defaults, then the `config` file, then
/// `REPLYWAY_…` environment variables), lets `adjust` apply command-line
/// overrides, starts logging and checks the settings. An invalid setting is
/// reported, naming it, and the process exits with status 2.
pub fn start<S: ServiceSettings>(
    config: Option<&Path>,
    adjust: impl FnOnce(&mut S),
) -> (S, Telemetry) {
    let mut settings: S = match crate::settings::load(&S::default(), config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    adjust(&mut settings);
    let telemetry = telemetry::init(settings.log());
    if let Err(e) = settings.check() {
        tracing::error!("invalid configuration: {e}");
        telemetry.shutdown();
        std::process::exit(2);
    }
    (settings, telemetry)
}

/// Runs `serve` until SIGINT or SIGTERM cancels its token, exports the spans
/// still buffered and exits the process: status 0 when `serve` ended well, 1
/// after logging its error. It exits at once, not through the runtime: a Kafka
/// client that could not leave its group (broker gone) may still hold a
/// blocking thread, which the runtime would wait for.
pub async fn serve<S, F, Fut>(name: &str, settings: S, telemetry: Telemetry, serve: F) -> ExitCode
where
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let code = match serve(settings, crate::shutdown::on_signals()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{name} failed: {e:#}");
            1
        }
    };
    telemetry.shutdown();
    std::process::exit(code)
}
