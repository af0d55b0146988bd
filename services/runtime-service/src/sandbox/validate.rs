//! What RunPodSandbox checks in a pod's config before it makes anything, so that a bad input
//! is `INVALID_ARGUMENT` naming its field rather than a failure deep in a syscall, a plugin or
//! a file crisp writes (`INTERNAL`).
//!
//! - `hostname`: at most 64 bytes (the kernel's `HOST_NAME_MAX`), letters, digits, `-` and
//!   `.` (RFC 1123), neither starting nor ending with `-` or `.`.
//! - `log_directory`: absolute when set.
//! - `linux.cgroup_parent`: absolute cgroupfs path (`/kubepods/...`), no `.`/`..` component.
//! - `linux.sysctls`: values without newlines or NULs (they are written to `/proc/sys`).
//! - `dns_config`: servers are IP addresses; searches and options single words (they become
//!   lines of `resolv.conf`).
//! - `port_mappings`: container port 1-65535, host port 0-65535 (0: none), host IP an address.
//! - `linux.overhead` / `linux.resources`: see [`resources`].

use super::SandboxError;
use crisp_proto::cri::{LinuxContainerResources, PodSandboxConfig};
use std::net::IpAddr;

/// The kernel's `HOST_NAME_MAX`.
const HOST_NAME_MAX: usize = 64;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SandboxError {
    SandboxError::Invalid { field: field.into(), reason: reason.into() }
}

pub fn config(config: &PodSandboxConfig) -> Result<(), SandboxError> {
    hostname(&config.hostname)?;
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(invalid("config.log_directory", format!("`{}` is not an absolute path", config.log_directory)));
    }
    if let Some(linux) = &config.linux {
        cgroup_parent("config.linux.cgroup_parent", &linux.cgroup_parent)?;
        for (key, value) in &linux.sysctls {
            if value.contains(['\n', '\0']) {
                return Err(invalid(format!("config.linux.sysctls[{key}]"), "holds a newline or NUL"));
            }
        }
        if let Some(overhead) = &linux.overhead {
            resources("config.linux.overhead", overhead)?;
        }
        if let Some(resources_) = &linux.resources {
            resources("config.linux.resources", resources_)?;
        }
    }
    if let Some(dns) = &config.dns_config {
        for server in &dns.servers {
            if server.parse::<IpAddr>().is_err() {
                return Err(invalid("config.dns_config.servers", format!("`{server}` is not an IP address")));
            }
        }
        for (field, words) in
            [("config.dns_config.searches", &dns.searches), ("config.dns_config.options", &dns.options)]
        {
            if let Some(word) =
                words.iter().find(|w| w.is_empty() || w.contains(char::is_whitespace) || w.contains('\0'))
            {
                return Err(invalid(field, format!("`{}` is not a single word", word.escape_debug())));
            }
        }
    }
    for (i, port) in config.port_mappings.iter().enumerate() {
        let field = |name: &str| format!("config.port_mappings[{i}].{name}");
        if !(1..=65535).contains(&port.container_port) {
            return Err(invalid(field("container_port"), format!("{} is not a port (1-65535)", port.container_port)));
        }
        if !(0..=65535).contains(&port.host_port) {
            return Err(invalid(field("host_port"), format!("{} is not a port (0-65535)", port.host_port)));
        }
        if !port.host_ip.is_empty() && port.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(field("host_ip"), format!("`{}` is not an IP address", port.host_ip)));
        }
        if crisp_proto::cri::Protocol::try_from(port.protocol).is_err() {
            return Err(invalid(field("protocol"), format!("{} is not a protocol", port.protocol)));
        }
    }
    Ok(())
}

fn hostname(name: &str) -> Result<(), SandboxError> {
    const FIELD: &str = "config.hostname";
    if name.len() > HOST_NAME_MAX {
        return Err(invalid(FIELD, format!("is {} bytes long; a hostname has at most {HOST_NAME_MAX}", name.len())));
    }
    if name.is_empty() {
        return Ok(());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Err(invalid(
            FIELD,
            format!("`{}` holds `{}`: only letters, digits, `-` and `.`", name, c.escape_debug()),
        ));
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) || name.contains("..") {
        return Err(invalid(FIELD, format!("`{name}` is not a hostname (RFC 1123)")));
    }
    Ok(())
}

/// A cgroupfs path: empty (none), or absolute with no `.`/`..` component.
pub fn cgroup_parent(field: &str, parent: &str) -> Result<(), SandboxError> {
    if parent.is_empty() {
        return Ok(());
    }
    if !parent.starts_with('/') {
        return Err(invalid(
            field,
            format!("`{parent}` is not an absolute cgroupfs path (crisp's driver is cgroupfs)"),
        ));
    }
    if parent.split('/').any(|c| c == "." || c == "..") || parent.contains('\0') {
        return Err(invalid(field, format!("`{}` has a `.`, `..` or NUL in it", parent.escape_debug())));
    }
    Ok(())
}

/// Resources as the kubelet sends them: no negative amount (0 is "not set"), a quota with a
/// period the kernel takes (1ms-1s), shares 2-262144, cpusets in list syntax, `unified` keys
/// that are file names.
pub fn resources(field: &str, r: &LinuxContainerResources) -> Result<(), SandboxError> {
    let named = |name: &str| format!("{field}.{name}");
    for (name, value) in
        [("cpu_period", r.cpu_period), ("cpu_shares", r.cpu_shares), ("memory_limit_in_bytes", r.memory_limit_in_bytes)]
    {
        if value < 0 {
            return Err(invalid(named(name), format!("{value} is negative")));
        }
    }
    if r.cpu_quota < -1 {
        return Err(invalid(named("cpu_quota"), format!("{} is neither -1 (none) nor a quota", r.cpu_quota)));
    }
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(invalid(named("cpu_period"), format!("{}us is outside 1000-1000000", r.cpu_period)));
    }
    if r.cpu_quota > 0 && r.cpu_quota < 1_000 {
        return Err(invalid(named("cpu_quota"), format!("{}us is below the kernel's 1000", r.cpu_quota)));
    }
    if r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares) {
        return Err(invalid(named("cpu_shares"), format!("{} is outside 2-262144", r.cpu_shares)));
    }
    for (name, list) in [("cpuset_cpus", &r.cpuset_cpus), ("cpuset_mems", &r.cpuset_mems)] {
        if !list.is_empty() && !cpu_list(list) {
            return Err(invalid(named(name), format!("`{list}` is not a list like `0-3,7`")));
        }
    }
    if let Some(key) = r.unified.keys().find(|k| k.is_empty() || k.contains('/') || k.starts_with('.')) {
        return Err(invalid(named("unified"), format!("`{key}` is not a cgroup file name")));
    }
    Ok(())
}

/// `0-3,7`: comma-separated numbers and ranges.
fn cpu_list(list: &str) -> bool {
    list.split(',').all(|part| {
        let mut ends = part.splitn(2, '-').map(|n| n.parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(_)), None) => true,
            (Some(Ok(a)), Some(Ok(b))) => a <= b,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_errors::GrpcError;
    use crisp_proto::cri::{DnsConfig, LinuxPodSandboxConfig, PortMapping};

    fn refused(config_: PodSandboxConfig, field: &str) {
        let err = config(&config_).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains(field), "{err} does not name {field}");
    }

    #[test]
    fn a_hostname_longer_than_64_bytes_or_with_odd_characters_is_refused_naming_the_field() {
        let with = |h: &str| PodSandboxConfig { hostname: h.into(), ..Default::default() };
        assert!(config(&with(&"a".repeat(64))).is_ok());
        assert!(config(&with("web-0.example")).is_ok());
        assert!(config(&with("")).is_ok());
        refused(with(&"a".repeat(65)), "config.hostname");
        for bad in ["we b", "web/0", "-web", "web.", "a..b", "wéb"] {
            refused(with(bad), "config.hostname");
        }
    }

    #[test]
    fn paths_dns_and_ports_are_checked_naming_the_field() {
        refused(PodSandboxConfig { log_directory: "logs".into(), ..Default::default() }, "config.log_directory");
        let cgroup = |p: &str| PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig { cgroup_parent: p.into(), ..Default::default() }),
            ..Default::default()
        };
        assert!(config(&cgroup("/kubepods/burstable/pod1")).is_ok());
        refused(cgroup("kubepods"), "config.linux.cgroup_parent");
        refused(cgroup("/kubepods/../etc"), "config.linux.cgroup_parent");
        let sysctl = PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                sysctls: [("net.ipv4.ip_forward".to_string(), "1\n0".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        refused(sysctl, "config.linux.sysctls[net.ipv4.ip_forward]");
        let dns = |servers: &[&str], searches: &[&str]| PodSandboxConfig {
            dns_config: Some(DnsConfig {
                servers: servers.iter().map(|s| s.to_string()).collect(),
                searches: searches.iter().map(|s| s.to_string()).collect(),
                options: vec![],
            }),
            ..Default::default()
        };
        assert!(config(&dns(&["10.96.0.10", "fd00::a"], &["svc.cluster.local"])).is_ok());
        refused(dns(&["dns.example"], &[]), "config.dns_config.servers");
        refused(dns(&[], &["a\nnameserver 6.6.6.6"]), "config.dns_config.searches");
        let port = |container_port, host_port, host_ip: &str| PodSandboxConfig {
            port_mappings: vec![PortMapping { protocol: 0, container_port, host_port, host_ip: host_ip.into() }],
            ..Default::default()
        };
        assert!(config(&port(80, 8080, "127.0.0.1")).is_ok());
        refused(port(0, 8080, ""), "config.port_mappings[0].container_port");
        refused(port(80, 70000, ""), "config.port_mappings[0].host_port");
        refused(port(80, 8080, "localhost"), "config.port_mappings[0].host_ip");
    }

    #[test]
    fn resources_out_of_the_kernels_range_are_refused_naming_the_field() {
        let ok = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            cpuset_cpus: "0-1,3".into(),
            ..Default::default()
        };
        assert!(resources("r", &ok).is_ok());
        assert!(resources("r", &LinuxContainerResources { cpu_quota: -1, ..ok.clone() }).is_ok());
        for (bad, field) in [
            (LinuxContainerResources { memory_limit_in_bytes: -5, ..ok.clone() }, "r.memory_limit_in_bytes"),
            (LinuxContainerResources { cpu_period: 10, ..ok.clone() }, "r.cpu_period"),
            (LinuxContainerResources { cpu_quota: 10, ..ok.clone() }, "r.cpu_quota"),
            (LinuxContainerResources { cpu_shares: 1, ..ok.clone() }, "r.cpu_shares"),
            (LinuxContainerResources { cpuset_cpus: "0-".into(), ..ok.clone() }, "r.cpuset_cpus"),
            (
                LinuxContainerResources { unified: [("../x".to_string(), "1".to_string())].into(), ..ok.clone() },
                "r.unified",
            ),
        ] {
            let err = resources("r", &bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
