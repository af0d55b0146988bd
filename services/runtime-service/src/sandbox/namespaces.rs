//! A pod's namespaces (net, ipc, uts), pinned by bind mounts of `/proc/self/ns/<kind>` onto
//! files `<pod dir>/ns/<kind>`, as util-linux `unshare --net=FILE` and CRI-O's pinns do.
//!
//! They are made in a short-lived child: this same binary started with [`HELPER_ARG`], which
//! (single-threaded, before any runtime starts) unshares the namespaces, sets the pod's
//! hostname in the new UTS namespace, writes the pod's sysctls (each checked by [`sysctl_kind`]
//! to belong to one of the new namespaces), bind-mounts each onto its file and exits. The service
//! itself never calls `unshare`/`setns`. The pins hold the namespaces alive with no process;
//! [`unpin`] unmounts them (lazily, so a process still inside keeps its namespace).

use super::SandboxError;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The first argument that makes the runtime binary the namespace helper.
pub const HELPER_ARG: &str = "__crisp-pin-namespaces";

/// The kinds of namespace crisp makes for a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Ipc,
    Uts,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Net, Kind::Ipc, Kind::Uts];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// The namespace a sysctl belongs to (as runc decides it), or why the pod cannot set it.
pub fn sysctl_kind(key: &str) -> Result<Kind, &'static str> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let key = key.replace('/', ".");
    if key.starts_with("net.") {
        Ok(Kind::Net)
    } else if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
        Ok(Kind::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Ok(Kind::Uts)
    } else {
        Err("not namespaced: it would change the whole node")
    }
}

/// `key` as a path under `/proc/sys`.
fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Where the pin of `kind` is in the namespace directory `dir`.
pub fn pin_path(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(kind.name())
}

/// Makes and pins namespaces of `kinds` under `dir` (created), with `hostname` in a new UTS
/// namespace, by running the helper.
/// `sysctls` (`key`, `value`) are set in the new namespaces; each must be checked by
/// [`sysctl_kind`] to belong to one of `kinds`.
pub async fn pin(
    pod: &str,
    dir: &Path,
    kinds: &[Kind],
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<(), SandboxError> {
    if kinds.is_empty() {
        return Ok(());
    }
    let failed = |reason: String| SandboxError::Namespaces { pod: pod.to_string(), reason };
    tokio::fs::create_dir_all(dir).await.map_err(SandboxError::io(pod, "creating", dir))?;
    let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    // This very binary, even if an upgrade replaced the file since it started.
    let output = tokio::process::Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(dir)
        .arg(hostname)
        .arg(kinds.join(","))
        .args(sysctls.iter().map(|(k, v)| format!("{k}={v}")))
        .env_clear()
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("cannot start the namespace helper: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "the namespace helper {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Unmounts and removes every pin under `dir`; pins already gone are fine.
pub fn unpin(pod: &str, dir: &Path) -> Result<(), SandboxError> {
    for kind in Kind::ALL {
        let path = pin_path(dir, kind);
        if !path.exists() {
            continue;
        }
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => return Err(SandboxError::io(pod, "unmounting", &path)(errno.into())),
        }
        std::fs::remove_file(&path).map_err(SandboxError::io(pod, "removing", &path))?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(SandboxError::io(pod, "removing", dir)(err)),
    }
}

/// The helper's body: `HELPER_ARG <dir> <hostname> <kind,kind...> [key=value...]`. Runs in a fresh,
/// single-threaded process.
pub fn helper_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    match helper(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn helper(args: &[String]) -> Result<(), String> {
    let [dir, hostname, kinds, sysctls @ ..] = args else {
        return Err(format!("usage: {HELPER_ARG} DIR HOSTNAME KINDS [KEY=VALUE...]"));
    };
    let dir = Path::new(dir);
    let kinds: Vec<Kind> = kinds
        .split(',')
        .map(|k| Kind::parse(k).ok_or_else(|| format!("unknown namespace kind `{k}`")))
        .collect::<Result<_, _>>()?;
    let flags = kinds.iter().fold(CloneFlags::empty(), |flags, k| flags | k.flag());
    nix::sched::unshare(flags).map_err(|e| format!("unshare {kinds:?}: {e}"))?;
    if kinds.contains(&Kind::Uts) && !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname `{hostname}`: {e}"))?;
    }
    for sysctl in sysctls {
        let (key, value) = sysctl.split_once('=').ok_or_else(|| format!("sysctl `{sysctl}` is not KEY=VALUE"))?;
        let kind = sysctl_kind(key).map_err(|reason| format!("sysctl `{key}`: {reason}"))?;
        if !kinds.contains(&kind) {
            return Err(format!("sysctl `{key}`: the pod shares the host's {} namespace", kind.name()));
        }
        std::fs::write(sysctl_path(key), value).map_err(|e| format!("setting sysctl `{key}` to `{value}`: {e}"))?;
    }
    for kind in &kinds {
        let target = pin_path(dir, *kind);
        std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        let source = format!("/proc/self/ns/{}", kind.name());
        nix::mount::mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("bind-mounting {source} onto {}: {e}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_belong_to_the_namespace_runc_gives_them() {
        assert_eq!(sysctl_kind("net.ipv4.ip_forward"), Ok(Kind::Net));
        assert_eq!(sysctl_kind("net/ipv4/ping_group_range"), Ok(Kind::Net));
        assert_eq!(sysctl_kind("kernel.shm_rmid_forced"), Ok(Kind::Ipc));
        assert_eq!(sysctl_kind("fs.mqueue.msg_max"), Ok(Kind::Ipc));
        assert_eq!(sysctl_kind("kernel.domainname"), Ok(Kind::Uts));
        assert!(sysctl_kind("kernel.pid_max").is_err());
        assert!(sysctl_kind("vm.swappiness").is_err());
        assert_eq!(sysctl_path("net.ipv4.ip_forward"), Path::new("/proc/sys/net/ipv4/ip_forward"));
    }
}
