//! The files a pod's containers will mount, in the pod's directory: `hostname`, `hosts` (the
//! node's, as containerd's CRI plugin copies it), `resolv.conf` (rendered from the pod's
//! `DnsConfig`, or the node's when it asks for nothing) and `shm/`, a 64 MiB tmpfs of the
//! pod's own (with host IPC the node's `/dev/shm` is used instead). [`teardown`] undoes all
//! of it and the namespace pins, and removes the directory.

use super::SandboxError;
use super::namespaces;
use crisp_proto::cri::DnsConfig;
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};

/// The size of a pod's own `/dev/shm`, as containerd's default.
const SHM_OPTIONS: &str = "mode=1777,size=65536k";

pub fn ns_dir(dir: &Path) -> PathBuf {
    dir.join("ns")
}

fn shm_dir(dir: &Path) -> PathBuf {
    dir.join("shm")
}

/// `resolv.conf` for `dns`, or `None` when it asks for nothing (the node's file is used).
pub fn render_resolv_conf(dns: &DnsConfig) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(text)
}

/// Writes the pod's files and mounts its `/dev/shm` unless `host_ipc`; answers the shm
/// source. Blocking: run on a blocking thread.
pub fn prepare(
    pod: &str,
    dir: &Path,
    hostname: &str,
    dns: Option<&DnsConfig>,
    host_ipc: bool,
) -> Result<PathBuf, SandboxError> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(SandboxError::io(pod, "writing", &path))
    };
    write("hostname", &format!("{hostname}\n"))?;
    let hosts = std::fs::read_to_string("/etc/hosts")
        .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into());
    write("hosts", &hosts)?;
    let resolv = match dns.and_then(render_resolv_conf) {
        Some(text) => text,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    write("resolv.conf", &resolv)?;

    if host_ipc {
        return Ok(PathBuf::from("/dev/shm"));
    }
    let shm = shm_dir(dir);
    std::fs::create_dir_all(&shm).map_err(SandboxError::io(pod, "creating", &shm))?;
    nix::mount::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(SHM_OPTIONS),
    )
    .map_err(|errno| SandboxError::io(pod, "mounting a tmpfs on", &shm)(errno.into()))?;
    Ok(shm)
}

/// Unmounts the pod's `/dev/shm` and namespace pins and removes its directory (and its
/// CNI state directory `network_dir`); what is already gone is fine. Blocking: run on a
/// blocking thread.
pub fn teardown(pod: &str, dir: &Path, network_dir: Option<&Path>) -> Result<(), SandboxError> {
    let shm = shm_dir(dir);
    if shm.exists() {
        match nix::mount::umount2(&shm, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => return Err(SandboxError::io(pod, "unmounting", &shm)(errno.into())),
        }
    }
    namespaces::unpin(pod, &ns_dir(dir))?;
    for dir in std::iter::once(dir).chain(network_dir) {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(SandboxError::io(pod, "removing", dir)(err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_searches_servers_and_options() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "1.1.1.1".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into(), "edns0".into()],
        };
        assert_eq!(
            render_resolv_conf(&dns).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:5 edns0\n"
        );
    }

    #[test]
    fn an_empty_dns_config_keeps_the_nodes_resolv_conf() {
        assert_eq!(render_resolv_conf(&DnsConfig::default()), None);
        let only_server = DnsConfig { servers: vec!["10.0.0.2".into()], ..Default::default() };
        assert_eq!(render_resolv_conf(&only_server).unwrap(), "nameserver 10.0.0.2\n");
    }
}
