//! gRPC over unix sockets, the way every crisp service serves and dials it.
//!
//! - [`start`]: parse the command line, load the configuration, install telemetry.
//! - [`UnixSocket`]: bind a unix socket safely (a stale file is replaced, a live one is not),
//!   set its mode, remove it at shutdown.
//! - [`server`]: a tonic server with a span on every RPC; add `tonic_health` beside the
//!   service so the proxy can check it.
//! - [`shutdown_signal`]: SIGINT or SIGTERM.
//! - [`unix_channel`]: a client channel to a service's socket (from `crisp-grpc-dial`).
//! - [`authority`]: any `:authority` a client sends on a unix socket accepted
//!   ([`UnixListenerStream`] serves every accepted connection through it).
//! - [`timeout`]: the caller's `grpc-timeout`.

pub mod authority;
mod socket;
pub mod timeout;

pub use authority::{AuthorityFix, UnixListenerStream};

pub use crisp_grpc_dial::{unix_channel, unix_channel_with_backoff};

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

/// The largest CRI message a service sends or accepts (the kubelet's limit too): lists on a
/// busy node outgrow tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The whole life of a service binary: builds the Tokio runtime, [`start`]s (command line,
/// configuration, telemetry), runs `run`, and turns its error into a logged message and a
/// failure exit status. Spans are flushed before the process exits.
pub fn run_service<F, Fut>(service_name: &'static str, about: &'static str, run: F) -> std::process::ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    run_on(tokio::runtime::Builder::new_multi_thread(), service_name, about, run)
}

/// [`run_service`] on a runtime of one thread, for a service whose work per call is small and
/// whose added latency matters most (the front proxy): a call's steps never wait for another
/// thread to wake, which on a busy node costs more than the work itself.
pub fn run_service_single_threaded<F, Fut>(
    service_name: &'static str,
    about: &'static str,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    run_on(tokio::runtime::Builder::new_current_thread(), service_name, about, run)
}

fn run_on<F, Fut>(
    mut builder: tokio::runtime::Builder,
    service_name: &'static str,
    about: &'static str,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{service_name}: cannot start the Tokio runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (config, telemetry) = start(service_name, about);
        let code = match run(config).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("{err}");
                eprintln!("{service_name}: {err}");
                std::process::ExitCode::FAILURE
            }
        };
        drop(telemetry);
        code
    })
}

/// How many streams a peer may reset before the server has accepted them, on one HTTP/2
/// connection, before the server closes it (h2's "rapid reset" guard; its default is 20). A
/// crisp socket is local and root's: the proxy forwards every call the kubelet cancels as a
/// reset, and a burst of cancelled calls (deadlines of a few milliseconds, a kubelet restart)
/// must not close the one connection that carries every other call to that backend.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 4096;

/// A tonic server builder with a span on every RPC.
pub fn server() -> tonic::transport::Server<Stack<RpcTraceLayer, tower_layer::Identity>> {
    tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .layer(RpcTraceLayer::server())
}

/// How long calls in flight may run on after SIGTERM before the service exits anyway.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a server until SIGINT or SIGTERM, then lets the calls in flight finish for at most
/// [`DRAIN_TIMEOUT`]. `serve` gets the shutdown future to pass to tonic's
/// `serve_with_incoming_shutdown`. The bound matters: a graceful tonic server also waits for
/// idle connections (the proxy keeps one open to each backend) to close.
pub async fn serve_until_shutdown<F, Fut, E>(serve: F) -> Result<(), E>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = Box::pin(async move {
        shutdown_signal().await;
        let _ = stopping.send(());
    });
    let server = serve(signal);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        _ = async {
            if stopped.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after the shutdown signal; exiting");
            Ok(())
        }
    }
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
