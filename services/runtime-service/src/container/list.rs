//! ListContainers: "lists all containers by filters." Filters: id (or a unique prefix of one),
//! state, pod sandbox id, label selector; every one set must match.

use super::record;
use super::select::Selector;
use super::{ContainerError, Containers};
use crisp_proto::cri::{Container, ContainerFilter, ContainerState, ImageSpec};

/// The containerd selector for a CRI filter.
pub fn selector(filter: Option<&ContainerFilter>) -> Selector {
    let Some(filter) = filter else { return Selector::default() };
    Selector {
        id: (!filter.id.is_empty()).then(|| filter.id.clone()),
        sandbox: (!filter.pod_sandbox_id.is_empty()).then(|| filter.pod_sandbox_id.clone()),
        state: filter.state.as_ref().map(|s| match ContainerState::try_from(s.state) {
            Ok(ContainerState::ContainerCreated) => "created".to_string(),
            Ok(ContainerState::ContainerRunning) => "running".to_string(),
            Ok(ContainerState::ContainerExited) => "exited".to_string(),
            // UNKNOWN: crisp never reports it, so nothing matches.
            _ => "unknown".to_string(),
        }),
        labels: filter.label_selector.clone(),
    }
}

pub async fn list(containers: &Containers, filter: Option<ContainerFilter>) -> Result<Vec<Container>, ContainerError> {
    let mut selector = selector(filter.as_ref());
    // A pod id may be a prefix too: resolve it to the pod's full id.
    if let Some(pod) = &selector.sandbox
        && pod.len() < 64
    {
        match crate::sandbox::find_record(&containers.containerd, pod).await {
            Ok(Some(found)) => selector.sandbox = Some(found.sandbox.id),
            Ok(None) | Err(_) => return Ok(vec![]),
        }
    }
    let stored = record::list(&containers.containerd, &selector).await?;
    Ok(stored
        .into_iter()
        .map(|s| Container {
            id: s.id.clone(),
            pod_sandbox_id: s.info.sandbox_id.clone(),
            metadata: s.config.metadata.clone(),
            image: Some(ImageSpec { image: s.info.image.clone(), ..Default::default() }),
            image_ref: s.info.image_ref.clone(),
            state: s.state.cri() as i32,
            created_at: s.info.created_at,
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
            image_id: s.info.image_id.clone(),
        })
        .collect())
}
