//! ListPodSandbox: "returns a list of PodSandboxes", filtered by id (exact, or a unique
//! prefix as containerd's CRI plugin resolves it), state, and a label selector (every pair
//! must match).

use super::SandboxError;
use super::record::{self, Stored};
use super::status::{cri_state, metadata};
use crisp_containerd::Containerd;
use crisp_proto::cri::{PodSandbox, PodSandboxFilter};

pub async fn list(containerd: &Containerd, filter: Option<PodSandboxFilter>) -> Result<Vec<PodSandbox>, SandboxError> {
    let all = record::list_all(containerd).await?;
    Ok(filtered(all, filter.as_ref()).iter().map(to_cri).collect())
}

fn to_cri(stored: &Stored) -> PodSandbox {
    let s = &stored.sandbox;
    PodSandbox {
        id: s.id.clone(),
        metadata: Some(metadata(stored)),
        state: cri_state(stored.state) as i32,
        created_at: s.created_at,
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

pub fn filtered(all: Vec<Stored>, filter: Option<&PodSandboxFilter>) -> Vec<Stored> {
    let Some(filter) = filter else { return all };
    let id = if filter.id.is_empty() {
        None
    } else {
        // A prefix that matches no pod or several matches nothing.
        Some(match record::resolve(all.clone(), &filter.id) {
            Ok(Some(stored)) => stored.sandbox.id,
            _ => filter.id.clone(),
        })
    };
    all.into_iter()
        .filter(|s| id.as_ref().is_none_or(|id| &s.sandbox.id == id))
        .filter(|s| filter.state.as_ref().is_none_or(|want| cri_state(s.state) as i32 == want.state))
        .filter(|s| filter.label_selector.iter().all(|(k, v)| s.sandbox.labels.get(k) == Some(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::record::{Sandbox, State};
    use crisp_proto::cri::{PodSandboxState, PodSandboxStateValue};
    use std::collections::HashMap;

    fn pod(id: &str, state: State, app: &str) -> Stored {
        Stored {
            sandbox: Sandbox {
                id: id.into(),
                name: id.into(),
                uid: "u".into(),
                namespace: "default".into(),
                attempt: 0,
                created_at: 0,
                labels: HashMap::from([("app".to_string(), app.to_string())]),
                annotations: HashMap::new(),
                runtime_handler: String::new(),
                hostname: String::new(),
                log_directory: String::new(),
                cgroup_parent: String::new(),
                network_mode: 0,
                pid_mode: 0,
                ipc_mode: 0,
                dir: Default::default(),
                network_dir: Default::default(),
                netns: None,
                shm: Default::default(),
                ips: vec![],
                overhead: None,
                resources: None,
                infra: None,
            },
            state,
            recorded_state: state,
            network_attached: false,
        }
    }

    fn ids(pods: Vec<Stored>) -> Vec<String> {
        let mut ids: Vec<String> = pods.into_iter().map(|p| p.sandbox.id).collect();
        ids.sort();
        ids
    }

    fn all() -> Vec<Stored> {
        vec![pod("abc1", State::Ready, "web"), pod("abd2", State::NotReady, "web"), pod("ff03", State::Ready, "db")]
    }

    #[test]
    fn filters_by_id_prefix_state_and_labels() {
        assert_eq!(ids(filtered(all(), None)).len(), 3);
        let by_id = |id: &str| PodSandboxFilter { id: id.into(), ..Default::default() };
        assert_eq!(ids(filtered(all(), Some(&by_id("abc1")))), ["abc1"]);
        assert_eq!(ids(filtered(all(), Some(&by_id("ff")))), ["ff03"]);
        assert!(filtered(all(), Some(&by_id("ab"))).is_empty(), "an ambiguous prefix matches nothing");
        assert!(filtered(all(), Some(&by_id("zz"))).is_empty());

        let ready = PodSandboxFilter {
            state: Some(PodSandboxStateValue { state: PodSandboxState::SandboxReady as i32 }),
            ..Default::default()
        };
        assert_eq!(ids(filtered(all(), Some(&ready))), ["abc1", "ff03"]);

        let web_ready =
            PodSandboxFilter { label_selector: HashMap::from([("app".to_string(), "web".to_string())]), ..ready };
        assert_eq!(ids(filtered(all(), Some(&web_ready))), ["abc1"]);
    }
}
