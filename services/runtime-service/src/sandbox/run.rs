//! RunPodSandbox: "creates and starts a pod-level sandbox. Runtimes must ensure the sandbox
//! is in the ready state on success."
//!
//! Steps, each undone by [`Rollback`] when a later one fails (or the call is dropped): the
//! name is reserved (a duplicate of a live reservation or record names the existing pod);
//! the pod's directories; its namespaces (none of a kind the pod shares with the host); its
//! files; loopback and the CNI network (not with host networking); the infra process where the
//! pod needs one ([`super::infra`]; its sandbox image made sure of first, before anything is
//! made); the containerd record, last, which makes the pod exist.

use super::files::{self, ns_dir};
use super::image::SandboxImage;
use super::infra::{self, Infra};
use super::namespaces::{self, Kind};
use super::record::{self, Sandbox};
use super::{SandboxError, network};
use crisp_config::Config;
use crisp_containerd::Containerd;
use crisp_proto::cri::{NamespaceOption, PodSandboxConfig, RunPodSandboxRequest};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Names of pods a RunPodSandbox in flight is making, with their ids.
#[derive(Default, Clone)]
pub struct Reservations(Arc<Mutex<HashMap<String, String>>>);

/// A reserved name, released when dropped.
struct Reserved {
    reservations: Reservations,
    name: String,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Ok(mut names) = self.reservations.0.lock() {
            names.remove(&self.name);
        }
    }
}

impl Reservations {
    fn reserve(&self, name: &str, id: &str) -> Result<Reserved, SandboxError> {
        let mut names = self.0.lock().map_err(|_| SandboxError::Record {
            pod: id.to_string(),
            reason: "the name reservations are poisoned".into(),
        })?;
        if let Some(existing) = names.get(name) {
            return Err(SandboxError::NameReserved { name: name.to_string(), existing: existing.clone() });
        }
        names.insert(name.to_string(), id.to_string());
        Ok(Reserved { reservations: self.clone(), name: name.to_string() })
    }
}

/// Where a pod's CNI state is kept and the plugin directories, for DEL.
type NetworkUndo = (PathBuf, Vec<PathBuf>);

/// What a failed run undoes, in reverse order: the infra process, CNI DEL, then the
/// directories with their mounts.
struct Rollback {
    pod: String,
    dir: Option<PathBuf>,
    network: Option<NetworkUndo>,
    infra: Option<(Containerd, Infra)>,
}

impl Rollback {
    async fn undo(mut self) {
        let (dir, network, infra) = (self.dir.take(), self.network.take(), self.infra.take());
        undo(self.pod.clone(), dir, network, infra).await;
    }

    fn disarm(mut self) {
        self.dir = None;
        self.network = None;
        self.infra = None;
    }
}

async fn undo(pod: String, dir: Option<PathBuf>, network: Option<NetworkUndo>, infra: Option<(Containerd, Infra)>) {
    if let Some((containerd, infra)) = infra
        && let Err(err) = infra::remove(&containerd, &pod, &infra).await
    {
        tracing::warn!(pod, error = %crisp_errors::message_chain(&err), "rolling back: removing the infra process failed");
    }
    let Some(dir) = dir else { return };
    // A DEL that fails keeps the CNI state: the next start's sweep tries again.
    let mut network_dir = None;
    if let Some((dir, bin_dirs)) = network {
        match network::detach(&pod, &dir, &bin_dirs).await {
            Ok(()) => network_dir = Some(dir),
            Err(err) => {
                tracing::warn!(pod, error = %crisp_errors::message_chain(&err), "rolling back: CNI DEL failed")
            }
        }
    }
    let teardown = tokio::task::spawn_blocking({
        let pod = pod.clone();
        move || files::teardown(&pod, &dir, network_dir.as_deref())
    });
    match teardown.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(pod, error = %crisp_errors::message_chain(&err), "rolling back: teardown failed")
        }
        Err(err) => tracing::warn!(pod, error = %err, "rolling back: teardown panicked"),
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        // A dropped call (the client went away) still undoes what it made.
        if self.dir.is_some()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(undo(self.pod.clone(), self.dir.take(), self.network.take(), self.infra.take()));
        }
    }
}

fn new_id() -> Result<String, SandboxError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(SandboxError::io(
        "(new)",
        "reading",
        Path::new("/dev/urandom"),
    ))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The runtime handlers crisp serves: the default one and its name.
pub fn known_handler(handler: &str) -> bool {
    matches!(handler, "" | "runc")
}

pub fn validate(request: &RunPodSandboxRequest) -> Result<&PodSandboxConfig, SandboxError> {
    let config = request.config.as_ref().ok_or(SandboxError::MissingField("config"))?;
    let metadata = config.metadata.as_ref().ok_or(SandboxError::MissingField("config.metadata"))?;
    if metadata.name.is_empty() {
        return Err(SandboxError::MissingField("config.metadata.name"));
    }
    if metadata.uid.is_empty() {
        return Err(SandboxError::MissingField("config.metadata.uid"));
    }
    if metadata.namespace.is_empty() {
        return Err(SandboxError::MissingField("config.metadata.namespace"));
    }
    if !known_handler(&request.runtime_handler) {
        return Err(SandboxError::UnknownHandler(request.runtime_handler.clone()));
    }
    super::validate::config(config)?;
    Ok(config)
}

fn namespace_options(config: &PodSandboxConfig) -> NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// The pod's sysctls, each checked to belong to a namespace the pod gets of its own.
pub fn check_sysctls(config: &PodSandboxConfig, kinds: &[Kind]) -> Result<Vec<(String, String)>, SandboxError> {
    let mut sysctls: Vec<(String, String)> =
        config.linux.as_ref().map(|l| l.sysctls.clone().into_iter().collect()).unwrap_or_default();
    sysctls.sort();
    for (key, _) in &sysctls {
        let kind = namespaces::sysctl_kind(key).map_err(|reason| SandboxError::Sysctl { key: key.clone(), reason })?;
        if !kinds.contains(&kind) {
            let reason = match kind {
                Kind::Net | Kind::Uts => "the pod uses the host's network",
                Kind::Ipc => "the pod uses the host's IPC namespace",
            };
            return Err(SandboxError::Sysctl { key: key.clone(), reason });
        }
    }
    Ok(sysctls)
}

/// The namespaces crisp makes for a pod: a pod on the host's network keeps the host's UTS
/// namespace too, as containerd does.
fn own_namespaces(host_network: bool, host_ipc: bool) -> Vec<Kind> {
    let mut kinds = vec![];
    if !host_network {
        kinds.extend([Kind::Net, Kind::Uts]);
    }
    if !host_ipc {
        kinds.push(Kind::Ipc);
    }
    kinds
}

pub async fn run(
    containerd: &Containerd,
    config: &Config,
    reservations: &Reservations,
    images: &SandboxImage,
    request: RunPodSandboxRequest,
) -> Result<String, SandboxError> {
    let pod_config = validate(&request)?;
    let metadata = pod_config.metadata.clone().unwrap_or_default();
    let id = new_id()?;
    let options = namespace_options(pod_config);

    let mut sandbox = Sandbox {
        id: id.clone(),
        name: metadata.name,
        uid: metadata.uid,
        namespace: metadata.namespace,
        attempt: metadata.attempt,
        created_at: 0,
        labels: pod_config.labels.clone(),
        annotations: pod_config.annotations.clone(),
        runtime_handler: request.runtime_handler.clone(),
        hostname: pod_config.hostname.clone(),
        log_directory: pod_config.log_directory.clone(),
        cgroup_parent: pod_config.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default(),
        network_mode: options.network,
        pid_mode: options.pid,
        ipc_mode: options.ipc,
        dir: config.runtime.state_dir.join("pods").join(&id),
        network_dir: config.runtime.root_dir.join("pods").join(&id),
        netns: None,
        shm: PathBuf::new(),
        ips: vec![],
        overhead: pod_config.linux.as_ref().and_then(|l| l.overhead.as_ref()).map(Into::into),
        resources: pod_config.linux.as_ref().and_then(|l| l.resources.as_ref()).map(Into::into),
        infra: None,
    };
    check_sysctls(pod_config, &own_namespaces(sandbox.host_network(), sandbox.host_ipc()))?;

    // The name: one pod per name_namespace_uid_attempt, in flight or recorded.
    let full_name = sandbox.full_name();
    let _reserved = reservations.reserve(&full_name, &id)?;
    if let Some(existing) = record::list_all(containerd).await?.into_iter().find(|s| s.sandbox.full_name() == full_name)
    {
        return Err(SandboxError::NameReserved { name: full_name, existing: existing.sandbox.id });
    }

    // The sandbox image, before anything is made: a pod that cannot get one fails cleanly.
    let image = match infra::needed(config, sandbox.pid_mode) {
        true => Some(images.ensure(containerd, config).await?),
        false => None,
    };
    make(containerd, config, pod_config, image.as_ref(), &mut sandbox).await?;
    tracing::info!(pod = %id, name = %full_name, ips = ?sandbox.ips, "pod sandbox ready");
    Ok(id)
}

/// Makes the pod's parts in order and records it; on failure undoes what was made.
async fn make(
    containerd: &Containerd,
    config: &Config,
    pod_config: &PodSandboxConfig,
    image: Option<&super::image::Ready>,
    sandbox: &mut Sandbox,
) -> Result<(), SandboxError> {
    let id = sandbox.id.clone();
    let (host_network, host_ipc) = (sandbox.host_network(), sandbox.host_ipc());
    let mut rollback = Rollback { pod: id.clone(), dir: None, network: None, infra: None };
    let result = async {
        tokio::fs::create_dir_all(&sandbox.dir).await.map_err(SandboxError::io(&id, "creating", &sandbox.dir))?;
        rollback.dir = Some(sandbox.dir.clone());

        let kinds = own_namespaces(host_network, host_ipc);
        let sysctls = check_sysctls(pod_config, &kinds)?;
        let ns = ns_dir(&sandbox.dir);
        namespaces::pin(&id, &ns, &kinds, &sandbox.hostname, &sysctls).await?;

        let hostname = if host_network {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            sandbox.hostname.clone()
        };
        let dns = pod_config.dns_config.clone();
        let (pod, dir) = (id.clone(), sandbox.dir.clone());
        sandbox.shm =
            tokio::task::spawn_blocking(move || files::prepare(&pod, &dir, &hostname, dns.as_ref(), host_ipc))
                .await
                .map_err(|e| SandboxError::Task { pod: id.clone(), what: "preparing its files", source: e })??;

        if !host_network {
            let netns = namespaces::pin_path(&ns, Kind::Net);
            tokio::fs::create_dir_all(&sandbox.network_dir).await.map_err(SandboxError::io(
                &id,
                "creating",
                &sandbox.network_dir,
            ))?;
            rollback.network = Some((sandbox.network_dir.clone(), config.runtime.cni_bin_dirs.clone()));
            let pod_cidrs = crate::pod_cidr::current(&config.runtime.root_dir);
            sandbox.ips = network::attach(sandbox, &netns, pod_config, &pod_cidrs, &config.runtime).await?;
            sandbox.netns = Some(netns);
        }

        if let Some(image) = image {
            let started = infra::start(containerd, config, image, sandbox).await?;
            rollback.infra = Some((containerd.clone(), started.clone()));
            sandbox.infra = Some(started);
        }

        sandbox.created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        record::create(containerd, &config.runtime.runtime_type, sandbox, !host_network).await
    }
    .await;
    match result {
        Ok(()) => {
            rollback.disarm();
            Ok(())
        }
        Err(err) => {
            tracing::info!(pod = %id, error = %crisp_errors::message_chain(&err), "RunPodSandbox failed: rolling back");
            rollback.undo().await;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_errors::GrpcError;
    use crisp_proto::cri::PodSandboxMetadata;

    fn request(name: &str, uid: &str, namespace: &str, handler: &str) -> RunPodSandboxRequest {
        RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.into(),
                    uid: uid.into(),
                    namespace: namespace.into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: handler.into(),
        }
    }

    #[test]
    fn validation_names_the_missing_field_and_the_unknown_handler() {
        assert!(validate(&request("web", "u1", "default", "")).is_ok());
        assert!(validate(&request("web", "u1", "default", "runc")).is_ok());
        for (req, field) in [
            (request("", "u1", "default", ""), "config.metadata.name"),
            (request("web", "", "default", ""), "config.metadata.uid"),
            (request("web", "u1", "", ""), "config.metadata.namespace"),
            (RunPodSandboxRequest::default(), "config"),
        ] {
            let err = validate(&req).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = validate(&request("web", "u1", "default", "kata")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("kata"), "{err}");
    }

    #[test]
    fn sysctls_are_refused_where_the_pod_shares_the_hosts_namespace() {
        use crisp_proto::cri::LinuxPodSandboxConfig;
        let with = |key: &str| PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                sysctls: [(key.to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let own = own_namespaces(false, false);
        assert_eq!(check_sysctls(&with("net.ipv4.ip_forward"), &own).unwrap().len(), 1);
        let err = check_sysctls(&with("net.ipv4.ip_forward"), &own_namespaces(true, false)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("net.ipv4.ip_forward") && err.to_string().contains("host's network"), "{err}");
        assert!(check_sysctls(&with("kernel.shmmax"), &own_namespaces(false, true)).is_err());
        let err = check_sysctls(&with("kernel.pid_max"), &own).unwrap_err();
        assert!(err.to_string().contains("not namespaced"), "{err}");
    }

    #[test]
    fn a_name_is_reserved_once_until_released() {
        let reservations = Reservations::default();
        let first = reservations.reserve("web_default_u1_0", "aaa").unwrap();
        let err = reservations.reserve("web_default_u1_0", "bbb").err().unwrap();
        assert!(err.to_string().contains("aaa"), "{err}");
        drop(first);
        assert!(reservations.reserve("web_default_u1_0", "ccc").is_ok());
    }
}
