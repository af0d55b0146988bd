//! A container's security context observed from inside it, through the proxy socket with real
//! containerd and runc: its user and groups (and what ContainerStatus reports of them), its
//! capabilities from /proc/self/status, seccomp mode and a Localhost profile's filter,
//! no_new_privs, a read-only rootfs, masked and read-only `/proc` paths, a privileged
//! container, the pod's shared PID namespace, requested devices, the OOM score kept within what
//! the node allows, and the requests refused (naming the field) before anything runs.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use crisp_testkit::images::{Format, ImageBuilder};
use tonic::Code;

/// `CapEff` of root holding containerd's default capabilities: CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP.
const DEFAULT_CAPS: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 13)
    | (1 << 18)
    | (1 << 27)
    | (1 << 29)
    | (1 << 31);
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_ADMIN: u64 = 1 << 12;

/// The container's output: the messages of its CRI log lines, joined.
fn output(log: &str) -> String {
    log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).map(|m| format!("{m}\n")).collect()
}

/// Runs `script` (with `sh -c`) in a container made from `config` and answers its exit code and output.
async fn run_script(node: &Node, pod: &Pod, mut config: ContainerConfig, script: &str) -> (i32, String) {
    // One stream: the log keeps stdout and stderr lines in the order each pipe is read, not the order written.
    config.command = vec!["sh".into(), "-c".into(), format!("exec 2>&1; {script}")];
    let id = node.run(pod, config.clone()).await.unwrap();
    let status = node.wait_exited(&id).await.unwrap();
    // The log writer may still be flushing the last lines after the exit is seen.
    let mut log = node.log(pod, &config);
    for _ in 0..40 {
        if log.contains(" F ") && log.ends_with('\n') && log.contains("END") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log = node.log(pod, &config);
    }
    (status.exit_code, output(&log))
}

/// The hex value of `key` (`CapEff`, ...) or the text of a field in /proc/self/status output.
fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {report}"))
        .trim()
}

fn caps(report: &str, key: &str) -> u64 {
    u64::from_str_radix(field(report, key), 16).unwrap()
}

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default)
}

const STATUS: &str = "cat /proc/self/status; echo END";

#[tokio::test]
async fn the_image_user_and_its_groups_run_the_process_and_status_reports_them() {
    let node = Node::start().await.unwrap();
    let image = ImageBuilder::new(Format::Oci)
        .busybox_layer()
        .unwrap()
        .file_layer("etc/group", "root:x:0:\napp:x:1000:\naudio:x:29:app,other\nvideo:x:44:\n")
        .user("app")
        .build()
        .unwrap();
    let image = node.add_image("app-user", &image).await.unwrap();
    let pod = node.pod("ids").await.unwrap();

    let mut config = node.config("image-user", &[]);
    config.image = Some(ImageSpec { image, ..Default::default() });
    let (code, out) = run_script(&node, &pod, config.clone(), "id -u; id -g; id -G; echo END").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "1000\n1000\n1000 29\nEND\n");
    let id = node.list(None).await.unwrap().into_iter().find(|c| c.metadata.as_ref().unwrap().name == "image-user");
    let status = node.status(&id.unwrap().id).await.unwrap();
    let user = status.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid, user.supplemental_groups), (1000, 1000, vec![1000, 29]));

    // run_as_user and run_as_group override the image's; Strict keeps the image's groups out.
    let mut config = node.config("strict-user", &[]);
    config.image = node.config("x", &[]).image;
    let sc = security(&mut config);
    sc.run_as_user = Some(Int64Value { value: 2000 });
    sc.run_as_group = Some(Int64Value { value: 3000 });
    sc.supplemental_groups = vec![4000];
    sc.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    let (code, out) = run_script(&node, &pod, config, "id -u; id -g; id -G; echo END").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "2000\n3000\n3000 4000\nEND\n");
}

#[tokio::test]
async fn capabilities_are_the_defaults_with_the_requested_added_and_dropped() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("caps").await.unwrap();

    let (_, out) = run_script(&node, &pod, node.config("default-caps", &[]), STATUS).await;
    assert_eq!(caps(&out, "CapEff"), DEFAULT_CAPS, "{out}");
    assert_eq!(caps(&out, "CapBnd"), DEFAULT_CAPS, "{out}");
    assert_eq!(caps(&out, "CapAmb"), 0, "{out}");

    let mut config = node.config("more-caps", &[]);
    security(&mut config).capabilities = Some(Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["CHOWN".into()],
        ..Default::default()
    });
    let (_, out) = run_script(&node, &pod, config, STATUS).await;
    assert_eq!(caps(&out, "CapEff"), (DEFAULT_CAPS | CAP_NET_ADMIN) & !CAP_CHOWN, "{out}");

    let mut config = node.config("no-caps", &[]);
    security(&mut config).capabilities =
        Some(Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() });
    let (_, out) = run_script(&node, &pod, config, STATUS).await;
    assert_eq!(caps(&out, "CapEff"), 0, "{out}");
    assert_eq!(caps(&out, "CapBnd"), 0, "{out}");

    // A user other than root keeps the bounding set but no effective capability.
    let mut config = node.config("user-caps", &[]);
    security(&mut config).run_as_user = Some(Int64Value { value: 1000 });
    let (_, out) = run_script(&node, &pod, config, STATUS).await;
    assert_eq!(caps(&out, "CapEff"), 0, "{out}");
    assert_eq!(caps(&out, "CapBnd"), DEFAULT_CAPS, "{out}");
}

#[tokio::test]
async fn a_privileged_container_has_every_capability_no_seccomp_and_an_unmasked_proc() {
    let node = Node::start().await.unwrap();
    let mut pod_config = node.pod_config("privileged");
    pod_config.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    let pod = node.pod_with(pod_config).await.unwrap();

    let mut config = node.config("privileged", &[]);
    let sc = security(&mut config);
    sc.privileged = true;
    sc.seccomp = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    sc.masked_paths = vec!["/proc/timer_list".into()];
    let (code, out) =
        run_script(&node, &pod, config, "cat /proc/self/status; busybox wc -c < /proc/timer_list; echo END").await;
    assert_eq!(code, 0, "{out}");
    // Every capability the node's services hold (as containerd's "all current" ones).
    let ours = caps(&std::fs::read_to_string("/proc/self/status").unwrap(), "CapBnd");
    assert_eq!(caps(&out, "CapEff"), ours, "{out}");
    assert_eq!(caps(&out, "CapBnd"), ours, "{out}");
    assert_eq!(field(&out, "Seccomp"), "0", "{out}");
    let timer_list = out.lines().rev().nth(1).unwrap().trim().parse::<u64>().unwrap();
    assert!(timer_list > 0, "a privileged container's /proc is not masked: {out}");

    // Not in a pod that is not privileged.
    let plain = node.pod("not-privileged").await.unwrap();
    let mut config = node.config("refused", &["true"]);
    security(&mut config).privileged = true;
    let err = node.create(&plain, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("privileged"), "{err:?}");
}

#[tokio::test]
async fn seccomp_runtime_default_and_localhost_profiles_filter_and_unconfined_does_not() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("seccomp").await.unwrap();
    let profile = |profile_type: security_profile::ProfileType, localhost_ref: &str| SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost_ref.into(),
    };

    let (_, out) = run_script(&node, &pod, node.config("no-profile", &[]), STATUS).await;
    assert_eq!(field(&out, "Seccomp"), "0", "{out}");

    let mut config = node.config("runtime-default", &[]);
    security(&mut config).seccomp = Some(profile(security_profile::ProfileType::RuntimeDefault, ""));
    let (_, out) = run_script(&node, &pod, config, STATUS).await;
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");

    // The default profile refuses `unshare` without CAP_SYS_ADMIN, even where the kernel would
    // let anyone make a user namespace (as it does unconfined, below).
    let unshare = "busybox unshare -U true && echo ALLOWED; echo END";
    let mut config = node.config("default-unshare", &[]);
    security(&mut config).seccomp = Some(profile(security_profile::ProfileType::RuntimeDefault, ""));
    let (_, out) = run_script(&node, &pod, config, unshare).await;
    assert!(!out.contains("ALLOWED"), "{out}");
    let (_, out) = run_script(&node, &pod, node.config("unconfined-unshare", &[]), unshare).await;
    assert!(out.contains("ALLOWED"), "{out}");

    // A Localhost profile that refuses mkdir.
    let path = node.stack.dir().join("no-mkdir.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let mut config = node.config("localhost", &[]);
    security(&mut config).seccomp =
        Some(profile(security_profile::ProfileType::Localhost, &path.display().to_string()));
    let (_, out) =
        run_script(&node, &pod, config, "busybox mkdir /tmp/d && echo MADE; grep Seccomp: /proc/self/status; echo END")
            .await;
    assert!(!out.contains("MADE") && out.contains("Seccomp:\t2"), "{out}");

    let mut config = node.config("unconfined", &[]);
    security(&mut config).seccomp = Some(profile(security_profile::ProfileType::Unconfined, ""));
    let (_, out) = run_script(&node, &pod, config, "busybox mkdir /tmp/d && echo MADE; echo END").await;
    assert!(out.contains("MADE"), "{out}");

    // A Localhost profile that is not there is refused.
    let mut config = node.config("missing-profile", &["true"]);
    security(&mut config).seccomp =
        Some(profile(security_profile::ProfileType::Localhost, "/nonexistent/profile.json"));
    let err = node.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("seccomp"), "{err:?}");
}

#[tokio::test]
async fn no_new_privs_a_read_only_rootfs_and_masked_and_read_only_paths_hold() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("locked").await.unwrap();

    let mut config = node.config("locked", &[]);
    let sc = security(&mut config);
    sc.no_new_privs = true;
    sc.readonly_rootfs = true;
    sc.masked_paths = vec!["/proc/timer_list".into()];
    sc.readonly_paths = vec!["/proc/sys".into()];
    let script = "grep NoNewPrivs /proc/self/status; \
        touch /newfile 2>&1; echo x >> /etc/hosts 2>&1; \
        echo masked=$(busybox wc -c < /proc/timer_list); \
        echo 1 > /proc/sys/kernel/ns_last_pid 2>&1; \
        echo END";
    let (_, out) = run_script(&node, &pod, config, script).await;
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("touch: /newfile: Read-only file system"), "{out}");
    assert!(
        out.contains("/etc/hosts: Read-only file system") || out.contains("can't create /etc/hosts: Read-only"),
        "{out}"
    );
    assert!(out.contains("masked=0"), "{out}");
    assert!(out.contains("ns_last_pid: Read-only file system"), "{out}");

    let (_, out) = run_script(&node, &pod, node.config("open", &[]), "grep NoNewPrivs /proc/self/status; touch /newfile && echo TOUCHED; echo masked=$(busybox wc -c < /proc/timer_list); echo END").await;
    assert!(out.contains("NoNewPrivs:\t0") && out.contains("TOUCHED"), "{out}");
    assert!(!out.contains("masked=0"), "{out}");
}

#[tokio::test]
async fn requests_the_spec_cannot_honour_are_refused_naming_the_field() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("refused").await.unwrap();

    let mut config = node.config("group-only", &["true"]);
    security(&mut config).run_as_group = Some(Int64Value { value: 3000 });
    let err = node.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{err:?}");

    let mut config = node.config("unknown-user", &["true"]);
    security(&mut config).run_as_username = "mallory".into();
    let err = node.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_username"), "{err:?}");

    let mut config = node.config("unknown-cap", &["true"]);
    security(&mut config).capabilities =
        Some(Capability { add_capabilities: vec!["FLY".into()], ..Default::default() });
    let err = node.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("FLY"), "{err:?}");

    // Nothing was left behind.
    assert!(node.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn containers_of_a_pod_sharing_its_pid_namespace_run_beside_its_infra_process() {
    let node = Node::start().await.unwrap();
    let pid_of_shell = "echo pid=$$; echo END";

    // A PID namespace per container: the shell is its pid 1.
    let pod = node.pod("own-pids").await.unwrap();
    let (_, out) = run_script(&node, &pod, node.config("alone", &[]), pid_of_shell).await;
    assert!(out.starts_with("pid=1\n"), "{out}");

    // One for the pod: pid 1 is the pod's infra process, the shell comes after it.
    let mut pod_config = node.pod_config("shared-pids");
    let options = pod_config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    options.namespace_options.as_mut().unwrap().pid = NamespaceMode::Pod as i32;
    let pod = node.pod_with(pod_config).await.unwrap();
    let mut config = node.config("beside", &[]);
    security(&mut config).namespace_options =
        Some(NamespaceOption { pid: NamespaceMode::Pod as i32, ..Default::default() });
    let (_, out) =
        run_script(&node, &pod, config, "echo pid=$$; cat /proc/1/cmdline | busybox tr '\\0' ' '; echo; echo END")
            .await;
    assert!(!out.starts_with("pid=1\n"), "{out}");
    assert!(out.contains("pause"), "pid 1 is the infra process: {out}");
}

#[tokio::test]
async fn requested_devices_appear_and_the_oom_score_is_kept_within_what_the_node_allows() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("devices").await.unwrap();

    let mut config = node.config("devices", &[]);
    config.devices =
        vec![Device { container_path: "/dev/mynull".into(), host_path: "/dev/null".into(), permissions: "rwm".into() }];
    config.linux.get_or_insert_with(Default::default).resources =
        Some(LinuxContainerResources { oom_score_adj: 500, ..Default::default() });
    let script = "busybox stat -c '%t:%T' /dev/mynull; echo x > /dev/mynull && echo WRITTEN; \
                  cat /proc/self/oom_score_adj; echo END";
    let (code, out) = run_script(&node, &pod, config, script).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "1:3\nWRITTEN\n500\nEND\n");

    // Lower than the services may go: raised to their own score (they lack CAP_SYS_RESOURCE
    // here; with it, -900 would be kept).
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let resource = caps(&status, "CapEff") & (1 << 24) != 0;
    let mut config = node.config("low-oom", &[]);
    config.linux.get_or_insert_with(Default::default).resources =
        Some(LinuxContainerResources { oom_score_adj: -900, ..Default::default() });
    let (_, out) = run_script(&node, &pod, config, "cat /proc/self/oom_score_adj; echo END").await;
    let expected = if resource { -900 } else { own.max(-900) };
    assert_eq!(out, format!("{expected}\nEND\n"));
}
