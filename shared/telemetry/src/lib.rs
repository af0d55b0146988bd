//! Logs and traces for every crisp service.
//!
//! - [`init`] installs the `tracing` subscriber: logs to stderr (text or JSON) and, when a
//!   collector is configured, OpenTelemetry spans exported over OTLP/gRPC.
//! - [`propagation`] moves W3C trace context (`traceparent`) in and out of gRPC headers, so one
//!   CRI call is one trace across the proxy, a backend and containerd.
//! - [`RpcTraceLayer`] puts a span on every RPC a server answers.

pub mod propagation;
mod rpc_layer;

pub use rpc_layer::{RpcTraceLayer, RpcTraceService};

use crisp_config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid config field `telemetry.log_level`: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("cannot set up the OTLP exporter for {endpoint}: {source}")]
    Exporter { endpoint: String, source: opentelemetry_otlp::ExporterBuildError },
    #[error("a tracing subscriber is already installed: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// How long a service waits at exit for its last spans to reach the collector.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps the trace pipeline alive; dropping it flushes the spans not yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // The flush waits for the export task on the Tokio runtime: on one of the runtime's
        // own threads, let the other threads run it meanwhile.
        let flush = || self.provider.shutdown_with_timeout(FLUSH_TIMEOUT);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        };
        if let Err(err) = result {
            eprintln!("telemetry: flushing spans at shutdown failed: {err}");
        }
    }
}

/// Installs logging and tracing for the service `service_name` (`crisp-proxy`, ...). Must be
/// called inside the Tokio runtime: span export runs on it.
pub fn init(service_name: &'static str, config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::builder().parse(&config.log_level)?;
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());

    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name).build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.clone(), source })?;
        // The batch processor on the Tokio runtime: the tonic exporter needs its reactor.
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        provider = provider.with_span_processor(processor);
    }
    let provider = provider.build();
    // Spans carry OpenTelemetry contexts even when nothing is exported, so that trace context
    // still flows from caller to backend to containerd.
    // Only crisp's own spans become trace spans: the libraries under it (h2, hyper, tonic,
    // tower, and the exporter's own calls) would otherwise flood the export queue.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name))
        .with_filter(Targets::new().with_target("crisp", tracing::Level::INFO));

    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry().with(otel).with(fmt.with_filter(filter)).try_init()?;
    Ok(Telemetry { provider })
}
