//! A pod's containers as StopPodSandbox and RemovePodSandbox treat them (as containerd's CRI
//! plugin does): stopping a pod kills its running containers at once (timeout 0); removing it
//! removes every one of them first.

use super::record::{self, State};
use super::select::Selector;
use super::{ContainerError, Containers, remove, stop};
use crate::sandbox;

/// The pod's full id (ids resolve by unique prefix), or None when there is no such pod.
async fn pod_id(containers: &Containers, id: &str) -> Result<Option<String>, ContainerError> {
    Ok(sandbox::find_record(&containers.containerd, id).await?.map(|found| found.sandbox.id))
}

/// Kills every running container of the pod `id`; answers the pod's full id (None: no such pod).
pub async fn stop_all(containers: &Containers, id: &str) -> Result<Option<String>, ContainerError> {
    let Some(pod) = pod_id(containers, id).await? else { return Ok(None) };
    let running =
        Selector { sandbox: Some(pod.clone()), state: Some(State::Running.label().into()), ..Default::default() };
    let stops = record::list(&containers.containerd, &running)
        .await?
        .into_iter()
        .map(|c| async move { stop::stop(containers, &c.id, 0).await });
    futures::future::try_join_all(stops).await?;
    Ok(Some(pod))
}

/// Removes every container of the pod `id`; answers the pod's full id (None: no such pod).
pub async fn remove_all(containers: &Containers, id: &str) -> Result<Option<String>, ContainerError> {
    let Some(pod) = pod_id(containers, id).await? else { return Ok(None) };
    let all = Selector { sandbox: Some(pod.clone()), ..Default::default() };
    let removals = record::list(&containers.containerd, &all)
        .await?
        .into_iter()
        .map(|c| async move { remove::remove(containers, &c.id).await });
    futures::future::try_join_all(removals).await?;
    Ok(Some(pod))
}
