//! The builder's rules, each on a SpecInput built here (pure: no containerd, no runc).

use super::*;
use crisp_proto::cri::{
    Capability as CriCapability, ContainerMetadata, Device, ImageSpec, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    Mount as CriMount, MountPropagation, NamespaceMode, NamespaceOption, PodSandboxMetadata, SecurityProfile,
    SupplementalGroupsPolicy, security_profile::ProfileType,
};
use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction};
use std::collections::HashMap;

struct Fixture {
    config: ContainerConfig,
    pod: PodSandboxConfig,
    sandbox: Sandbox,
    image: ImageConfiguration,
    files: ImageFiles,
    host: HostFeatures,
    pid_namespace: Option<PathBuf>,
    dir: tempfile::TempDir,
}

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nalice:x:1000:1001::/home/alice:/bin/sh\n";
const GROUP: &str = "root:x:0:\nusers:x:100:alice,bob\nalice:x:1001:alice\nwheel:x:10:alice\nstaff:x:50:\n";

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join("pod");
        std::fs::create_dir_all(pod_dir.join("shm")).unwrap();
        for file in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(pod_dir.join(file), "x\n").unwrap();
        }
        let sandbox = Sandbox {
            id: "pod1".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
            created_at: 0,
            labels: HashMap::new(),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
            hostname: "web-host".into(),
            log_directory: String::new(),
            cgroup_parent: "/kubepods/podabc".into(),
            network_mode: NamespaceMode::Pod as i32,
            pid_mode: NamespaceMode::Container as i32,
            ipc_mode: NamespaceMode::Pod as i32,
            dir: pod_dir.clone(),
            network_dir: dir.path().join("net"),
            netns: Some(pod_dir.join("ns/net")),
            shm: pod_dir.join("shm"),
            ips: vec![],
            overhead: None,
            resources: None,
            infra: None,
        };
        let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/bin/entry"], "Cmd": ["serve"], "Env": ["PATH=/image/bin", "A=image"],
                "WorkingDir": "/srv", "StopSignal": "SIGQUIT"
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        Fixture {
            config: ContainerConfig {
                metadata: Some(ContainerMetadata { name: "app".into(), attempt: 0 }),
                image: Some(ImageSpec { image: "busybox:latest".into(), ..Default::default() }),
                ..Default::default()
            },
            pod: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
            sandbox,
            image,
            files: ImageFiles { passwd: Some(PASSWD.into()), group: Some(GROUP.into()) },
            host: HostFeatures { recursive_read_only: true, min_oom_score_adj: -500, ..Default::default() },
            pid_namespace: None,
            dir,
        }
    }

    fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default)
    }

    fn resources(&mut self) -> &mut LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(LinuxContainerConfig::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    fn privileged_pod(&mut self) {
        self.pod.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext { privileged: true, ..Default::default() }),
            ..Default::default()
        });
    }

    fn build(&self) -> Result<Built, SpecError> {
        let container_dir = self.dir.path().join("container");
        build(&SpecInput {
            id: "c1",
            config: &self.config,
            pod: &self.pod,
            sandbox: &self.sandbox,
            image: &self.image,
            image_files: &self.files,
            container_dir: &container_dir,
            pid_namespace: self.pid_namespace.as_deref(),
            host: &self.host,
        })
    }

    fn ok(&self) -> Built {
        self.build().unwrap()
    }
}

fn invalid_field(result: Result<Built, SpecError>) -> String {
    match result {
        Err(SpecError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

fn process(built: &Built) -> &oci_spec::runtime::Process {
    built.spec.process().as_ref().unwrap()
}

fn linux(built: &Built) -> &oci_spec::runtime::Linux {
    built.spec.linux().as_ref().unwrap()
}

fn mount<'a>(built: &'a Built, destination: &str) -> Option<&'a oci_spec::runtime::Mount> {
    built.spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(destination))
}

fn options(m: &oci_spec::runtime::Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

fn env_of(built: &Built) -> Vec<String> {
    process(built).env().clone().unwrap_or_default()
}

// --- process ---

#[test]
fn image_entrypoint_and_cmd_run_when_the_request_gives_neither() {
    let built = Fixture::new().ok();
    assert_eq!(process(&built).args().as_ref().unwrap(), &["/bin/entry", "serve"]);
}

#[test]
fn request_args_replace_the_image_cmd_but_keep_its_entrypoint() {
    let mut f = Fixture::new();
    f.config.args = vec!["--flag".into()];
    assert_eq!(process(&f.ok()).args().as_ref().unwrap(), &["/bin/entry", "--flag"]);
}

#[test]
fn request_command_replaces_entrypoint_and_cmd() {
    let mut f = Fixture::new();
    f.config.command = vec!["/bin/sh".into()];
    assert_eq!(process(&f.ok()).args().as_ref().unwrap(), &["/bin/sh"]);
    f.config.args = vec!["-c".into(), "true".into()];
    assert_eq!(process(&f.ok()).args().as_ref().unwrap(), &["/bin/sh", "-c", "true"]);
}

#[test]
fn no_command_anywhere_is_invalid() {
    let mut f = Fixture::new();
    f.image = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    assert_eq!(invalid_field(f.build()), "command");
}

#[test]
fn env_is_defaults_then_hostname_then_image_then_request() {
    let mut f = Fixture::new();
    f.config.envs = vec![
        KeyValue { key: "A".into(), value: b"request".to_vec() },
        KeyValue { key: "B".into(), value: b"x=y".to_vec() },
    ];
    assert_eq!(env_of(&f.ok()), ["PATH=/image/bin", "HOSTNAME=web-host", "A=request", "B=x=y"]);
}

#[test]
fn working_dir_is_the_requests_else_the_images() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.ok()).cwd(), Path::new("/srv"));
    f.config.working_dir = "/work".into();
    assert_eq!(process(&f.ok()).cwd(), Path::new("/work"));
}

#[test]
fn stop_signal_is_the_requests_else_the_images_else_sigterm() {
    let mut f = Fixture::new();
    assert_eq!(f.ok().stop_signal, 3);
    f.config.stop_signal = crisp_proto::cri::Signal::Sigusr1 as i32;
    assert_eq!(f.ok().stop_signal, 10);
    f.config.stop_signal = 0;
    f.image = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["x"]}, "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    assert_eq!(f.ok().stop_signal, 15);
}

#[test]
fn signals_parse_by_name_short_name_number_and_realtime_offset() {
    assert_eq!(parse_signal("SIGKILL"), Some(9));
    assert_eq!(parse_signal("term"), Some(15));
    assert_eq!(parse_signal("2"), Some(2));
    assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
    assert_eq!(parse_signal("SIGNOPE"), None);
}

#[test]
fn no_rlimits_and_a_terminal_only_when_asked() {
    let mut f = Fixture::new();
    assert!(process(&f.ok()).rlimits().is_none());
    assert_eq!(process(&f.ok()).terminal(), Some(false));
    f.config.tty = true;
    assert_eq!(process(&f.ok()).terminal(), Some(true));
}

// --- user ---

#[test]
fn image_user_by_name_takes_its_ids_and_groups() {
    let mut f = Fixture::new();
    f.image = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "alice", "Cmd": ["x"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let built = f.ok();
    assert_eq!(built.user, ProcessUser { uid: 1000, gid: 1001, supplemental_groups: vec![1001, 100, 10] });
    let user = process(&built).user();
    assert_eq!((user.uid(), user.gid()), (1000, 1001));
    assert_eq!(user.additional_gids().as_ref().unwrap(), &[1001, 100, 10]);
}

#[test]
fn image_user_with_group_name_resolves_both() {
    let mut f = Fixture::new();
    f.image = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "nobody:staff", "Cmd": ["x"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let user = f.ok().user;
    assert_eq!((user.uid, user.gid), (65534, 50));
}

#[test]
fn unknown_image_user_name_is_invalid() {
    let mut f = Fixture::new();
    f.image = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "mallory", "Cmd": ["x"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    assert_eq!(invalid_field(f.build()), "image.config.User");
}

#[test]
fn run_as_user_overrides_the_image_user_and_finds_its_primary_group() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    assert_eq!(f.ok().user, ProcessUser { uid: 1000, gid: 1001, supplemental_groups: vec![1001, 100, 10] });
    // A uid the image does not know runs with group 0.
    f.sc().run_as_user = Some(Int64Value { value: 4242 });
    assert_eq!(f.ok().user, ProcessUser { uid: 4242, gid: 0, supplemental_groups: vec![0] });
}

#[test]
fn run_as_group_sets_the_primary_group() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    f.sc().run_as_group = Some(Int64Value { value: 3000 });
    let user = f.ok().user;
    assert_eq!((user.uid, user.gid), (1000, 3000));
    assert_eq!(user.supplemental_groups[0], 3000);
}

#[test]
fn run_as_group_without_a_user_is_invalid() {
    let mut f = Fixture::new();
    f.sc().run_as_group = Some(Int64Value { value: 3000 });
    assert_eq!(invalid_field(f.build()), "linux.security_context.run_as_group");
}

#[test]
fn run_as_username_unknown_in_the_image_is_invalid() {
    let mut f = Fixture::new();
    f.sc().run_as_username = "mallory".into();
    assert_eq!(invalid_field(f.build()), "linux.security_context.run_as_username");
    f.sc().run_as_username = "alice".into();
    assert_eq!(f.ok().user.uid, 1000);
}

#[test]
fn supplemental_groups_merge_the_images_with_the_requests() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    f.sc().supplemental_groups = vec![5000, 100];
    assert_eq!(f.ok().user.supplemental_groups, [1001, 100, 10, 5000]);
}

#[test]
fn strict_supplemental_groups_ignore_the_images_groups() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    f.sc().supplemental_groups = vec![5000];
    f.sc().supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    assert_eq!(f.ok().user.supplemental_groups, [1001, 5000]);
}

#[test]
fn negative_ids_are_invalid() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(Int64Value { value: -1 });
    assert_eq!(invalid_field(f.build()), "linux.security_context.run_as_user");
}

// --- mounts ---

#[test]
fn default_filesystems_and_the_pods_files_are_mounted() {
    let f = Fixture::new();
    let built = f.ok();
    for (destination, typ) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
        ("/sys/fs/cgroup", "cgroup"),
        ("/etc/hostname", "bind"),
        ("/etc/hosts", "bind"),
        ("/etc/resolv.conf", "bind"),
        ("/dev/shm", "bind"),
    ] {
        let m = mount(&built, destination).unwrap_or_else(|| panic!("{destination} not mounted"));
        assert_eq!(m.typ().as_deref(), Some(typ), "{destination}");
    }
    assert_eq!(
        mount(&built, "/dev/shm").unwrap().source().as_deref(),
        Some(f.sandbox.shm.canonicalize().unwrap().as_path())
    );
    assert!(options(mount(&built, "/sys").unwrap()).contains(&"ro".to_string()));
    assert!(options(mount(&built, "/etc/hosts").unwrap()).contains(&"rw".to_string()));
    assert!(mount(&built, "/run").is_none());
}

#[test]
fn pod_files_are_read_only_with_a_read_only_rootfs() {
    let mut f = Fixture::new();
    f.sc().readonly_rootfs = true;
    let built = f.ok();
    assert!(built.spec.root().as_ref().unwrap().readonly().unwrap());
    assert!(options(mount(&built, "/etc/resolv.conf").unwrap()).contains(&"ro".to_string()));
    assert!(options(mount(&built, "/dev/shm").unwrap()).contains(&"rw".to_string()));
}

#[test]
fn a_request_mount_replaces_the_default_at_its_path() {
    let mut f = Fixture::new();
    let host = f.dir.path().join("myhosts");
    std::fs::write(&host, "1.2.3.4 a\n").unwrap();
    f.config.mounts = vec![CriMount {
        container_path: "/etc/hosts".into(),
        host_path: host.to_string_lossy().into(),
        ..Default::default()
    }];
    let built = f.ok();
    let hosts: Vec<_> =
        built.spec.mounts().as_ref().unwrap().iter().filter(|m| m.destination() == Path::new("/etc/hosts")).collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].source().as_deref(), Some(host.as_path()));
}

#[test]
fn bind_mounts_carry_readonly_and_private_propagation() {
    let mut f = Fixture::new();
    let host = f.dir.path().join("data");
    std::fs::create_dir(&host).unwrap();
    let path = host.to_string_lossy().to_string();
    f.config.mounts = vec![
        CriMount { container_path: "/a".into(), host_path: path.clone(), readonly: true, ..Default::default() },
        CriMount { container_path: "/b".into(), host_path: path, ..Default::default() },
    ];
    let built = f.ok();
    assert_eq!(options(mount(&built, "/a").unwrap()), ["rbind", "rprivate", "ro"]);
    assert_eq!(options(mount(&built, "/b").unwrap()), ["rbind", "rprivate", "rw"]);
    assert_eq!(linux(&built).rootfs_propagation(), &None);
}

#[test]
fn propagating_mounts_need_a_host_mount_that_propagates() {
    let mut f = Fixture::new();
    let host = f.dir.path().join("data");
    std::fs::create_dir(&host).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (_, tags) = mounts::mount_of(&info, &host.canonicalize().unwrap()).unwrap();
    f.config.mounts = vec![CriMount {
        container_path: "/b".into(),
        host_path: host.to_string_lossy().into(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    if tags.iter().any(|t| t.starts_with("shared:")) {
        let built = f.ok();
        assert_eq!(options(mount(&built, "/b").unwrap()), ["rbind", "rshared", "rw"]);
        assert_eq!(linux(&built).rootfs_propagation().as_deref(), Some("rshared"));
    } else {
        assert_eq!(invalid_field(f.build()), "mounts[0].propagation");
    }
}

#[test]
fn the_mount_holding_a_path_is_found_with_its_propagation() {
    let info = "\
1 0 8:1 / / rw - ext4 /dev/sda rw
2 1 0:5 / /mnt/shared\\040dir rw shared:7 - tmpfs t rw
3 2 0:6 / /mnt/shared\\040dir/inner rw master:7 - tmpfs t rw
";
    let (point, tags) = mounts::mount_of(info, Path::new("/mnt/shared dir/x")).unwrap();
    assert_eq!((point.as_str(), tags), ("/mnt/shared dir", vec!["shared:7".to_string()]));
    let (point, tags) = mounts::mount_of(info, Path::new("/mnt/shared dir/inner/y")).unwrap();
    assert_eq!((point.as_str(), tags), ("/mnt/shared dir/inner", vec!["master:7".to_string()]));
    let (point, tags) = mounts::mount_of(info, Path::new("/etc")).unwrap();
    assert_eq!((point.as_str(), tags.len()), ("/", 0));
}

#[test]
fn recursive_read_only_needs_readonly_private_and_runtime_support() {
    let mut f = Fixture::new();
    let host = f.dir.path().join("data");
    std::fs::create_dir(&host).unwrap();
    f.config.mounts = vec![CriMount {
        container_path: "/data".into(),
        host_path: host.to_string_lossy().into(),
        readonly: true,
        recursive_read_only: true,
        ..Default::default()
    }];
    assert_eq!(options(mount(&f.ok(), "/data").unwrap()), ["rbind", "rprivate", "rro"]);
    f.host.recursive_read_only = false;
    assert_eq!(invalid_field(f.build()), "mounts[0].recursive_read_only");
    f.host.recursive_read_only = true;
    f.config.mounts[0].readonly = false;
    assert_eq!(invalid_field(f.build()), "mounts[0].recursive_read_only");
    f.config.mounts[0].readonly = true;
    f.config.mounts[0].propagation = MountPropagation::PropagationHostToContainer as i32;
    let field = invalid_field(f.build());
    assert!(field == "mounts[0].recursive_read_only" || field == "mounts[0].propagation", "{field}");
}

#[test]
fn a_symlinked_host_path_is_resolved_and_a_missing_one_created() {
    let mut f = Fixture::new();
    let target = f.dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let link = f.dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let missing = f.dir.path().join("missing/dir");
    f.config.mounts = vec![
        CriMount { container_path: "/l".into(), host_path: link.to_string_lossy().into(), ..Default::default() },
        CriMount { container_path: "/m".into(), host_path: missing.to_string_lossy().into(), ..Default::default() },
    ];
    let built = f.ok();
    assert_eq!(mount(&built, "/l").unwrap().source().as_deref(), Some(target.canonicalize().unwrap().as_path()));
    assert_eq!(mount(&built, "/m").unwrap().source().as_deref(), Some(missing.as_path()));
    assert!(built.create_dirs.contains(&missing));
}

#[test]
fn mounts_are_ordered_parents_first() {
    let mut f = Fixture::new();
    let host = f.dir.path().to_string_lossy().to_string();
    f.config.mounts = vec![
        CriMount { container_path: "/data/sub".into(), host_path: host.clone(), ..Default::default() },
        CriMount { container_path: "/data".into(), host_path: host, ..Default::default() },
    ];
    let built = f.ok();
    let order: Vec<_> = built.spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().clone()).collect();
    let parent = order.iter().position(|d| d == Path::new("/data")).unwrap();
    let child = order.iter().position(|d| d == Path::new("/data/sub")).unwrap();
    assert!(parent < child);
}

#[test]
fn duplicate_and_image_mounts_are_invalid() {
    let mut f = Fixture::new();
    let host = f.dir.path().to_string_lossy().to_string();
    f.config.mounts = vec![
        CriMount { container_path: "/d".into(), host_path: host.clone(), ..Default::default() },
        CriMount { container_path: "/d/".into(), host_path: host, ..Default::default() },
    ];
    assert_eq!(invalid_field(f.build()), "mounts[1].container_path");
    f.config.mounts = vec![CriMount {
        container_path: "/img".into(),
        image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
        ..Default::default()
    }];
    assert_eq!(invalid_field(f.build()), "mounts[0].image");
}

#[test]
fn image_volumes_get_directories_of_the_container() {
    let mut f = Fixture::new();
    f.image = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["x"], "Volumes": {"/var/lib/data": {}}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let built = f.ok();
    let volume = mount(&built, "/var/lib/data").unwrap();
    let source = volume.source().clone().unwrap();
    assert!(source.starts_with(f.dir.path().join("container/volumes")));
    assert!(built.create_dirs.contains(&source));
}

// --- namespaces ---

fn namespace(built: &Built, typ: LinuxNamespaceType) -> Option<Option<PathBuf>> {
    linux(built).namespaces().as_ref().unwrap().iter().find(|n| n.typ() == typ).map(|n| n.path().clone())
}

#[test]
fn the_pods_pinned_namespaces_are_joined_and_pid_and_mount_are_own() {
    let f = Fixture::new();
    let built = f.ok();
    let pins = f.sandbox.dir.join("ns");
    assert_eq!(namespace(&built, LinuxNamespaceType::Network), Some(Some(pins.join("net"))));
    assert_eq!(namespace(&built, LinuxNamespaceType::Ipc), Some(Some(pins.join("ipc"))));
    assert_eq!(namespace(&built, LinuxNamespaceType::Uts), Some(Some(pins.join("uts"))));
    assert_eq!(namespace(&built, LinuxNamespaceType::Mount), Some(None));
    assert_eq!(namespace(&built, LinuxNamespaceType::Pid), Some(None));
}

#[test]
fn host_network_and_ipc_pods_keep_the_nodes_namespaces() {
    let mut f = Fixture::new();
    f.sandbox.network_mode = NamespaceMode::Node as i32;
    f.sandbox.netns = None;
    f.sandbox.ipc_mode = NamespaceMode::Node as i32;
    let built = f.ok();
    assert_eq!(namespace(&built, LinuxNamespaceType::Network), None);
    assert_eq!(namespace(&built, LinuxNamespaceType::Uts), None);
    assert_eq!(namespace(&built, LinuxNamespaceType::Ipc), None);
}

#[test]
fn pid_namespace_follows_the_pid_mode() {
    let mut f = Fixture::new();
    let shared = f.dir.path().join("proc/1/ns/pid");
    f.pid_namespace = Some(shared.clone());
    f.sc().namespace_options = Some(NamespaceOption { pid: NamespaceMode::Pod as i32, ..Default::default() });
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Pid), Some(Some(shared)));
    f.sc().namespace_options = Some(NamespaceOption { pid: NamespaceMode::Container as i32, ..Default::default() });
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Pid), Some(None));
    f.sc().namespace_options = Some(NamespaceOption { pid: NamespaceMode::Node as i32, ..Default::default() });
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Pid), None);
    f.pid_namespace = None;
    f.sc().namespace_options = Some(NamespaceOption { pid: NamespaceMode::Pod as i32, ..Default::default() });
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Pid), Some(None));
    // The pod's infra process, from its record.
    f.sandbox.pid_mode = NamespaceMode::Pod as i32;
    // (Built from the record's JSON: the infra type is the sandbox module's own.)
    let mut record = serde_json::to_value(&f.sandbox).unwrap();
    record["infra"] = serde_json::json!({"container_id": "pause", "pid": 4242, "snapshotter": "overlayfs"});
    f.sandbox = serde_json::from_value(record).unwrap();
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Pid), Some(Some(PathBuf::from("/proc/4242/ns/pid"))));
}

#[test]
fn a_cgroup_namespace_of_its_own_on_cgroup_v2_unless_privileged() {
    let mut f = Fixture::new();
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Cgroup), None);
    f.host.cgroup_v2 = true;
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Cgroup), Some(None));
    f.privileged_pod();
    f.sc().privileged = true;
    assert_eq!(namespace(&f.ok(), LinuxNamespaceType::Cgroup), None);
}

#[test]
fn a_user_namespace_is_refused() {
    let mut f = Fixture::new();
    f.sc().namespace_options = Some(NamespaceOption {
        userns_options: Some(crisp_proto::cri::UserNamespace { mode: NamespaceMode::Pod as i32, ..Default::default() }),
        ..Default::default()
    });
    assert_eq!(invalid_field(f.build()), "linux.security_context.namespace_options.userns_options");
}

// --- resources ---

#[test]
fn cgroup_is_under_the_pods_parent_else_crisp() {
    let mut f = Fixture::new();
    assert_eq!(linux(&f.ok()).cgroups_path().as_deref(), Some(Path::new("/kubepods/podabc/c1")));
    f.sandbox.cgroup_parent = String::new();
    assert_eq!(linux(&f.ok()).cgroups_path().as_deref(), Some(Path::new("/crisp/c1")));
}

#[test]
fn cpu_memory_and_hugepage_limits_are_carried() {
    let mut f = Fixture::new();
    f.host.swap_limit = true;
    f.host.hugetlb = true;
    *f.resources() = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![crisp_proto::cri::HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 }],
        ..Default::default()
    };
    let built = f.ok();
    let resources = linux(&built).resources().as_ref().unwrap();
    let cpu = resources.cpu().as_ref().unwrap();
    assert_eq!((cpu.period(), cpu.quota(), cpu.shares()), (Some(100_000), Some(50_000), Some(512)));
    assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0"), Some("0")));
    let memory = resources.memory().as_ref().unwrap();
    assert_eq!((memory.limit(), memory.swap()), (Some(64 << 20), Some(64 << 20)));
    let huge = resources.hugepage_limits().as_ref().unwrap();
    assert_eq!((huge[0].page_size().as_str(), huge[0].limit()), ("2MB", 4 << 20));

    f.resources().memory_swap_limit_in_bytes = 128 << 20;
    assert_eq!(linux(&f.ok()).resources().as_ref().unwrap().memory().as_ref().unwrap().swap(), Some(128 << 20));
    f.host.swap_limit = false;
    f.host.hugetlb = false;
    let built = f.ok();
    let resources = linux(&built).resources().as_ref().unwrap();
    assert_eq!(resources.memory().as_ref().unwrap().swap(), None);
    assert!(resources.hugepage_limits().is_none());
}

#[test]
fn unified_needs_cgroup_v2() {
    let mut f = Fixture::new();
    f.resources().unified = HashMap::from([("memory.high".to_string(), "1000000".to_string())]);
    assert_eq!(invalid_field(f.build()), "linux.resources.unified");
    f.host.cgroup_v2 = true;
    assert!(linux(&f.ok()).resources().as_ref().unwrap().unified().is_some());
}

#[test]
fn oom_score_adj_is_clamped_to_what_the_service_may_set() {
    let mut f = Fixture::new();
    f.resources().oom_score_adj = 900;
    assert_eq!(process(&f.ok()).oom_score_adj(), Some(900));
    f.resources().oom_score_adj = -999;
    assert_eq!(process(&f.ok()).oom_score_adj(), Some(-500));
}

#[test]
fn devices_from_the_request_are_created_and_allowed_after_a_deny_all() {
    let mut f = Fixture::new();
    f.config.devices =
        vec![Device { container_path: "/dev/mynull".into(), host_path: "/dev/null".into(), permissions: "rw".into() }];
    let built = f.ok();
    let nodes = linux(&built).devices().as_ref().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!((nodes[0].path().as_path(), nodes[0].major(), nodes[0].minor()), (Path::new("/dev/mynull"), 1, 3));
    let rules = linux(&built).resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(!rules[0].allow() && rules[0].major().is_none());
    assert!(rules[1].allow() && rules[1].major() == Some(1) && rules[1].minor() == Some(3));
    assert_eq!(rules[1].access().as_deref(), Some("rw"));

    f.config.devices[0].host_path = "/etc/hostname-nope".into();
    assert_eq!(invalid_field(f.build()), "devices[0].host_path");
    f.config.devices[0].host_path = "/dev/null".into();
    f.config.devices[0].permissions = "rwx".into();
    assert_eq!(invalid_field(f.build()), "devices[0].permissions");
}

// --- security ---

fn caps(set: &Option<oci_spec::runtime::Capabilities>) -> std::collections::HashSet<Capability> {
    set.clone().unwrap_or_default()
}

#[test]
fn default_capabilities_are_containerds_set() {
    let built = Fixture::new().ok();
    let c = process(&built).capabilities().clone().unwrap();
    let bounding = caps(c.bounding());
    assert_eq!(bounding.len(), 14);
    assert!(bounding.contains(&Capability::NetRaw) && !bounding.contains(&Capability::SysAdmin));
    assert_eq!(caps(c.effective()), bounding);
    assert!(caps(c.ambient()).is_empty());
}

#[test]
fn capabilities_are_added_and_dropped_with_all_first() {
    let mut f = Fixture::new();
    f.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        drop_capabilities: vec!["CAP_NET_RAW".into()],
        ..Default::default()
    });
    let bounding = caps(process(&f.ok()).capabilities().as_ref().unwrap().bounding());
    assert!(bounding.contains(&Capability::SysAdmin) && !bounding.contains(&Capability::NetRaw));

    f.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["CHOWN".into()],
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    assert_eq!(
        caps(process(&f.ok()).capabilities().as_ref().unwrap().bounding()),
        [Capability::Chown].into_iter().collect()
    );

    f.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["ALL".into()],
        drop_capabilities: vec!["CHOWN".into()],
        ..Default::default()
    });
    let bounding = caps(process(&f.ok()).capabilities().as_ref().unwrap().bounding());
    assert_eq!(bounding.len(), 40);
    assert!(!bounding.contains(&Capability::Chown));

    // ALL is what this service holds.
    f.host.bounding_capabilities = Some(!(1 << 24));
    let bounding = caps(process(&f.ok()).capabilities().as_ref().unwrap().bounding());
    assert_eq!(bounding.len(), 39);
    assert!(!bounding.contains(&Capability::SysResource));
}

#[test]
fn ambient_capabilities_are_also_permitted_and_inheritable() {
    let mut f = Fixture::new();
    f.sc().capabilities =
        Some(CriCapability { add_ambient_capabilities: vec!["NET_ADMIN".into()], ..Default::default() });
    let c = process(&f.ok()).capabilities().clone().unwrap();
    for set in [c.ambient(), c.inheritable(), c.permitted(), c.bounding()] {
        assert!(caps(set).contains(&Capability::NetAdmin));
    }
}

#[test]
fn an_unknown_capability_is_invalid() {
    let mut f = Fixture::new();
    f.sc().capabilities = Some(CriCapability { add_capabilities: vec!["FLY".into()], ..Default::default() });
    assert_eq!(invalid_field(f.build()), "linux.security_context.capabilities.add_capabilities");
}

#[test]
fn masked_and_readonly_paths_are_exactly_the_requests() {
    let mut f = Fixture::new();
    let built = f.ok();
    assert!(linux(&built).masked_paths().as_ref().unwrap().is_empty());
    assert!(linux(&built).readonly_paths().as_ref().unwrap().is_empty());
    f.sc().masked_paths = security::DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect();
    f.sc().readonly_paths = vec!["/proc/y".into()];
    let built = f.ok();
    assert!(linux(&built).masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
    assert_eq!(linux(&built).readonly_paths().as_ref().unwrap(), &["/proc/y"]);
}

#[test]
fn privileged_needs_a_privileged_pod() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    assert_eq!(invalid_field(f.build()), "linux.security_context.privileged");
}

#[test]
fn privileged_gets_every_capability_no_masks_writable_sys_and_host_devices() {
    let mut f = Fixture::new();
    f.privileged_pod();
    f.sc().privileged = true;
    f.sc().masked_paths = vec!["/proc/kcore".into()];
    f.sc().seccomp = Some(SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, ..Default::default() });
    let built = f.ok();
    assert_eq!(caps(process(&built).capabilities().as_ref().unwrap().bounding()).len(), 41);
    f.host.bounding_capabilities = Some(0b111);
    assert_eq!(caps(process(&f.ok()).capabilities().as_ref().unwrap().bounding()).len(), 3);
    assert!(linux(&built).masked_paths().as_ref().unwrap().is_empty());
    assert!(linux(&built).readonly_paths().as_ref().unwrap().is_empty());
    assert!(options(mount(&built, "/sys").unwrap()).contains(&"rw".to_string()));
    assert!(linux(&built).seccomp().is_none());
    let devices = linux(&built).devices().as_ref().unwrap();
    assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")));
    let rules = linux(&built).resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(rules.len() == 1 && rules[0].allow());
}

#[test]
fn no_new_privs_is_the_requests() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.ok()).no_new_privileges(), Some(false));
    f.sc().no_new_privs = true;
    assert_eq!(process(&f.ok()).no_new_privileges(), Some(true));
}

#[test]
fn apparmor_localhost_needs_apparmor_on_the_node() {
    let mut f = Fixture::new();
    f.sc().apparmor =
        Some(SecurityProfile { profile_type: ProfileType::Localhost as i32, localhost_ref: "mine".into() });
    assert_eq!(invalid_field(f.build()), "linux.security_context.apparmor");
    f.host.apparmor = true;
    assert_eq!(process(&f.ok()).apparmor_profile().as_deref(), Some("mine"));
}

// --- seccomp ---

fn allowed(seccomp: &oci_spec::runtime::LinuxSeccomp, name: &str) -> bool {
    seccomp.syscalls().as_ref().unwrap().iter().any(|s| {
        s.action() == LinuxSeccompAction::ScmpActAllow && s.names().iter().any(|n| n == name) && s.args().is_none()
    })
}

#[test]
fn no_seccomp_profile_and_unconfined_get_no_filter() {
    let mut f = Fixture::new();
    assert!(linux(&f.ok()).seccomp().is_none());
    f.sc().seccomp = Some(SecurityProfile { profile_type: ProfileType::Unconfined as i32, ..Default::default() });
    assert!(linux(&f.ok()).seccomp().is_none());
}

#[test]
fn runtime_default_denies_what_the_capabilities_do_not_allow() {
    let mut f = Fixture::new();
    f.sc().seccomp = Some(SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, ..Default::default() });
    let built = f.ok();
    let seccomp = linux(&built).seccomp().clone().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert!(allowed(&seccomp, "read") && allowed(&seccomp, "chroot"));
    assert!(!allowed(&seccomp, "mount") && !allowed(&seccomp, "ptrace") && !allowed(&seccomp, "clone"));
    let clone3 = seccomp.syscalls().as_ref().unwrap().iter().find(|s| s.names().contains(&"clone3".to_string()));
    assert_eq!(clone3.unwrap().errno_ret(), Some(38));

    f.sc().capabilities = Some(CriCapability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() });
    let built = f.ok();
    let seccomp = linux(&built).seccomp().clone().unwrap();
    assert!(allowed(&seccomp, "mount") && allowed(&seccomp, "clone") && allowed(&seccomp, "clone3"));
}

#[test]
fn a_localhost_profile_is_read_and_filtered_by_capability() {
    let mut f = Fixture::new();
    let path = f.dir.path().join("profile.json");
    std::fs::write(
        &path,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"name": "ptrace", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
                {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_CHROOT"]}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: path.to_string_lossy().into(),
    });
    let built = f.ok();
    let seccomp = linux(&built).seccomp().clone().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
    let names: Vec<_> = seccomp.syscalls().as_ref().unwrap().iter().flat_map(|s| s.names().clone()).collect();
    assert_eq!(names, ["mkdir"]);
}

#[test]
fn a_missing_localhost_profile_is_invalid() {
    let mut f = Fixture::new();
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/nonexistent/profile.json".into(),
    });
    assert_eq!(invalid_field(f.build()), "linux.security_context.seccomp.localhost_ref");
}

// --- annotations and host ---

#[test]
fn cri_annotations_and_the_shim_group_are_set() {
    let mut f = Fixture::new();
    f.config.annotations = HashMap::from([("mine".to_string(), "1".to_string())]);
    let built = f.ok();
    let a = built.spec.annotations().as_ref().unwrap();
    assert_eq!(a["io.kubernetes.cri.container-type"], "container");
    assert_eq!(a["io.kubernetes.cri.container-name"], "app");
    assert_eq!(a["io.kubernetes.cri.sandbox-id"], "pod1");
    assert_eq!(a["io.kubernetes.cri.sandbox-name"], "web");
    assert_eq!(a["io.kubernetes.cri.sandbox-namespace"], "default");
    assert_eq!(a["io.kubernetes.cri.sandbox-uid"], "uid-1");
    assert_eq!(a["io.kubernetes.cri.image-name"], "busybox:latest");
    assert_eq!(a["io.containerd.runc.v2.group"], "pod1");
    assert_eq!(a["mine"], "1");
}

#[test]
fn the_spec_serializes_as_runc_reads_it() {
    let built = Fixture::new().ok();
    let json = serde_json::to_value(&built.spec).unwrap();
    assert_eq!(json["root"]["path"], "rootfs");
    assert_eq!(json["linux"]["cgroupsPath"], "/kubepods/podabc/c1");
    assert!(json["process"]["args"].is_array());
    assert!(json.get("hostname").is_none());
    assert!(json["process"].get("rlimits").is_none());
}

#[test]
fn runc_features_with_rro_are_recognized() {
    assert!(rro_in_features(br#"{"mountOptions": ["ro", "rro"]}"#));
    assert!(!rro_in_features(br#"{"mountOptions": ["ro"]}"#));
    assert!(!rro_in_features(b"not json"));
}

#[test]
fn host_detection_reads_this_node() {
    let host = HostFeatures::detect();
    // This process may always keep its own score.
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    assert!(host.min_oom_score_adj <= own);
    assert_eq!(host.cgroup_v2, Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(host.bounding_capabilities, host::capability_set(&status, "CapBnd"));
    assert!(host.bounding_capabilities.is_some());
}
