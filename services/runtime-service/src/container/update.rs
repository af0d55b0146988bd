//! UpdateContainerResources: "updates ContainerConfig of the container synchronously. If
//! runtime fails to transactionally update the requested resources, an error is returned."
//!
//! As containerd's CRI plugin does it:
//! 1. the request's Linux resources are checked (ranges the kernel takes) and merged into the
//!    container's OCI spec (`linux.resources`: CPU shares/quota/period/cpuset, memory limit and
//!    swap, hugepages, `unified`; a zero or empty value leaves the setting as it is);
//! 2. the new spec is recorded in containerd's container record (field mask `spec`), where a
//!    restart finds them, and the merged CRI resources in the record's CRI config, where
//!    ContainerStatus reads them;
//! 3. a container with a live task gets the new `linux.resources` through containerd's task
//!    update (runc applies them to the cgroup); a container not started, or whose task is gone,
//!    is recorded only. If the task refuses the update the record (spec and config) is put back as
//!    it was, and the error is answered.
//!
//! The container's lock is held throughout (as its start and exit take it). An unknown id is
//! NOT_FOUND; an exited container is FAILED_PRECONDITION (there is nothing to
//! update); an out-of-range value is INVALID_ARGUMENT naming the field.

use super::Containers;
use super::record::{self, Stored};
use super::spec::HostFeatures;
use super::stats::{self, StatsError};
use crisp_containerd::containerd_client::services::v1::{
    Container, GetRequest, UpdateContainerRequest, UpdateTaskRequest,
};
use crisp_containerd::labels::crisp::CONTAINER_STATE;
use crisp_containerd::{Containerd, ContainerdError};
use crisp_errors::GrpcError;
use crisp_proto::cri::{LinuxContainerResources, UpdateContainerResourcesRequest};
use serde_json::{Map, Value, json};
use tonic::Code;

/// The type containerd's task update takes its resources as (JSON).
const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Find(#[from] StatsError),
    #[error("resources: `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("container `{0}` has exited: there is nothing to update")]
    Exited(String),
    #[error("container `{id}`: its OCI spec is unreadable")]
    Spec { id: String },
    #[error("container `{id}`: {source}")]
    Containerd { id: String, source: ContainerdError },
    #[error("{0}")]
    Record(#[from] super::ContainerError),
}

impl GrpcError for UpdateError {
    fn code(&self) -> Code {
        match self {
            UpdateError::Find(source) => source.code(),
            UpdateError::Invalid { .. } => Code::InvalidArgument,
            UpdateError::Exited(_) => Code::FailedPrecondition,
            UpdateError::Spec { .. } => Code::Internal,
            UpdateError::Containerd { source, .. } => source.code(),
            UpdateError::Record(source) => source.code(),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> UpdateError {
    UpdateError::Invalid { field, reason: reason.into() }
}

/// `0-3,7`: comma-separated numbers and ranges.
fn cpu_list(list: &str) -> bool {
    list.split(',').all(|part| {
        let mut ends = part.splitn(2, '-').map(|n| n.parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(_)), None) => true,
            (Some(Ok(a)), Some(Ok(b))) => a <= b,
            _ => false,
        }
    })
}

/// The ranges the kernel takes.
pub fn validate(r: &LinuxContainerResources) -> Result<(), UpdateError> {
    for (name, value) in
        [("cpu_period", r.cpu_period), ("cpu_shares", r.cpu_shares), ("memory_limit_in_bytes", r.memory_limit_in_bytes)]
    {
        if value < 0 {
            return Err(invalid(name, format!("{value} is negative")));
        }
    }
    if r.cpu_quota < -1 {
        return Err(invalid("cpu_quota", format!("{} is neither -1 (none) nor a quota", r.cpu_quota)));
    }
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(invalid("cpu_period", format!("{}us is outside 1000-1000000", r.cpu_period)));
    }
    if r.cpu_quota > 0 && r.cpu_quota < 1_000 {
        return Err(invalid("cpu_quota", format!("{}us is below the kernel's 1000", r.cpu_quota)));
    }
    if r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares) {
        return Err(invalid("cpu_shares", format!("{} is outside 2-262144", r.cpu_shares)));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(invalid("memory_swap_limit_in_bytes", "is neither -1 (unlimited) nor a limit"));
    }
    for (name, list) in [("cpuset_cpus", &r.cpuset_cpus), ("cpuset_mems", &r.cpuset_mems)] {
        if !list.is_empty() && !cpu_list(list) {
            return Err(invalid(name, format!("`{list}` is not a list like `0-3,7`")));
        }
    }
    if let Some(key) = r.unified.keys().find(|k| k.is_empty() || k.contains('/') || k.starts_with('.')) {
        return Err(invalid("unified", format!("`{key}` is not a cgroup file name")));
    }
    if let Some(h) = r.hugepage_limits.iter().find(|h| h.page_size.is_empty()) {
        return Err(invalid("hugepage_limits", format!("a limit of {} has no page size", h.limit)));
    }
    Ok(())
}

/// The object at `key` in `object`, made one if it is not.
fn object<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = object.entry(key).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().unwrap_or_else(|| unreachable!("made an object above"))
}

/// `spec` with `r` merged into its `linux.resources`; none if `spec` is not an object. As the
/// spec builder does on this `host`: a new memory limit caps swap too unless a swap limit is
/// asked (where swap is accounted), hugepage limits only where the hugetlb controller is.
pub fn merge(spec: &Value, r: &LinuxContainerResources, host: &HostFeatures) -> Option<Value> {
    let mut spec = spec.clone();
    let resources = object(object(spec.as_object_mut()?, "linux"), "resources");
    let cpu = object(resources, "cpu");
    if r.cpu_period != 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let memory = object(resources, "memory");
    if r.memory_limit_in_bytes != 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
        if r.memory_swap_limit_in_bytes == 0 && host.swap_limit {
            memory.insert("swap".into(), json!(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap_limit {
        memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    if !r.hugepage_limits.is_empty() && host.hugetlb {
        let limits: Vec<Value> =
            r.hugepage_limits.iter().map(|h| json!({"pageSize": h.page_size, "limit": h.limit})).collect();
        resources.insert("hugepageLimits".into(), json!(limits));
    }
    if !r.unified.is_empty() {
        let unified = object(resources, "unified");
        for (key, value) in &r.unified {
            unified.insert(key.clone(), json!(value));
        }
    }
    Some(spec)
}

/// The CRI resources `old` with `r` merged in as [`merge`] merges them into the spec: what `r`
/// sets (non-zero, non-empty) replaces, the rest stays (what ContainerStatus then reports).
pub fn merge_cri(old: &LinuxContainerResources, r: &LinuxContainerResources) -> LinuxContainerResources {
    let pick = |new: i64, old: i64| if new != 0 { new } else { old };
    let pick_str = |new: &String, old: &String| if new.is_empty() { old.clone() } else { new.clone() };
    let mut unified = old.unified.clone();
    unified.extend(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    LinuxContainerResources {
        cpu_period: pick(r.cpu_period, old.cpu_period),
        cpu_quota: pick(r.cpu_quota, old.cpu_quota),
        cpu_shares: pick(r.cpu_shares, old.cpu_shares),
        memory_limit_in_bytes: pick(r.memory_limit_in_bytes, old.memory_limit_in_bytes),
        memory_swap_limit_in_bytes: pick(r.memory_swap_limit_in_bytes, old.memory_swap_limit_in_bytes),
        // Not updated on a running container (as containerd): the one it started with.
        oom_score_adj: old.oom_score_adj,
        cpuset_cpus: pick_str(&r.cpuset_cpus, &old.cpuset_cpus),
        cpuset_mems: pick_str(&r.cpuset_mems, &old.cpuset_mems),
        hugepage_limits: if r.hugepage_limits.is_empty() {
            old.hugepage_limits.clone()
        } else {
            r.hugepage_limits.clone()
        },
        unified,
    }
}

/// Records `spec` as the container's OCI spec.
async fn record(containerd: &Containerd, container: &Container, spec: &Value) -> Result<(), UpdateError> {
    let mut any = container.spec.clone().unwrap_or_default();
    any.value = serde_json::to_vec(spec).map_err(|_| UpdateError::Spec { id: container.id.clone() })?;
    let update = UpdateContainerRequest {
        container: Some(Container { id: container.id.clone(), spec: Some(any), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["spec".into()] }),
    };
    containerd.containers().update(update).await.map_err(|s| UpdateError::Containerd {
        id: container.id.clone(),
        source: ContainerdError::call("recording the container's spec", s),
    })?;
    Ok(())
}

/// Whether the container has a task that can take an update (created, running or paused).
async fn has_live_task(containerd: &Containerd, id: &str) -> Result<bool, UpdateError> {
    use crisp_containerd::containerd_client::types::v1::Status;
    match containerd.tasks().get(GetRequest { container_id: id.to_string(), exec_id: String::new() }).await {
        Ok(task) => {
            let status = task.into_inner().process.map(|p| p.status).unwrap_or_default();
            Ok([Status::Created, Status::Running, Status::Paused, Status::Pausing].iter().any(|s| *s as i32 == status))
        }
        Err(s) => match ContainerdError::call("getting the container's task", s) {
            err if err.is_not_found() => Ok(false),
            source => Err(UpdateError::Containerd { id: id.to_string(), source }),
        },
    }
}

/// Hands `resources` to the container's task.
async fn update_task(containerd: &Containerd, id: &str, resources: &Value) -> Result<(), UpdateError> {
    let request = UpdateTaskRequest {
        container_id: id.to_string(),
        resources: Some(prost_types::Any {
            type_url: RESOURCES_TYPE.into(),
            value: serde_json::to_vec(resources).map_err(|_| UpdateError::Spec { id: id.to_string() })?,
        }),
        annotations: Default::default(),
    };
    match containerd.tasks().update(request).await {
        Ok(_) => Ok(()),
        Err(s) => match ContainerdError::call("updating the container's task", s) {
            // The task exited meanwhile: the record is what a restart will use.
            err if err.is_not_found() => Ok(()),
            source => Err(UpdateError::Containerd { id: id.to_string(), source }),
        },
    }
}

/// The container's record as the lifecycle keeps it, its config's resources set to `resources`.
fn with_resources(mut stored: Stored, resources: LinuxContainerResources) -> Stored {
    stored.config.linux.get_or_insert_with(Default::default).resources = Some(resources);
    stored
}

pub async fn update(containers: &Containers, request: UpdateContainerResourcesRequest) -> Result<(), UpdateError> {
    let containerd = &containers.containerd;
    if let Some(r) = &request.linux {
        validate(r)?;
    }
    let id = stats::find(containerd, &request.container_id).await?.id;
    // A start (which reads the spec to make the task) or an exit never interleaves with this;
    // the record is read again under the lock.
    let _lock = containers.lock(&id).await;
    let container = stats::find(containerd, &id).await?;
    if container.labels.get(CONTAINER_STATE).is_some_and(|s| s == "exited") {
        return Err(UpdateError::Exited(id));
    }
    let Some(resources) = &request.linux else {
        return Ok(());
    };
    // The CRI config as CreateContainer recorded it, where ContainerStatus reads the resources.
    let stored = record::read(container.clone()).ok();
    let old = stats::spec_json(&container);
    let new = merge(&old, resources, &containers.host).ok_or_else(|| UpdateError::Spec { id: id.clone() })?;
    record(containerd, &container, &new).await?;
    let applied = async {
        if let Some(stored) = &stored {
            let old_resources = stored.config.linux.as_ref().and_then(|l| l.resources.clone()).unwrap_or_default();
            let updated = with_resources(stored.clone(), merge_cri(&old_resources, resources));
            record::save_config(containerd, &updated).await?;
        }
        if has_live_task(containerd, &id).await? {
            update_task(containerd, &id, &new["linux"]["resources"]).await?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = applied {
        // Put the record back as it was: the update is all or nothing.
        let restored = async {
            record(containerd, &container, &old).await?;
            if let Some(stored) = &stored {
                record::save_config(containerd, stored).await?;
            }
            Ok::<_, UpdateError>(())
        };
        if let Err(rollback) = restored.await {
            tracing::error!(container = %id, error = %crisp_errors::message_chain(&rollback), "cannot restore the container's record after a failed update");
        }
        containers.index_refresh(&id).await;
        return Err(err);
    }
    // ContainerStatus answers the resources from the index.
    containers.index_refresh(&id).await;
    tracing::info!(container = %id, resources = %new["linux"]["resources"], "container resources updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_proto::cri::HugepageLimit;

    #[test]
    fn requested_resources_merge_into_the_spec_and_zero_keeps_what_is_there() {
        let spec = json!({
            "process": {"args": ["sh"]},
            "linux": {"cgroupsPath": "/p/c", "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "cpu": {"shares": 2, "quota": 10000, "period": 100000},
                "memory": {"limit": 1048576},
            }},
        });
        let request = LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 0 }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            ..Default::default()
        };
        let host = HostFeatures { swap_limit: true, hugetlb: true, ..Default::default() };
        let merged = merge(&spec, &request, &host).unwrap();
        let r = &merged["linux"]["resources"];
        assert_eq!(r["cpu"], json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}));
        // Swap is capped at the new memory limit, as at create.
        assert_eq!(r["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
        assert_eq!(r["hugepageLimits"], json!([{"pageSize": "2MB", "limit": 0}]));
        assert_eq!(r["unified"], json!({"memory.high": "1000000"}));
        // Everything else is untouched.
        assert_eq!(r["devices"], spec["linux"]["resources"]["devices"]);
        assert_eq!(merged["process"], spec["process"]);
        assert_eq!(merged["linux"]["cgroupsPath"], "/p/c");
        // A spec without resources gets them.
        let bare = merge(&json!({}), &LinuxContainerResources { cpu_period: 50_000, ..Default::default() }, &host);
        assert_eq!(bare.unwrap()["linux"]["resources"]["cpu"]["period"], 50_000);
        assert!(merge(&Value::Null, &request, &host).is_none());
        // Where swap is not accounted and there is no hugetlb controller: neither is set.
        let plain = merge(&json!({}), &request, &HostFeatures::default()).unwrap();
        assert_eq!(plain["linux"]["resources"]["memory"], json!({"limit": 64 << 20}));
        assert!(plain["linux"]["resources"].get("hugepageLimits").is_none());
    }

    #[test]
    fn the_cri_view_of_the_resources_merges_as_the_spec_does() {
        let old = LinuxContainerResources {
            cpu_shares: 2,
            cpu_quota: 10_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 1 << 20,
            oom_score_adj: 999,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let request = LinuxContainerResources {
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 5,
            ..Default::default()
        };
        let merged = merge_cri(&old, &request);
        assert_eq!(
            merged,
            LinuxContainerResources {
                cpu_shares: 2,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 999,
                cpuset_cpus: "0".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn resources_out_of_the_kernels_range_are_refused_naming_the_field() {
        let field = |r: LinuxContainerResources| match validate(&r) {
            Err(UpdateError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(LinuxContainerResources { cpu_shares: 1, ..Default::default() }), "cpu_shares");
        assert_eq!(field(LinuxContainerResources { cpu_quota: 500, ..Default::default() }), "cpu_quota");
        assert_eq!(field(LinuxContainerResources { cpu_period: 10, ..Default::default() }), "cpu_period");
        assert_eq!(
            field(LinuxContainerResources { memory_limit_in_bytes: -5, ..Default::default() }),
            "memory_limit_in_bytes"
        );
        assert_eq!(field(LinuxContainerResources { cpuset_cpus: "0-".into(), ..Default::default() }), "cpuset_cpus");
        assert_eq!(
            field(LinuxContainerResources {
                unified: [("../x".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            "unified"
        );
        assert!(validate(&LinuxContainerResources { cpu_quota: -1, cpu_shares: 2, ..Default::default() }).is_ok());
        let err = validate(&LinuxContainerResources { cpu_shares: 1, ..Default::default() }).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
