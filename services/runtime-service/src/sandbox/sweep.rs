//! At start, before serving: what a RunPodSandbox killed half way left (the service crashed or
//! was killed while making a pod) is found and undone. A pod directory under
//! `runtime.state_dir/pods` or `runtime.root_dir/pods` with no containerd record is such a
//! leftover: its CNI attachment is deleted with the state saved beside it, its mounts and
//! directories removed. A DEL that fails keeps the CNI state, so the next start tries again.
//! An infra container (`crisp.io/kind=infra`) whose pod has no record is removed with its task
//! and snapshot.

use super::{SandboxError, files, infra, network, record};
use crisp_config::Config;
use crisp_containerd::Containerd;
use std::collections::BTreeSet;
use std::path::Path;

fn pod_dirs(base: &Path) -> BTreeSet<String> {
    std::fs::read_dir(base)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Undoes every pod left without a record; answers how many.
pub async fn sweep(containerd: &Containerd, config: &Config) -> Result<usize, SandboxError> {
    let state = config.runtime.state_dir.join("pods");
    let persistent = config.runtime.root_dir.join("pods");
    let known = record::ids(containerd).await?;
    let orphans: BTreeSet<String> =
        pod_dirs(&state).into_iter().chain(pod_dirs(&persistent)).filter(|id| !known.contains(id)).collect();
    for leftover in infra::leftovers(containerd, &known).await? {
        match infra::remove(containerd, &leftover.0, &leftover.1).await {
            Ok(()) => tracing::info!(pod = %leftover.0, "removed a leftover infra container"),
            Err(err) => {
                tracing::warn!(pod = %leftover.0, error = %crisp_errors::message_chain(&err), "leftover infra container: removal failed")
            }
        }
    }
    for id in &orphans {
        let network_dir = persistent.join(id);
        let detached = match network::detach(id, &network_dir, &config.runtime.cni_bin_dirs).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(pod = %id, error = %crisp_errors::message_chain(&err), "leftover pod: CNI DEL failed, kept for the next start");
                false
            }
        };
        let (pod, dir) = (id.clone(), state.join(id));
        let network_dir = detached.then_some(network_dir);
        let outcome = tokio::task::spawn_blocking(move || files::teardown(&pod, &dir, network_dir.as_deref()))
            .await
            .map_err(|e| SandboxError::Task { pod: id.clone(), what: "tearing down a leftover", source: e })?;
        match outcome {
            Ok(()) => tracing::info!(pod = %id, "removed what a pod made half way left"),
            Err(err) => {
                tracing::warn!(pod = %id, error = %crisp_errors::message_chain(&err), "leftover pod: teardown failed")
            }
        }
    }
    Ok(orphans.len())
}
