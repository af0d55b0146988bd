//! A pod's CNI attachment. ADD runs the node's network (the first configuration in
//! `runtime.cni_conf_dir`) with the pod's runtime config (port mappings, cgroup path, the
//! pod's annotations, the node's pod CIDR as `ipRanges`), after the `loopback` plugin brought `lo` up. What DEL needs later is
//! saved in the pod's network directory (under `runtime.root_dir`, so it outlives a reboot)
//! before ADD runs — the configuration file used, the
//! attachment, and then ADD's result — so teardown uses the same network even if the node's
//! configuration changed, and survives a restart of the service.

use super::SandboxError;
use super::record::Sandbox;
use crisp_cni::{Attachment, NetworkConfig};
use crisp_config::RuntimeConfig;
use crisp_proto::cri::{PodSandboxConfig, Protocol};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

const SAVED: &str = "network.json";

#[derive(Serialize, Deserialize)]
struct Saved {
    /// A copy of the configuration file used (in the pod's directory, same extension).
    config: PathBuf,
    container_id: String,
    netns: PathBuf,
    ifname: String,
    args: Vec<(String, String)>,
    runtime_config: Map<String, Value>,
    result: Option<Value>,
}

impl Saved {
    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
            runtime_config: self.runtime_config.clone(),
        }
    }
}

fn runtime_config(config: &PodSandboxConfig, pod_cidrs: &[String]) -> Map<String, Value> {
    let mut runtime = Map::new();
    if !pod_cidrs.is_empty() {
        let ranges: Vec<Value> = pod_cidrs.iter().map(|cidr| serde_json::json!([{ "subnet": cidr }])).collect();
        runtime.insert("ipRanges".into(), Value::Array(ranges));
    }
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp).as_str_name().to_lowercase();
            serde_json::json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
                "hostIP": p.host_ip,
            })
        })
        .collect();
    if !ports.is_empty() {
        runtime.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(parent) = config.linux.as_ref().map(|l| &l.cgroup_parent).filter(|p| !p.is_empty()) {
        runtime.insert("cgroupPath".into(), Value::String(parent.clone()));
    }
    if !config.annotations.is_empty() {
        runtime.insert("io.kubernetes.cri.pod-annotations".into(), serde_json::json!(config.annotations));
    }
    runtime
}

fn save(pod: &str, dir: &Path, saved: &Saved) -> Result<(), SandboxError> {
    let path = dir.join(SAVED);
    let bytes = serde_json::to_vec_pretty(saved)
        .map_err(|e| SandboxError::Record { pod: pod.into(), reason: e.to_string() })?;
    std::fs::write(&path, bytes).map_err(SandboxError::io(pod, "writing", &path))
}

/// Brings `lo` up and attaches the pod to the node's network; the pod's IPs. `pod_cidrs`
/// (UpdateRuntimeConfig's) become the `ipRanges` runtime config.
pub async fn attach(
    sandbox: &Sandbox,
    netns: &Path,
    config: &PodSandboxConfig,
    pod_cidrs: &[String],
    runtime: &RuntimeConfig,
) -> Result<Vec<String>, SandboxError> {
    let (pod, dir) = (sandbox.id.as_str(), sandbox.network_dir.as_path());
    let (conf_dir, bin_dirs) = (&runtime.cni_conf_dir, &runtime.cni_bin_dirs);
    let network_error = |source| SandboxError::Network { pod: pod.to_string(), source };
    let network = crisp_cni::watch::current(conf_dir).map_err(network_error)?;
    let copy =
        dir.join(format!("network.{}", network.source.extension().and_then(|e| e.to_str()).unwrap_or("conflist")));
    std::fs::copy(&network.source, &copy).map_err(SandboxError::io(pod, "copying the CNI configuration to", &copy))?;
    let metadata = config.metadata.clone().unwrap_or_default();
    let mut saved = Saved {
        config: copy,
        container_id: pod.to_string(),
        netns: netns.to_path_buf(),
        ifname: "eth0".into(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), metadata.namespace),
            ("K8S_POD_NAME".into(), metadata.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.to_string()),
            ("K8S_POD_UID".into(), metadata.uid),
        ],
        runtime_config: runtime_config(config, pod_cidrs),
        result: None,
    };
    save(pod, dir, &saved)?;
    let attachment = saved.attachment();

    let loopback = crisp_cni::single_plugin_network("cni-loopback", &network.cni_version, "loopback");
    let lo = Attachment { ifname: "lo".into(), ..attachment.clone() };
    loopback.add(bin_dirs, &lo).await.map_err(network_error)?;

    let result = crate::metrics::cni("add", network.add(bin_dirs, &attachment)).await.map_err(network_error)?;
    let ips = crisp_cni::result_ips(&result);
    saved.result = Some(result);
    save(pod, dir, &saved)?;
    Ok(ips)
}

/// The host side of the pod's link: the interface of ADD's result that is not in the pod
/// (no `sandbox`) and is not a bridge (the veth peer); none without a saved result.
pub fn host_link(dir: &Path) -> Option<String> {
    let saved: Saved = serde_json::from_slice(&std::fs::read(dir.join(SAVED)).ok()?).ok()?;
    let interfaces = saved.result?.get("interfaces")?.as_array()?.clone();
    interfaces
        .iter()
        .filter(|i| i.get("sandbox").and_then(Value::as_str).is_none_or(str::is_empty))
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .find(|name| {
            let sys = Path::new("/sys/class/net").join(name);
            sys.exists() && !sys.join("bridge").exists()
        })
        .map(str::to_string)
}

/// CNI DEL for the pod in `dir`, with what ADD saved; nothing saved is nothing to do.
pub async fn detach(pod: &str, dir: &Path, bin_dirs: &[PathBuf]) -> Result<(), SandboxError> {
    let path = dir.join(SAVED);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(SandboxError::io(pod, "reading", &path)(err)),
    };
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| SandboxError::Record { pod: pod.into(), reason: e.to_string() })?;
    let network_error = |source| SandboxError::Network { pod: pod.to_string(), source };
    let network = NetworkConfig::from_file(&saved.config).map_err(network_error)?;
    let attachment = saved.attachment();
    crate::metrics::cni("del", network.del(bin_dirs, &attachment, saved.result.as_ref())).await.map_err(network_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_proto::cri::{LinuxPodSandboxConfig, PortMapping};

    #[test]
    fn host_ports_and_the_cgroup_parent_become_runtime_config() {
        let config = PodSandboxConfig {
            port_mappings: vec![
                PortMapping {
                    protocol: Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            linux: Some(LinuxPodSandboxConfig { cgroup_parent: "/kubepods/pod1".into(), ..Default::default() }),
            ..Default::default()
        };
        let runtime = runtime_config(&config, &["10.244.1.0/24".to_string()]);
        assert_eq!(
            runtime["portMappings"],
            serde_json::json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}])
        );
        assert_eq!(runtime["cgroupPath"], "/kubepods/pod1");
        assert_eq!(runtime["ipRanges"], serde_json::json!([[{"subnet": "10.244.1.0/24"}]]));
        assert!(!runtime_config(&PodSandboxConfig::default(), &[]).contains_key("ipRanges"));
        assert!(!runtime.contains_key("io.kubernetes.cri.pod-annotations"));
    }
}
