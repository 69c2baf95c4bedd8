//! Logs and traces for the binaries: text or JSON lines to stderr, filtered by
//! `RUST_LOG` or the configured filter; spans exported over OTLP/HTTP when an
//! endpoint is configured, nothing when not.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::settings::LogSettings;

/// Keeps the span exporter; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
#[must_use = "call shutdown() before exiting, or exported spans may be lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (bounded by the
    /// exporter's own timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("span export shutdown: {e}");
        }
    }
}

fn service_name(settings: &LogSettings) -> String {
    settings.service_name.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "replyway".into())
    })
}

/// Installs the global subscriber (and the span exporter, when configured).
/// Call once, from `main`.
pub fn init(settings: &LogSettings) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if settings.json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let mut failed_export = None;
    let provider = match settings.otlp_endpoint.as_deref() {
        Some(endpoint) => match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service_name(settings))
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                failed_export = Some(e.to_string());
                None
            }
        },
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("replyway"))
            .boxed()
    });
    let result = tracing_subscriber::registry()
        .with(fmt.and_then(otel).with_filter(filter))
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    if let Some(e) = failed_export {
        tracing::error!(error = %e, "span export is off: the OTLP exporter could not be created");
    } else if let Some(endpoint) = &settings.otlp_endpoint {
        tracing::info!(endpoint = %endpoint, "exporting spans over OTLP/HTTP");
    }
    Telemetry { provider }
}
