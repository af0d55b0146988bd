//! A private containerd for one test.

use crate::ServiceProcess;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// containerd on its own root, state and socket under a directory of the test's. Its CRI
/// plugin is off: crisp is the CRI here.
pub struct ContainerdProcess {
    process: ServiceProcess,
    address: PathBuf,
    root: PathBuf,
}

impl ContainerdProcess {
    /// Starts containerd under `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("root");
        let state = dir.join("state");
        let address = dir.join("containerd.sock");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&state)?;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = root.display(),
                state = state.display(),
                address = address.display(),
                opt = dir.join("opt").display(),
            ),
        )
        .context("writing containerd's config")?;
        let binary = which("containerd")?;
        let process = ServiceProcess::spawn(
            "containerd",
            vec![binary, "--config".into(), config.display().to_string()],
            vec![],
            &dir.join("containerd.log"),
        )?;
        let mut this = Self { process, address, root };
        this.wait_ready().await?;
        Ok(this)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.process.wait_for_socket(&self.address, Duration::from_secs(30)).await?;
        // The socket accepts before every plugin is up: wait for an answer.
        for _ in 0..100 {
            if self.ctr_in("crisp", &["version"]).is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("containerd does not answer on {}:\n{}", self.address.display(), self.process.log_tail())
    }

    /// Kills containerd at once, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts containerd again after [`kill`](Self::kill) and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.start()?;
        self.wait_ready().await
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// containerd's root directory (content store, snapshots).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `ctr` against this containerd in `namespace`; its stdout, or an error with stderr.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .output()
            .context("running ctr")?;
        if !output.status.success() {
            bail!("ctr {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The path of a program on `PATH`.
pub(crate) fn which(program: &str) -> anyhow::Result<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate.display().to_string());
        }
    }
    bail!("{program} is not installed (run deploy/install-deps.sh)")
}
