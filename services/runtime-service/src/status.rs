//! `Status`: whether the runtime and the pod network are ready, and why not.
//!
//! RuntimeReady is true when containerd answers. NetworkReady is true when the CNI
//! configuration directory holds a valid network whose every plugin binary is found, and the
//! `loopback` plugin every pod needs; the reason `NetworkPluginNotReady` is the one
//! containerd's CRI plugin gives. The handlers' features are what this node's runc can do.

use crate::container::spec::HostFeatures;
use crisp_config::Config;
use crisp_containerd::Containerd;
use crisp_proto::cri::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusResponse,
};
use std::collections::HashMap;
use std::time::Duration;

const RUNTIME_READY: &str = "RuntimeReady";

/// What Status advertises if detection could not run.
static NO_FEATURES: HostFeatures = HostFeatures {
    recursive_read_only: false,
    apparmor: false,
    min_oom_score_adj: 0,
    cgroup_v2: false,
    swap_limit: false,
    hugetlb: false,
    bounding_capabilities: None,
};
const NETWORK_READY: &str = "NetworkReady";

/// How long Status waits for containerd before calling it not ready.
const CONTAINERD_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn condition(kind: &str, outcome: Result<(), (&str, String)>) -> RuntimeCondition {
    match outcome {
        Ok(()) => RuntimeCondition { r#type: kind.into(), status: true, reason: String::new(), message: String::new() },
        Err((reason, message)) => {
            RuntimeCondition { r#type: kind.into(), status: false, reason: reason.into(), message }
        }
    }
}

pub async fn status(containerd: &Containerd, config: &Config, verbose: bool) -> StatusResponse {
    let mut info = HashMap::new();

    let runtime = match tokio::time::timeout(CONTAINERD_PROBE_TIMEOUT, containerd.server_version()).await {
        Ok(Ok(version)) => {
            if verbose {
                info.insert(
                    "containerd".to_string(),
                    serde_json::json!({
                        "address": containerd.address(),
                        "namespace": containerd.namespace(),
                        "version": version.version,
                        "revision": version.revision,
                    })
                    .to_string(),
                );
            }
            Ok(())
        }
        Ok(Err(err)) => Err(("ContainerdNotReady", crisp_errors::message_chain(&err))),
        Err(_) => Err((
            "ContainerdNotReady",
            format!(
                "containerd at {} did not answer within {CONTAINERD_PROBE_TIMEOUT:?}",
                containerd.address().display()
            ),
        )),
    };

    // Every pod's `lo` is brought up by the `loopback` plugin, as containerd's CRI plugin does.
    let network = crisp_cni::watch::current(&config.runtime.cni_conf_dir)
        .and_then(|net| net.check_plugins(&config.runtime.cni_bin_dirs).map(|_| net))
        .and_then(|net| {
            crisp_cni::single_plugin_network("cni-loopback", &net.cni_version, "loopback")
                .check_plugins(&config.runtime.cni_bin_dirs)
                .map(|_| net)
        });
    let network = match network {
        Ok(net) => {
            if verbose {
                info.insert(
                    "cni".to_string(),
                    serde_json::json!({
                        "network": net.name,
                        "cniVersion": net.cni_version,
                        "config": net.source,
                        "plugins": net.plugins.iter().map(|p| &p.plugin_type).collect::<Vec<_>>(),
                    })
                    .to_string(),
                );
            }
            Ok(())
        }
        Err(err) => Err(("NetworkPluginNotReady", format!("Network plugin returns error: {err}"))),
    };

    // Detected once (it runs `runc features`), off the async threads.
    let host = tokio::task::spawn_blocking(HostFeatures::node).await.unwrap_or(&NO_FEATURES);

    if verbose && let Ok(json) = serde_json::to_string(config) {
        info.insert("config".to_string(), json);
    }

    StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![condition(RUNTIME_READY, runtime), condition(NETWORK_READY, network)],
        }),
        info,
        // The default handler and its name: recursive read-only mounts where runc has them; no
        // user namespaces.
        runtime_handlers: ["", "runc"]
            .into_iter()
            .map(|name| RuntimeHandler {
                name: name.into(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: host.recursive_read_only,
                    user_namespaces: false,
                }),
            })
            .collect(),
        // ContainerStatus.user reports the identity the spec gave the process (Merge or Strict).
        features: Some(RuntimeFeatures { supplemental_groups_policy: true, user_namespaces_host_network: false }),
    }
}
