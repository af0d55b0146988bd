//! PodSandboxStatus: "returns the status of the PodSandbox. If the PodSandbox is not present,
//! returns an error." Unknown ids are `NOT_FOUND` naming the id; ids resolve by unique prefix.
//! `verbose` adds `info["info"]`: the pod as crisp keeps it, as JSON.

use super::SandboxError;
use super::record::{self, State, Stored};
use crisp_containerd::Containerd;
use crisp_proto::cri::{
    LinuxPodSandboxStatus, Namespace, NamespaceOption, PodIp, PodSandboxMetadata, PodSandboxNetworkStatus,
    PodSandboxState, PodSandboxStatus, PodSandboxStatusResponse,
};
use std::collections::HashMap;

pub fn cri_state(state: State) -> PodSandboxState {
    match state {
        State::Ready => PodSandboxState::SandboxReady,
        State::NotReady => PodSandboxState::SandboxNotready,
    }
}

pub fn metadata(stored: &Stored) -> PodSandboxMetadata {
    let s = &stored.sandbox;
    PodSandboxMetadata { name: s.name.clone(), uid: s.uid.clone(), namespace: s.namespace.clone(), attempt: s.attempt }
}

pub async fn status(
    containerd: &Containerd,
    id: &str,
    verbose: bool,
) -> Result<PodSandboxStatusResponse, SandboxError> {
    let stored = record::find(containerd, id).await?.ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
    let s = &stored.sandbox;
    // A stopped pod has no network to report.
    let network = (stored.state == State::Ready && !s.ips.is_empty()).then(|| PodSandboxNetworkStatus {
        ip: s.ips[0].clone(),
        additional_ips: s.ips[1..].iter().map(|ip| PodIp { ip: ip.clone() }).collect(),
    });
    let status = PodSandboxStatus {
        id: s.id.clone(),
        metadata: Some(metadata(&stored)),
        state: cri_state(stored.state) as i32,
        created_at: s.created_at,
        network,
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(NamespaceOption {
                    network: s.network_mode,
                    pid: s.pid_mode,
                    ipc: s.ipc_mode,
                    ..Default::default()
                }),
            }),
        }),
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    };
    let mut info = HashMap::new();
    if verbose {
        let json = serde_json::json!({
            "sandbox": s,
            "state": stored.state,
            "networkAttached": stored.network_attached,
            "pid": s.infra.as_ref().map(|infra| infra.pid),
            "pidNamespace": s.pid_namespace(),
        });
        info.insert("info".to_string(), json.to_string());
    }
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    Ok(PodSandboxStatusResponse { status: Some(status), info, containers_statuses: vec![], timestamp })
}
