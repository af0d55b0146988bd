//! RemovePodSandbox: "removes the sandbox. If there are any running containers in the
//! sandbox, they must be forcibly terminated and removed ... must not return an error if
//! the sandbox has already been removed."
//!
//! Stops the pod if needed (CNI DEL when still owed), deletes its infra container and its
//! snapshot, unmounts its `/dev/shm` and namespace pins, removes its directories, and deletes
//! its record last: a step that fails leaves the
//! record, so a retry finds the pod and finishes.

use super::record;
use super::{SandboxError, files, infra, stop};
use crisp_config::Config;
use crisp_containerd::Containerd;

pub async fn remove(containerd: &Containerd, config: &Config, id: &str) -> Result<(), SandboxError> {
    let Some(stored) = record::find(containerd, id).await? else {
        tracing::debug!(id, "RemovePodSandbox of an unknown pod: nothing to do");
        return Ok(());
    };
    stop::stop_pod(containerd, config, &stored).await?;
    if let Some(infra) = &stored.sandbox.infra {
        infra::remove(containerd, &stored.sandbox.id, infra).await?;
    }
    let (pod, dir, network_dir) =
        (stored.sandbox.id.clone(), stored.sandbox.dir.clone(), stored.sandbox.network_dir.clone());
    tokio::task::spawn_blocking(move || files::teardown(&pod, &dir, Some(&network_dir)))
        .await
        .map_err(|e| SandboxError::Task { pod: stored.sandbox.id.clone(), what: "tearing it down", source: e })??;
    record::delete(containerd, &stored.sandbox.id).await?;
    tracing::info!(pod = %stored.sandbox.id, "pod sandbox removed");
    Ok(())
}
