//! A child process the tests started, with its log file, stopped when dropped.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A started process. Its stdout and stderr go to `log`.
pub struct ServiceProcess {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `program args...` with the environment `env` added (and every `CRISP_*` and
    /// `OTEL_*` variable of the test's own environment removed, so the machine's settings do
    /// not leak into a test).
    pub fn spawn(name: &str, command: Vec<String>, env: Vec<(String, String)>, log: &Path) -> anyhow::Result<Self> {
        let mut process = Self { name: name.into(), command, env, log: log.to_path_buf(), child: None };
        process.start()?;
        Ok(process)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the process again after it was killed or stopped.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.command[0]);
        command.args(&self.command[1..]);
        for (key, _) in std::env::vars() {
            if key.starts_with("CRISP_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("starting {}: {:?}", self.name, self.command))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks it to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits until a unix socket at `socket` accepts connections, failing early if the
    /// process exits.
    pub async fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                self.child = None;
                bail!("{} exited ({status}) before serving {}:\n{}", self.name, socket.display(), self.log_tail());
            }
            if started.elapsed() > timeout {
                bail!("{} did not serve {} within {timeout:?}:\n{}", self.name, socket.display(), self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
