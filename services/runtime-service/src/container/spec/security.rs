//! The container's privileges: capabilities (the runtime's default set, then the request's
//! `ALL`/named adds and drops, ambient ones too; `ALL` and privileged mean every capability this
//! service holds in its bounding set, as containerd's "current" ones), a privileged container's every capability and
//! unmasked `/proc` and `/sys` (allowed only in a privileged pod), masked and read-only paths
//! (exactly the request's, as containerd's CRI plugin does: the kubelet sends the defaults below
//! for `procMount: Default` and nothing for `Unmasked`), `no_new_privs` and the AppArmor profile
//! where the node has AppArmor.

use super::SpecError;
use crisp_proto::cri::{LinuxContainerSecurityContext, PodSandboxConfig, security_profile::ProfileType};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

/// The capabilities a container has unless its request adds or drops some (containerd's set).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every Linux capability, by number (0 to 40).
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The paths the kubelet masks by default (`procMount: Default`).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// The paths the kubelet makes read-only by default (`procMount: Default`).
pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A capability named as the CRI does (`SYS_ADMIN`) or as the kernel does (`CAP_SYS_ADMIN`).
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    if !ALL_CAPABILITIES.contains(&full.as_str()) {
        return None;
    }
    serde_json::from_value(serde_json::Value::String(full)).ok()
}

fn set_of(names: &[&str]) -> Capabilities {
    names.iter().filter_map(|n| parse_capability(n)).collect()
}

/// "Every capability": those in `current` (this service's bounding set, which the OCI runtime
/// inherits and cannot exceed), else every one there is.
fn all(current: Option<u64>) -> Capabilities {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| current.is_none_or(|mask| mask & (1 << bit) != 0))
        .filter_map(|(_, name)| parse_capability(name))
        .collect()
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

/// Whether the container is privileged; a privileged container needs a privileged pod.
pub fn privileged(sc: Option<&LinuxContainerSecurityContext>, pod: &PodSandboxConfig) -> Result<bool, SpecError> {
    let privileged = sc.is_some_and(|s| s.privileged);
    let pod_privileged = pod.linux.as_ref().and_then(|l| l.security_context.as_ref()).is_some_and(|s| s.privileged);
    if privileged && !pod_privileged {
        return Err(SpecError::Invalid {
            field: "linux.security_context.privileged".into(),
            reason: "the pod sandbox is not privileged".into(),
        });
    }
    Ok(privileged)
}

/// The process's capability sets.
pub fn capabilities(
    sc: Option<&LinuxContainerSecurityContext>,
    privileged: bool,
    current: Option<u64>,
) -> Result<LinuxCapabilities, SpecError> {
    let build = |main: Capabilities, ambient: Capabilities| {
        LinuxCapabilitiesBuilder::default()
            .bounding(main.clone())
            .effective(main.clone())
            .permitted(main)
            .inheritable(ambient.clone())
            .ambient(ambient)
            .build()
            .map_err(|e| SpecError::Build(format!("capabilities: {e}")))
    };
    if privileged {
        return build(all(current), Capabilities::new());
    }
    let mut caps = set_of(&DEFAULT_CAPABILITIES);
    let mut ambient = Capabilities::new();
    if let Some(requested) = sc.and_then(|s| s.capabilities.as_ref()) {
        let named = |field: &str, names: &[String]| -> Result<Vec<Capability>, SpecError> {
            names
                .iter()
                .filter(|n| !is_all(n))
                .map(|n| {
                    parse_capability(n).ok_or_else(|| SpecError::Invalid {
                        field: format!("linux.security_context.capabilities.{field}"),
                        reason: format!("unknown capability {n:?}"),
                    })
                })
                .collect()
        };
        // `ALL` first, so that named adds and drops still apply: add ALL, drop CHOWN.
        if requested.add_capabilities.iter().any(|n| is_all(n)) {
            caps = all(current);
        }
        if requested.drop_capabilities.iter().any(|n| is_all(n)) {
            caps.clear();
        }
        caps.extend(named("add_capabilities", &requested.add_capabilities)?);
        for cap in named("drop_capabilities", &requested.drop_capabilities)? {
            caps.remove(&cap);
        }
        ambient.extend(named("add_ambient_capabilities", &requested.add_ambient_capabilities)?);
        caps.extend(ambient.iter().copied());
    }
    build(caps, ambient)
}

/// The masked and read-only paths: none for a privileged container, else the request's.
pub fn masked_and_readonly_paths(
    sc: Option<&LinuxContainerSecurityContext>,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    match sc {
        Some(sc) if !privileged => (sc.masked_paths.clone(), sc.readonly_paths.clone()),
        _ => (vec![], vec![]),
    }
}

/// The AppArmor profile to confine the process with, where the node has AppArmor: a Localhost
/// profile by its name (the default profile is not loaded by crisp: RuntimeDefault leaves the
/// process to the node's policy, as Unconfined does).
#[allow(deprecated)] // `apparmor_profile` is what older kubelets send.
pub fn apparmor_profile(
    sc: Option<&LinuxContainerSecurityContext>,
    host_apparmor: bool,
) -> Result<Option<String>, SpecError> {
    let Some(sc) = sc else { return Ok(None) };
    let localhost = match &sc.apparmor {
        Some(p) if p.profile_type == ProfileType::Localhost as i32 => Some(p.localhost_ref.clone()),
        Some(_) => None,
        None => sc.apparmor_profile.strip_prefix("localhost/").map(String::from),
    };
    let Some(name) = localhost else { return Ok(None) };
    let name = name.strip_prefix("localhost/").unwrap_or(&name).to_string();
    if name.is_empty() {
        return Err(SpecError::Invalid {
            field: "linux.security_context.apparmor.localhost_ref".into(),
            reason: "is empty".into(),
        });
    }
    if !host_apparmor {
        return Err(SpecError::Invalid {
            field: "linux.security_context.apparmor".into(),
            reason: format!("profile {name:?} asked for, but AppArmor is not enabled on this node"),
        });
    }
    Ok(Some(name))
}
