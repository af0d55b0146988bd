//! gRPC over unix sockets, the way every crisp service serves and dials it.
//!
//! - [`start`]: parse the command line, load the configuration, install telemetry.
//! - [`UnixSocket`]: bind a unix socket safely (a stale file is replaced, a live one is not),
//!   set its mode, remove it at shutdown.
//! - [`server`]: a tonic server with a span on every RPC; add `tonic_health` beside the
//!   service so the proxy can check it.
//! - [`shutdown_signal`]: SIGINT or SIGTERM.
//! - [`unix_channel`]: a client channel to a service's socket.

mod dial;
mod socket;

pub use dial::{unix_channel, unix_channel_with_backoff};

pub use socket::{SocketError, UnixSocket};

use clap::Parser;
use crisp_config::{Config, ConfigArgs};
use crisp_telemetry::{RpcTraceLayer, Telemetry};
use tower_layer::Stack;

/// The command line every crisp service binary takes: the configuration flags.
#[derive(Debug, Parser)]
#[command(version, about = None, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Parses the command line, loads and checks the configuration and installs telemetry. On a
/// bad command line or configuration it prints why and exits with status 2.
pub fn start(service_name: &'static str, about: &'static str) -> (Config, Telemetry) {
    let cli = Cli::command_with_about(about);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{service_name}: {err}");
            std::process::exit(2);
        }
    };
    let telemetry = match crisp_telemetry::init(service_name, &config.telemetry) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{service_name}: {err}");
            std::process::exit(2);
        }
    };
    (config, telemetry)
}

impl Cli {
    fn command_with_about(about: &'static str) -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().about(about).get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(err) => err.exit(),
        }
    }
}

/// A tonic server builder with a span on every RPC.
pub fn server() -> tonic::transport::Server<Stack<RpcTraceLayer, tower_layer::Identity>> {
    tonic::transport::Server::builder().layer(RpcTraceLayer::server())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; the service stops only when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
pub use tokio_stream::wrappers::UnixListenerStream;
