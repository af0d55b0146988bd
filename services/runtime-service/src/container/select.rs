//! Finding containers in containerd by what a CRI filter asks: an id or unique id prefix, a
//! pod sandbox, a state, labels. Every RPC that lists or looks up containers goes through here.

use crisp_containerd::containerd_client::services::v1::{Container, ListContainersRequest};
use crisp_containerd::labels::crisp::{CONTAINER_SANDBOX, CONTAINER_STATE, KIND, KIND_CONTAINER, POD_LABEL_PREFIX};
use crisp_containerd::{Containerd, ContainerdError};
use std::collections::HashMap;

/// What to select; every field set must match.
#[derive(Debug, Default, Clone)]
pub struct Selector {
    /// A full container id or a prefix of one.
    pub id: Option<String>,
    /// A pod sandbox id (full).
    pub sandbox: Option<String>,
    /// A state label value (`created`, `running`, `exited`).
    pub state: Option<String>,
    /// The container's own labels (a CRI label selector).
    pub labels: HashMap<String, String>,
}

/// The containerd filter for `selector` (the id prefix is matched afterwards).
fn filter(selector: &Selector) -> String {
    let mut parts = vec![format!("labels.\"{KIND}\"=={KIND_CONTAINER}")];
    if let Some(sandbox) = &selector.sandbox {
        parts.push(format!("labels.\"{CONTAINER_SANDBOX}\"=={}", quote(sandbox)));
    }
    if let Some(state) = &selector.state {
        parts.push(format!("labels.\"{CONTAINER_STATE}\"=={}", quote(state)));
    }
    for (key, value) in &selector.labels {
        parts.push(format!("labels.\"{POD_LABEL_PREFIX}{}\"=={}", escape(key), quote(value)));
    }
    parts.join(",")
}

/// A value in containerd's filter syntax: quoted, with `"` and `\` escaped.
fn quote(value: &str) -> String {
    format!("\"{}\"", escape(value))
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The containers `selector` matches. An id that is a prefix matches every container it starts.
pub async fn select(containerd: &Containerd, selector: &Selector) -> Result<Vec<Container>, ContainerdError> {
    let request = ListContainersRequest { filters: vec![filter(selector)] };
    let response =
        containerd.containers().list(request).await.map_err(|s| ContainerdError::call("listing containers", s))?;
    let mut containers = response.into_inner().containers;
    if let Some(id) = &selector.id {
        containers.retain(|c| c.id.starts_with(id.as_str()));
    }
    Ok(containers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_becomes_one_containerd_filter() {
        let selector = Selector {
            sandbox: Some("abc".into()),
            state: Some("running".into()),
            labels: HashMap::from([("app".to_string(), "we\"b".to_string())]),
            ..Selector::default()
        };
        assert_eq!(
            filter(&selector),
            "labels.\"crisp.io/kind\"==container,labels.\"crisp.io/container.sandbox\"==\"abc\",\
             labels.\"crisp.io/container.state\"==\"running\",labels.\"crisp.io/label.app\"==\"we\\\"b\""
        );
    }
}
