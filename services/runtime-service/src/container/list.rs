//! ListContainers: "lists all containers by filters." Filters: id (or a unique prefix of one),
//! state, pod sandbox id (or a unique prefix), label selector; every one set must match.
//! Answered from the lifecycle's index of containers ([`super::index`]), not by reading every
//! record from containerd.

use super::{ContainerError, Containers};
use crisp_proto::cri::{Container, ContainerFilter};

/// Whether `container` passes `filter` (the pod id already resolved to a full one).
fn matches(container: &Container, filter: &ContainerFilter, pod: Option<&str>) -> bool {
    (filter.id.is_empty() || container.id.starts_with(&filter.id))
        && pod.is_none_or(|pod| container.pod_sandbox_id == pod)
        && filter.state.as_ref().is_none_or(|s| container.state == s.state)
        && filter.label_selector.iter().all(|(k, v)| container.labels.get(k) == Some(v))
}

pub async fn list(containers: &Containers, filter: Option<ContainerFilter>) -> Result<Vec<Container>, ContainerError> {
    let filter = filter.unwrap_or_default();
    // A pod id may be a prefix: resolve it to the pod's full id.
    let pod = match filter.pod_sandbox_id.as_str() {
        "" => None,
        full if full.len() == 64 => Some(full.to_string()),
        prefix => match crate::sandbox::find_record(&containers.containerd, prefix).await {
            Ok(Some(found)) => Some(found.sandbox.id),
            Ok(None) | Err(_) => return Ok(vec![]),
        },
    };
    // The index's snapshot is newest first already.
    containers.indexed_where(|c| matches(c, &filter, pod.as_deref())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_proto::cri::{ContainerState, ContainerStateValue};

    #[test]
    fn a_filter_matches_by_id_prefix_pod_state_and_labels() {
        let container = Container {
            id: "abcdef".into(),
            pod_sandbox_id: "pod1".into(),
            state: ContainerState::ContainerRunning as i32,
            labels: [("app".to_string(), "web".to_string()), ("tier".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        assert!(matches(&container, &ContainerFilter::default(), None));
        let by_id = ContainerFilter { id: "abc".into(), ..Default::default() };
        assert!(matches(&container, &by_id, None));
        assert!(!matches(&container, &ContainerFilter { id: "abd".into(), ..Default::default() }, None));
        assert!(matches(&container, &ContainerFilter::default(), Some("pod1")));
        assert!(!matches(&container, &ContainerFilter::default(), Some("pod2")));
        let exited = ContainerFilter {
            state: Some(ContainerStateValue { state: ContainerState::ContainerExited as i32 }),
            ..Default::default()
        };
        assert!(!matches(&container, &exited, None));
        let labelled = ContainerFilter { label_selector: [("app".into(), "web".into())].into(), ..Default::default() };
        assert!(matches(&container, &labelled, None));
        let other = ContainerFilter { label_selector: [("app".into(), "db".into())].into(), ..Default::default() };
        assert!(!matches(&container, &other, None));
    }
}
