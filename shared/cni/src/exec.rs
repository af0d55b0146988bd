//! Running a network's plugins, as the CNI specification's runtime does (libcni's
//! `AddNetworkList` / `DelNetworkList`).
//!
//! Each plugin is a child process (`tokio::process`) with its own `CNI_*` variables, never
//! the service's environment; its configuration on stdin is the plugin's own entry of the
//! list plus the list's `name` and `cniVersion`, the previous plugin's result as
//! `prevResult`, and the runtime configuration keys the plugin declares in `capabilities`
//! as `runtimeConfig`. ADD runs the plugins in order and answers the last result; DEL runs
//! them in reverse, each given the ADD's result, and goes on past a failing plugin so that
//! every plugin frees what it holds (the first failure is answered). CHECK runs them in order,
//! each given ADD's result.

use crate::{CniError, NetworkConfig, find_plugin};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// What a pod's network is attached for: the variables every plugin gets.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the pod sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace (a pinned namespace file).
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface made in it (`eth0`).
    pub ifname: String,
    /// `CNI_ARGS` pairs (the kubelet's `K8S_POD_*`); `IgnoreUnknown=1` is always sent first.
    pub args: Vec<(String, String)>,
    /// Runtime configuration by capability name (`portMappings`, `cgroupPath`, ...); a plugin
    /// receives the keys it declares in its `capabilities`.
    pub runtime_config: Map<String, Value>,
}

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// A plugin's error reply (CNI spec: `code`, `msg`, `details`).
#[derive(Debug, Deserialize)]
struct ErrorReply {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The IP addresses of a result (CNI 0.3 to 1.0: `ips[].address`, CIDR notation), without
/// their prefix length, in the result's order.
pub fn result_ips(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .map(|cidr| cidr.split('/').next().unwrap_or(cidr).to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl NetworkConfig {
    /// ADD: attaches the pod to this network; the last plugin's result.
    pub async fn add(&self, bin_dirs: &[PathBuf], attachment: &Attachment) -> Result<Value, CniError> {
        let mut previous: Option<Value> = None;
        for plugin in &self.plugins {
            let config = self.plugin_stdin(&plugin.raw, attachment, previous.as_ref());
            let out = run(bin_dirs, &self.name, &plugin.plugin_type, Command::Add, attachment, &config).await?;
            previous = Some(out);
        }
        previous.ok_or_else(|| CniError::Invalid { path: self.source.clone(), reason: "no plugin".into() })
    }

    /// DEL: detaches the pod, every plugin in reverse order, given ADD's `result` when known.
    /// Idempotent as the plugins are (deleting what is gone succeeds).
    pub async fn del(
        &self,
        bin_dirs: &[PathBuf],
        attachment: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first_error = None;
        for plugin in self.plugins.iter().rev() {
            let config = self.plugin_stdin(&plugin.raw, attachment, result);
            if let Err(err) = run(bin_dirs, &self.name, &plugin.plugin_type, Command::Del, attachment, &config).await {
                tracing::warn!(network = %self.name, plugin = %plugin.plugin_type, error = %err, "CNI DEL failed");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// CHECK: whether the pod's attachment is still as ADD left it (`result` is ADD's).
    pub async fn check(&self, bin_dirs: &[PathBuf], attachment: &Attachment, result: &Value) -> Result<(), CniError> {
        for plugin in &self.plugins {
            let config = self.plugin_stdin(&plugin.raw, attachment, Some(result));
            run(bin_dirs, &self.name, &plugin.plugin_type, Command::Check, attachment, &config).await?;
        }
        Ok(())
    }

    /// The JSON a plugin reads on stdin.
    fn plugin_stdin(&self, raw: &Value, attachment: &Attachment, previous: Option<&Value>) -> Value {
        let mut config = raw.as_object().cloned().unwrap_or_default();
        config.insert("name".into(), Value::String(self.name.clone()));
        config.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(previous) = previous {
            config.insert("prevResult".into(), previous.clone());
        }
        let wanted: Map<String, Value> = raw
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .filter_map(|(key, _)| attachment.runtime_config.get(key).map(|v| (key.clone(), v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if !wanted.is_empty() {
            config.insert("runtimeConfig".into(), Value::Object(wanted));
        }
        Value::Object(config)
    }
}

/// Runs one plugin binary and parses its reply.
async fn run(
    bin_dirs: &[PathBuf],
    network: &str,
    plugin: &str,
    command: Command,
    attachment: &Attachment,
    config: &Value,
) -> Result<Value, CniError> {
    let failed = |reason: String| CniError::Plugin {
        network: network.to_string(),
        plugin: plugin.to_string(),
        command: command.as_str(),
        reason,
    };
    let binary = find_plugin(bin_dirs, plugin).ok_or_else(|| CniError::MissingPlugin {
        network: network.to_string(),
        plugin: plugin.to_string(),
        dirs: bin_dirs.to_vec(),
    })?;
    let cni_path = std::env::join_paths(bin_dirs).map_err(|e| failed(e.to_string()))?;
    let mut args = vec!["IgnoreUnknown=1".to_string()];
    args.extend(attachment.args.iter().map(|(k, v)| format!("{k}={v}")));
    let stdin = serde_json::to_vec(config).map_err(|e| failed(e.to_string()))?;

    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &attachment.container_id)
        .env("CNI_NETNS", &attachment.netns)
        .env("CNI_IFNAME", &attachment.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env("CNI_PATH", cni_path)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", binary.display())))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(&stdin).await.map_err(|e| failed(format!("writing its configuration: {e}")))?;
    }
    let output = child.wait_with_output().await.map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(describe_failure(&output.stdout, &output.stderr, output.status)));
    }
    if command != Command::Add || output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("unreadable result: {e}")))
}

/// A failed plugin's message: its error reply, else its stderr, else its exit status.
fn describe_failure(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(reply) = serde_json::from_slice::<ErrorReply>(stdout)
        && !reply.msg.is_empty()
    {
        let mut text = format!("{} (code {})", reply.msg, reply.code);
        if !reply.details.is_empty() {
            text.push_str(&format!(": {}", reply.details));
        }
        return text;
    }
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() { format!("exited with {status}") } else { format!("{status}: {stderr}") }
}

/// The network of a single plugin (e.g. `loopback`), as a list of one.
pub fn single_plugin_network(name: &str, cni_version: &str, plugin_type: &str) -> NetworkConfig {
    NetworkConfig {
        name: name.into(),
        cni_version: cni_version.into(),
        plugins: vec![crate::PluginConfig {
            plugin_type: plugin_type.into(),
            raw: serde_json::json!({ "type": plugin_type }),
        }],
        source: Path::new("<built in>").to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Attachment {
        let mut runtime_config = Map::new();
        runtime_config.insert("portMappings".into(), serde_json::json!([{"hostPort": 8080}]));
        runtime_config.insert("cgroupPath".into(), Value::String("/kubepods".into()));
        Attachment {
            container_id: "abc".into(),
            netns: "/run/ns".into(),
            ifname: "eth0".into(),
            args: vec![],
            runtime_config,
        }
    }

    #[test]
    fn a_plugin_gets_only_the_runtime_config_it_declares_and_the_previous_result() {
        let net =
            NetworkConfig { name: "pods".into(), cni_version: "1.0.0".into(), plugins: vec![], source: PathBuf::new() };
        let raw = serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": true}});
        let previous = serde_json::json!({"ips": [{"address": "10.1.0.5/24"}]});
        let stdin = net.plugin_stdin(&raw, &attachment(), Some(&previous));
        assert_eq!(stdin["name"], "pods");
        assert_eq!(stdin["cniVersion"], "1.0.0");
        assert_eq!(stdin["prevResult"], previous);
        assert_eq!(stdin["runtimeConfig"], serde_json::json!({"portMappings": [{"hostPort": 8080}]}));

        let bridge = net.plugin_stdin(&serde_json::json!({"type": "bridge"}), &attachment(), None);
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none(), "{bridge}");
    }

    #[test]
    fn result_ips_drop_the_prefix_length() {
        let result = serde_json::json!({"ips": [{"address": "10.1.0.5/24"}, {"address": "fd00::5/64"}]});
        assert_eq!(result_ips(&result), ["10.1.0.5", "fd00::5"]);
        assert!(result_ips(&Value::Null).is_empty());
    }

    #[test]
    fn a_failure_is_described_by_the_error_reply_or_stderr() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let reply = br#"{"code":11,"msg":"no IP addresses available","details":"range full"}"#;
        assert_eq!(describe_failure(reply, b"", status), "no IP addresses available (code 11): range full");
        assert!(describe_failure(b"", b"boom\n", status).ends_with(": boom"));
        assert!(describe_failure(b"", b"", status).contains("exit"));
    }
}
