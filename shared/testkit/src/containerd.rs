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

/// A test's containerd takes its shims with it: a shim outlives containerd by design (its
/// containers keep running through a restart), so without this every container a test left
/// running would stay on the machine, with its shim, after the test.
impl Drop for ContainerdProcess {
    fn drop(&mut self) {
        kill_shims_of(&self.address);
    }
}

/// SIGKILLs every `containerd-shim-runc-v2` serving the containerd at `address`, and every
/// process below each (the containers' processes, which the shim reaps as subreaper).
fn kill_shims_of(address: &Path) {
    let address = address.as_os_str().as_encoded_bytes();
    let mut parents: Vec<(i32, i32)> = Vec::new();
    let mut shims: Vec<i32> = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so read after the last `)`.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        else {
            continue;
        };
        parents.push((pid, ppid));
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        if is_shim && args.windows(2).any(|w| w[0] == b"-address" && w[1] == address) {
            shims.push(pid);
        }
    }
    let mut doomed = shims.clone();
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        doomed.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    // Children first, so that no shim reaps and reports what is about to go anyway.
    for pid in doomed.iter().rev() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
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
