//! What crisp's tests run against, started for real on temp dirs and free sockets:
//!
//! - [`ContainerdProcess`]: a private containerd (its own root, state and socket; its CRI
//!   plugin off), so tests never touch the node's containerd and can run side by side.
//! - [`otlp::Collector`]: an OTLP trace receiver, for tests of what the services export.
//! - [`Stack`]: that containerd plus the four crisp services and the proxy, as a node runs
//!   them; tests talk CRI to [`Stack::proxy_socket`] the way the kubelet does.
//!
//! Everything started is stopped when its handle is dropped.

mod containerd;
pub mod images;
pub mod otlp;
mod process;
pub mod registry;
mod stack;
pub mod token_auth;

pub use containerd::ContainerdProcess;
pub use process::ServiceProcess;
pub use stack::{Stack, StackOptions};

use std::path::PathBuf;

/// The directory holding crisp's built binaries: `CRISP_BIN_DIR`, or the cargo target
/// directory the running test was built into (`target/<profile>/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CRISP_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>, or target/<profile>/examples/<benchmark>
    let dir = exe
        .parent()
        .and_then(|dir| if dir.ends_with("deps") || dir.ends_with("examples") { dir.parent() } else { Some(dir) })
        .ok_or_else(|| anyhow::anyhow!("cannot tell the target directory from {}", exe.display()))?;
    Ok(dir.to_path_buf())
}

/// crisp's static pause binary (`deploy/build-pause.sh`), built by it when it is not there yet.
/// `CRISP_PAUSE_BINARY` names another.
pub fn pause_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CRISP_PAUSE_BINARY") {
        return Ok(PathBuf::from(path));
    }
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = bin_dir()?.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| workspace.join("target"));
    let path = target.join("x86_64-unknown-linux-gnu/release/crisp-pause");
    if !path.is_file() {
        let status = std::process::Command::new(workspace.join("deploy/build-pause.sh")).status()?;
        anyhow::ensure!(status.success(), "deploy/build-pause.sh failed: {status}");
    }
    *built = Some(path.clone());
    Ok(path)
}

/// A CRI channel to a unix socket.
pub fn cri_channel(socket: &std::path::Path) -> tonic::transport::Channel {
    crisp_grpc_dial::unix_channel(socket, std::time::Duration::from_secs(5))
}
