//! `crisp-probe`: asks a CRI socket for Version and Status, as the kubelet does when it starts,
//! and prints the answers. `deploy/up.sh` uses it to wait for the node stack.
//!
//! crisp-probe [--wait 60s] [SOCKET]     (SOCKET defaults to the configured proxy socket)
//! crisp-probe --print-socket            (prints the configured proxy socket)

use clap::Parser;
use crisp_config::{Config, ConfigArgs};
use crisp_proto::cri::runtime_service_client::RuntimeServiceClient;
use crisp_proto::cri::{StatusRequest, VersionRequest};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Asks a CRI socket for Version and Status")]
struct Cli {
    /// The CRI socket; the configured proxy socket when left out.
    socket: Option<PathBuf>,
    /// Keep trying for this long before giving up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wait: Duration,
    /// Print the configured proxy socket and exit.
    #[arg(long)]
    print_socket: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("crisp-probe: {err}");
            return ExitCode::from(2);
        }
    };
    let socket = cli.socket.unwrap_or(config.proxy.socket);
    if cli.print_socket {
        println!("{}", socket.display());
        return ExitCode::SUCCESS;
    }

    let mut client = RuntimeServiceClient::new(crisp_testkit::cri_channel(&socket));
    let started = Instant::now();
    let version = loop {
        match client.version(VersionRequest { version: "v1".into() }).await {
            Ok(version) => break version.into_inner(),
            Err(status) if started.elapsed() < cli.wait => {
                let _ = status;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => {
                eprintln!("crisp-probe: {}: {} ({:?})", socket.display(), status.message(), status.code());
                return ExitCode::FAILURE;
            }
        }
    };
    println!(
        "{}: {} {} (CRI {})",
        socket.display(),
        version.runtime_name,
        version.runtime_version,
        version.runtime_api_version
    );
    match client.status(StatusRequest { verbose: false }).await {
        Ok(status) => {
            for c in status.into_inner().status.map(|s| s.conditions).unwrap_or_default() {
                let detail = if c.status { String::new() } else { format!(" ({}: {})", c.reason, c.message) };
                println!("  {}={}{}", c.r#type, c.status, detail);
            }
        }
        Err(status) => println!("  Status: {} ({:?})", status.message(), status.code()),
    }
    ExitCode::SUCCESS
}
